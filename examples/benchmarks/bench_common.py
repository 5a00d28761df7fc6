"""The core cases every version of gradguard can run, for before/after runs across commits.

Run it with each checkout's gradguard on the path, in turn, on the same machine:

    git worktree add /tmp/gradguard-before <commit>
    PYTHONPATH=/tmp/gradguard-before python examples/benchmarks/bench_common.py
    PYTHONPATH=. python examples/benchmarks/bench_common.py

It uses only what every release has (``infer`` with ``name=``, ``configure(enabled=False,
leaks="off")``): the guard alone, no telemetry, no leak sentinel. Prints the figures beside
the bare ``@torch.inference_mode()`` ones of the same run, interleaved.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import torch
from _timing import arguments, compare_us  # beside this script
from torch import nn

import gradguard


def commit() -> str:
    """The commit of the gradguard that is imported, or '?' outside a git checkout."""
    where = Path(gradguard.__file__).parent
    found = subprocess.run(
        ["git", "-C", str(where), "rev-parse", "--short", "HEAD"],
        capture_output=True,
        text=True,
        check=False,
    )
    return found.stdout.strip() or "?"


def main() -> None:
    n, r = arguments(__doc__.splitlines()[0])
    gradguard.configure(enabled=False, leaks="off")
    in_eval = nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.1)).eval()
    in_training = nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.1)).train()
    x = torch.ones(1, 4)

    def forward(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        return model(x)

    def noop() -> None:
        return None

    torch_forward = torch.inference_mode()(forward)
    guarded_forward = gradguard.infer(name="bench.forward")(forward)
    torch_noop = torch.inference_mode()(noop)
    guarded_noop = gradguard.infer(name="bench.noop")(noop)
    for _ in range(64):  # past the first calls, which some versions look at more closely
        guarded_forward(in_eval, x)
        guarded_forward(in_training, x)
    t = compare_us(
        {
            "torch noop": torch_noop,
            "noop": guarded_noop,
            "torch model": lambda: torch_forward(in_eval, x),
            "eval model": lambda: guarded_forward(in_eval, x),
            "training model": lambda: guarded_forward(in_training, x),
        },
        n,
        r,
    )
    print(f"gradguard at {commit()}, torch {torch.__version__} (µs per call)")
    print(
        f"  no-op                   {t['noop']:7.3f}   "
        f"{t['noop'] / t['torch noop']:.2f}x @torch.inference_mode() ({t['torch noop']:.3f})"
    )
    print(
        f"  3-module model in eval  {t['eval model']:7.3f}   "
        f"{t['eval model'] - t['torch model']:+.2f} µs against @torch.inference_mode() "
        f"({t['torch model']:.3f})"
    )
    print(
        f"  ... in training mode    {t['training model']:7.3f}   "
        f"{t['training model'] - t['torch model']:+.2f} µs (switched to eval and back)"
    )


if __name__ == "__main__":
    main()
