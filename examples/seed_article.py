"""The article's experiment, measured by gradguard's own logs.

The article that motivated gradguard ("释放内存与加速推理: PyTorch的torch.no_grad()与
torch.inference_mode()") runs its ``SimpleModel`` forward three ways, with gradients,
under ``torch.no_grad()`` and under ``torch.inference_mode()``, and compares the memory
each keeps and the time each takes. Here each way is a guarded call:

- with gradients: ``@gradguard.infer(mode="no_grad")`` around ``torch.enable_grad()``,
  the way gradguard runs code that needs autograd inside (its events say
  ``grad_recorded=True``);
- ``@gradguard.infer(mode="no_grad")``;
- ``@gradguard.infer(mode="inference")``.

All three log to one JSON-lines file with exact tensor accounting (``memory="tensors"``:
the bytes the call's tensors keep when it returns, and their peak), and the article's
table is printed from the events alone; ``gradguard audit`` then summarizes the same file.
This is how to measure your own code: guard it, log, read the logs; no hand-written
probes around each call.

``gradguard demo`` runs the same experiment with hand-written probes around the bare
torch variants (and adds a fourth row through ``gradguard.guard()``); this script does it
the public way, from the events. Sizes are the demo's: the article's on CUDA, a tenth of
each on the CPU (well under a minute on two cores). The time column is ``gpu_ms`` on CUDA
and ``wall_ms`` on the CPU. On an H200 at the article's sizes the events read 209.81 MB
kept with gradients and 19.07 MB under both no_grad and inference_mode, the article's
figure; on a 2-core CPU at a tenth of them, 2.10 MB and 0.19 MB.

Run: python examples/seed_article.py
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile

import torch
from torch import nn

import gradguard

device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
scale = 1 if device.type == "cuda" else 10  # the article's sizes need a GPU's speed
IN, HIDDEN, OUT, BATCH = 5000 // scale, 50000 // scale, 5000 // scale, 1000 // scale
REPEAT = 20


class SimpleModel(nn.Module):  # the article's model
    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Sequential(nn.Linear(IN, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, OUT))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x)  # type: ignore[no-any-return]


@gradguard.infer(name="article.with_gradients", mode="no_grad", memory="tensors")
def with_gradients(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.enable_grad():  # autograd records the graph, as in the article's first run
        return model(x)  # type: ignore[no-any-return]


@gradguard.infer(name="article.no_grad", mode="no_grad", memory="tensors")
def no_grad(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return model(x)  # type: ignore[no-any-return]


@gradguard.infer(name="article.inference_mode", mode="inference", memory="tensors")
def inference_mode(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return model(x)  # type: ignore[no-any-return]


torch.manual_seed(0)
model = SimpleModel().to(device)
x = torch.ones(BATCH, IN, device=device)
x.requires_grad = True  # as in the article

log_file = os.path.join(tempfile.mkdtemp(prefix="gradguard-article-"), "article.jsonl")
gradguard.configure(log_file=log_file)
try:
    for variant in (with_gradients, no_grad, inference_mode):
        for _ in range(REPEAT + 2):  # the first two calls warm up
            out = variant(model, x)
            del out  # before the next call: its tensors are not the next call's
    gradguard.flush()  # on CUDA, events wait for their device time until here
finally:
    gradguard.configure(log_file=None)

# From here on, only the log file.
with open(log_file, encoding="utf-8") as f:
    events = [json.loads(line) for line in f]
rows = {}
for target in ("article.with_gradients", "article.no_grad", "article.inference_mode"):
    calls = [e for e in events if e["target"] == target][2:]
    times = [e["gpu_ms"] if e["gpu_ms"] is not None else e["wall_ms"] for e in calls]
    rows[target] = {
        "mode": calls[0]["mode"],
        "grad": calls[0]["grad_recorded"],
        "kept": max(e["mem_after_bytes"] for e in calls),
        "peak": max(e["mem_peak_bytes"] for e in calls),
        "ms": statistics.median(times),
        "calls": len(calls),
    }

size = "the article's sizes" if scale == 1 else "a tenth of the article's sizes"
print(f"SimpleModel: Linear({IN}, {HIDDEN}) -> ReLU -> Linear({HIDDEN}, {OUT})")
print(f"input ones({BATCH}, {IN}) with requires_grad=True, on {device} ({size})")
print(f"{len(events)} events read back from {log_file}\n")
clock = "gpu_ms" if device.type == "cuda" else "wall_ms"
print(
    f"{'target':<24} {'mode':<9} {'grad':<5} {'memory kept':>12} {'peak':>10} {clock + ' p50':>12}"
)
for target, row in rows.items():
    print(
        f"{target:<24} {row['mode']:<9} {row['grad']!s:<5} {row['kept'] / 2**20:>9.2f} MB "
        f"{row['peak'] / 2**20:>7.2f} MB {row['ms']:>9.2f} ms"
    )
grad, plain, inference = rows.values()
print()
print(
    f"no_grad keeps {(1 - plain['kept'] / grad['kept']) * 100:.1f}% less memory than with gradients"
)
print(
    f"inference_mode keeps {inference['kept'] / 2**20:.2f} MB, "
    f"no_grad {plain['kept'] / 2**20:.2f} MB (the output alone: "
    f"{BATCH * OUT * 4 / 2**20:.2f} MB)"
)
print(f"inference_mode against no_grad: time {(inference['ms'] / plain['ms'] - 1) * 100:+.1f}%")

print("\ngradguard audit of the same file:\n", flush=True)
subprocess.run([sys.executable, "-m", "gradguard", "audit", log_file], check=True)
