"""Cost of gradguard's core, side by side with the bare torch equivalent in the same run.

Run: python examples/benchmarks/bench_core.py

Prints ratios, not only absolute times: shared machines are noisy, ratios less so.
Each figure is the best of several repeats of many calls (timeit's advice for noise).
"""

from __future__ import annotations

import torch
from _timing import arguments, best_us, compare_us  # beside this script
from torch import nn

import gradguard


def deep_model(blocks: int = 100) -> nn.Module:
    """A model of 301 modules: 100 blocks of Linear + LayerNorm under a Sequential each."""
    return nn.Sequential(*[nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4)) for _ in range(blocks)])


def main() -> None:
    n, r = arguments(__doc__)
    # The core alone: telemetry has its own benchmark (bench_telemetry.py).
    gradguard.configure(enabled=False)

    def noop() -> None:
        return None

    torch_noop = torch.inference_mode()(noop)
    guarded_noop = gradguard.infer(noop)
    guarded_pinned = gradguard.infer(mode="inference")(noop)

    times = compare_us(
        {"bare": noop, "torch": torch_noop, "auto": guarded_noop, "pinned": guarded_pinned},
        n,
        r,
    )
    bare, torch_t, auto_t, pinned_t = times.values()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print("no-op call (µs per call; ratio against @torch.inference_mode())")
    print(f"  undecorated                 {bare:7.3f}")
    print(f"  @torch.inference_mode()     {torch_t:7.3f}   1.00x")
    print(f"  @gradguard.infer            {auto_t:7.3f}   {auto_t / torch_t:.2f}x")
    print(f"  @gradguard.infer(mode=...)  {pinned_t:7.3f}   {pinned_t / torch_t:.2f}x")

    linear = nn.Linear(4, 4).eval()
    x = torch.ones(1, 4)
    torch_linear = torch.inference_mode()(lambda: linear(x))
    guarded_linear = gradguard.infer(name="bench.linear")(lambda: linear(x))
    watched = compare_us({"torch": torch_linear, "guarded": guarded_linear}, n // 4 or 1, r)
    gradguard.configure(leaks="off")
    unwatched = compare_us({"torch": torch_linear, "guarded": guarded_linear}, n // 4 or 1, r)
    gradguard.configure(leaks="boundary")
    print("a Linear(4, 4) call returning its tensor (µs per call)")
    print(f"  @torch.inference_mode()                {unwatched['torch']:7.3f}   1.00x")
    print(
        f"  @gradguard.infer, leak sentinel off    {unwatched['guarded']:7.3f}   "
        f"{unwatched['guarded'] / unwatched['torch']:.2f}x"
    )
    print(
        f"  @gradguard.infer, leaks='boundary'     {watched['guarded']:7.3f}   "
        f"+{watched['guarded'] - watched['torch']:.2f} µs (remembering the output)"
    )

    model = deep_model()
    count = len(list(model.modules()))
    m = max(n // 100, 50)

    def torch_switch() -> None:
        model.eval()
        model.train()

    def guarded_switch() -> None:
        with gradguard.scope(model, mode="inference", name="bench"):
            pass

    model.train()
    torch_t = best_us(torch_switch, m, r)  # leaves the model in training mode, as it found it
    guard_t = best_us(guarded_switch, m, r)
    model.eval()
    eval_times = compare_us({"torch": model.eval, "guard": guarded_switch}, m, r)
    torch_eval_t, guard_eval_t = eval_times.values()
    print(f"eval switch of a {count}-module model (µs per call)")
    print(f"  model.eval(); model.train()            {torch_t:9.1f}   1.00x")
    print(f"  gradguard, model in training mode      {guard_t:9.1f}   {guard_t / torch_t:.3f}x")
    print(f"  model.eval() on a model already in eval{torch_eval_t:9.1f}")
    print(
        f"  gradguard, model already in eval       {guard_eval_t:9.1f}   "
        f"{guard_eval_t / torch_t:.3f}x"
    )


if __name__ == "__main__":
    main()
