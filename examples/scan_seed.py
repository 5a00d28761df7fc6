"""The seed article's unguarded forward, scanned: what its graph kept for nothing.

The article that motivated gradguard ("释放内存与加速推理: PyTorch的torch.no_grad()与
torch.inference_mode()") runs ``Linear(5000, 50000) -> ReLU -> Linear(50000, 5000)`` on a
``ones(1000, 5000)`` input that requires grad, and measures 209.81 MB kept with
gradients against 19.07 MB under ``no_grad``/``inference_mode``. ``gradguard.scan()``
finds that forward without being told where it is, and names the difference: the bytes
autograd kept for a backward that never came (the ReLU's output, 1000 x 50000 float32,
saved once for the ReLU and once for the second Linear: one storage), beyond the output
every way of running it keeps.

Run:
    python examples/scan_seed.py          # a tenth of the sizes: 2,000,000 bytes
    python examples/scan_seed.py --full   # the article's: 200,000,000 bytes (about
                                          # 2.5 GB of memory; on CUDA when available)
"""

from __future__ import annotations

import argparse

import torch
from torch import nn

import gradguard


class SimpleModel(nn.Module):
    """The article's model, with its sizes as parameters."""

    def __init__(self, features: int, hidden: int) -> None:
        super().__init__()
        self.linear = nn.Sequential(
            nn.Linear(features, hidden), nn.ReLU(), nn.Linear(hidden, features)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x)  # type: ignore[no-any-return]


def mib(n: int) -> str:
    return f"{n:>13,} bytes ({n / 2**20:7.2f} MiB)"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help="the article's sizes")
    args = parser.parse_args(argv)
    features, hidden, batch = (5000, 50000, 1000) if args.full else (500, 5000, 100)
    device = torch.device("cuda" if args.full and torch.cuda.is_available() else "cpu")
    model = SimpleModel(features, hidden).to(device)
    x = torch.ones(batch, features).to(device)
    x.requires_grad = True

    with gradguard.scan() as findings:
        output_with_grad = model(x)  # the article's line: no no_grad, no inference_mode
        output_bytes = output_with_grad.untyped_storage().nbytes()
        del output_with_grad  # used by no backward: its graph goes unused

    (finding,) = findings
    print(
        f"Linear({features}, {hidden}) -> ReLU -> Linear({hidden}, {features}) on "
        f"ones({batch}, {features}) requiring grad, on {device.type}:"
    )
    print(f"  {finding.kind} at {finding.where} ({finding.module})")
    print(f"  kept for backward, for nothing: {mib(finding.bytes_max)}")
    print(f"  the output, kept by every mode: {mib(output_bytes)}")
    print(f"  in all, with gradients:         {mib(finding.bytes_max + output_bytes)}")
    print(f"  fix: {finding.message}")


if __name__ == "__main__":
    main()
