"""gradguard under torchrun: each rank guards a plain model and a DistributedDataParallel one.

Run, then audit the ranks' logs side by side:

    GRADGUARD_LOG_FILE='calls-{rank}.jsonl' OMP_NUM_THREADS=1 \\
        torchrun --standalone --nproc_per_node=2 examples/torchrun_ddp.py
    gradguard audit calls-0.jsonl calls-1.jsonl --by rank

Without GRADGUARD_LOG_FILE the script logs to calls-{rank}.jsonl in the current folder.
Events carry ``rank`` and ``world_size`` once the process group is initialised.
Needs nothing beyond gradguard itself (``pip install -e ".[examples]"`` also brings numpy,
which torch looks for at import).
"""

from __future__ import annotations

import copy
import gc
import os
import sys

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

import gradguard


def make_model() -> nn.Module:
    torch.manual_seed(0)  # the same weights on every rank
    return nn.Sequential(
        nn.Linear(8, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Dropout(0.5), nn.Linear(16, 4)
    ).train()


def eval_result(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    reference = copy.deepcopy(model).eval()
    with torch.inference_mode():
        return reference(x)


def main() -> int:
    """Run this rank's part; return its exit status (0 when every check held)."""
    if not os.environ.get("GRADGUARD_LOG_FILE"):
        gradguard.configure(log_file="calls-{rank}.jsonl")
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    try:
        x = torch.randn(6, 8, generator=torch.Generator().manual_seed(rank))

        # A plain model: ranks may make different numbers of calls.
        model = gradguard.guard(make_model(), name="model")
        for _ in range(2 + rank):
            model(x)

        # DDP: its forward broadcasts BatchNorm's buffers from rank 0, a collective, so
        # every rank makes the same number of calls. Under inference mode DDP prepares
        # no gradient reduction.
        ddp = DistributedDataParallel(make_model())
        expected = eval_result(ddp.module, x)
        guarded = gradguard.guard(ddp, name="ddp")
        same = all(torch.allclose(guarded(x), expected) for _ in range(2))
        print(f"rank {rank}/{world}: guarded DDP forward equals eval: {same}")
        flags = all(m.training for m in ddp.modules()) and torch.is_grad_enabled()
        print(f"rank {rank}/{world}: flags given back: {flags}")

        # The same DDP model still trains: gradients are all-reduced across ranks.
        ddp(x).sum().backward()
        grad = ddp.module[0].weight.grad
        assert grad is not None
        gathered = [torch.empty_like(grad) for _ in range(world)]
        dist.all_gather(gathered, grad)
        synced = all(torch.allclose(g, grad) for g in gathered)
        print(f"rank {rank}/{world}: DDP training step after: {'ok' if synced else 'FAILED'}")
        status = 0 if same and flags and synced else 1
        # Tear down in order: wait until every rank is done with collectives, drop DDP
        # (its reducer holds the process group) and only then destroy the group.
        dist.barrier()
        del model, ddp, guarded
        gc.collect()
    finally:
        dist.destroy_process_group()
    return status


if __name__ == "__main__":
    status = main()
    # Even after an orderly teardown, gloo's threads sometimes abort a rank while the
    # interpreter shuts down ("terminate called without an active exception"), with
    # plain torch too; torchrun then reports a failure although the work succeeded.
    # So the exit status is the work's: write out gradguard's events and our output,
    # then leave without the interpreter's shutdown, where the abort happens.
    gradguard.flush()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)
