"""gradguard imports and runs where POSIX pieces are missing (Windows): no ``resource``
module, no ``os.register_at_fork``, no ``/proc``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

SCRIPT = """
import json, os, os.path, sys
import torch                            # torch asks for fork hooks on POSIX only
from torch import nn

sys.modules["resource"] = None          # `import resource` raises ImportError
del os.register_at_fork
_exists = os.path.exists
os.path.exists = lambda p: False if str(p).startswith("/proc") else _exists(p)

import gradguard

gradguard.configure(log_file=sys.argv[1])
model = nn.Sequential(nn.Linear(4, 4), nn.Dropout())

@gradguard.infer
def predict(x):
    return model(x)

out = predict(torch.ones(2, 4))
assert model.training and not out.requires_grad
gradguard.flush()
"""


def test_gradguard_works_without_resource_fork_hooks_or_proc(tmp_path: Path) -> None:
    log = tmp_path / "calls.jsonl"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(log)],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    [event] = [json.loads(line) for line in log.read_text().splitlines()]
    assert event["status"] == "ok"
    assert event["eval_switched"] == 3  # the global model: Sequential, Linear, Dropout
    assert event["mem_kind"] is None
    assert event["mem_after_bytes"] is None
