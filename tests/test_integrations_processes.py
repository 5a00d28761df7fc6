"""gradguard in other processes: DataLoader workers sharing one log file, torchrun ranks.

Every test here starts processes, so all are marked ``slow``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import structlog
import torch
from torch import nn

import gradguard
from gradguard.testing import event_schema

jsonschema = pytest.importorskip("jsonschema", reason="jsonschema validates the event schema")
VALIDATOR = jsonschema.Draft202012Validator(event_schema())

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]

# --- DataLoader workers writing one shared file -------------------------------------------

ITEMS = 240
CALLS_PER_ITEM = 3
LONG = 20_000  # characters: lines of ~20 kB, far past PIPE_BUF, in among short ones


@gradguard.infer
def preprocess(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return model(x)


def note(index: int, call: int) -> str:
    """The contextvar bound around one call: long for every other item, short otherwise."""
    fill = "x" * LONG if index % 2 else ""
    return f"item {index} call {call} {fill}end"


class _Dataset(torch.utils.data.Dataset[torch.Tensor]):
    """Each item makes CALLS_PER_ITEM guarded calls, each with its own bound note."""

    def __init__(self) -> None:
        self.model = nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.5))

    def __len__(self) -> int:
        return ITEMS

    def __getitem__(self, index: int) -> torch.Tensor:
        out = torch.zeros(1, 4)
        for call in range(CALLS_PER_ITEM):
            with structlog.contextvars.bound_contextvars(note=note(index, call)):
                out = out + preprocess(self.model, torch.ones(1, 4))
        assert self.model.training  # given back in the worker too
        return out.clone()


def _one_thread(_: int) -> None:
    torch.set_num_threads(1)  # two workers on two cores: no oversubscription


@pytest.mark.parametrize(
    ("configured_by", "context"),
    [
        ("configure", "fork"),  # the default on Linux: workers inherit configure()
        ("environment", "fork"),
        # spawn (the default on macOS and Windows) starts fresh interpreters: they see the
        # environment, never a configure() made in the parent.
        ("environment", "spawn"),
    ],
)
def test_dataloader_workers_share_one_log_file_line_by_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, configured_by: str, context: str
) -> None:
    path = tmp_path / "calls.jsonl"  # no {pid}: every process appends to this one file
    if configured_by == "configure":
        gradguard.configure(log_file=str(path))
    else:
        monkeypatch.setenv("GRADGUARD_LOG_FILE", str(path))
    # The parent logs first, so its file is open when the workers start.
    with structlog.contextvars.bound_contextvars(note="parent"):
        preprocess(nn.Linear(4, 4), torch.ones(1, 4))
    loader = torch.utils.data.DataLoader(
        _Dataset(),
        num_workers=2,
        batch_size=8,
        multiprocessing_context=context,
        worker_init_fn=_one_thread,
    )
    assert sum(len(batch) for batch in loader) == ITEMS

    raw = path.read_bytes()
    assert raw.endswith(b"\n")
    lines = raw.split(b"\n")[:-1]
    events = [json.loads(line) for line in lines]  # a torn or interleaved line fails here
    for event in events:
        errors = [e.message for e in VALIDATOR.iter_errors(event)]
        assert not errors, (errors, {k: v for k, v in event.items() if k != "note"})
    assert len(events) == 1 + ITEMS * CALLS_PER_ITEM

    parent, *worker_events = events
    assert (parent["pid"], parent["note"]) == (os.getpid(), "parent")
    pids = {e["pid"] for e in worker_events}
    assert len(pids) == 2 and os.getpid() not in pids
    # Every bound note arrived whole, exactly once.
    expected = {note(i, c) for i in range(ITEMS) for c in range(CALLS_PER_ITEM)}
    notes = [e["note"] for e in worker_events]
    assert len(notes) == len(expected) and set(notes) == expected
    assert sum(len(line) > LONG for line in lines) == ITEMS // 2 * CALLS_PER_ITEM
    # Each worker counts its own calls, one after another, and ran them guarded.
    for pid in pids:
        numbers = [e["call"] for e in worker_events if e["pid"] == pid]
        assert numbers == sorted(numbers) and len(set(numbers)) == len(numbers)
    assert {(e["mode"], e["eval_switched"], e["status"]) for e in worker_events} == {
        ("inference", 3, "ok")
    }


# --- torchrun ------------------------------------------------------------------------------

TORCHRUN_SCRIPT = ROOT / "examples" / "torchrun_ddp.py"


# Gloo's worker threads sometimes abort a rank as its interpreter shuts down, after the
# script's work is done, with plain torch too (the same DDP script without gradguard
# aborted in 2 of 25 runs on a loaded 2-core machine): a launch that ends that way,
# and only that way, is run again from scratch.
GLOO_TEARDOWN_ABORT = "terminate called without an active exception"


def _torchrun(tmp_path: Path) -> subprocess.CompletedProcess[str]:
    for _ in range(3):
        for stale in tmp_path.glob("calls-*.jsonl"):
            stale.unlink()
        run = _torchrun_once(tmp_path)
        if run.returncode == 0 or GLOO_TEARDOWN_ABORT not in run.stdout + run.stderr:
            break
    return run


def _torchrun_once(tmp_path: Path) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "GRADGUARD_LOG_FILE": str(tmp_path / "calls-{rank}.jsonl"),
        "OMP_NUM_THREADS": "1",  # two ranks on two cores
        "PYTHONUNBUFFERED": "1",
    }
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",  # rendezvous on a free local port
            "--nproc_per_node=2",
            str(TORCHRUN_SCRIPT),
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=240,
        check=False,
    )


def audit(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gradguard", "audit", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_torchrun_ranks_guard_ddp_and_the_audit_counts_each_rank(tmp_path: Path) -> None:
    run = _torchrun(tmp_path)
    assert run.returncode == 0, run.stdout + run.stderr
    for rank in (0, 1):
        assert f"rank {rank}/2: guarded DDP forward equals eval: True" in run.stdout
        assert f"rank {rank}/2: flags given back: True" in run.stdout
        assert f"rank {rank}/2: DDP training step after: ok" in run.stdout

    files = [tmp_path / f"calls-{rank}.jsonl" for rank in (0, 1)]
    for rank, file in enumerate(files):
        events: list[dict[str, Any]] = [json.loads(line) for line in file.read_text().splitlines()]
        for event in events:
            assert not list(VALIDATOR.iter_errors(event))
        assert {(e["rank"], e["world_size"]) for e in events} == {(rank, 2)}
        assert sorted({e["target"] for e in events}) == ["ddp", "model"]
        # DDP's forward included: it runs in record_function, which needs no autograd.
        assert {(e["mode"], e["status"]) for e in events} == {("inference", "ok")}

    result = audit(*map(str, files), "--by", "rank", "--format", "json", "--fail-on", "errors,grad")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["by"] == "rank"
    # The script's plain model makes 2 + rank calls; the DDP model 2 on every rank.
    assert {g["key"]: g["calls"] for g in report["groups"]} == {0: 4, 1: 5}
    assert [g["ranks"] for g in report["groups"]] == [[0], [1]]
    assert report["totals"]["calls"] == 9
    assert report["totals"]["errors"] == 0
