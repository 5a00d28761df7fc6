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


GLOBAL_MODEL = nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.1)).eval()


def reach_cases(n: int, r: int) -> None:
    """modules="auto" reaching a model: a global, an argument, an attribute of a global."""
    x = torch.ones(1, 4)

    class Predictor:
        def __init__(self) -> None:
            self.model = GLOBAL_MODEL
            self.labels = ["a", "b"]

    predictor = Predictor()

    def bare_argument(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        return model(x)

    def bare_global(x: torch.Tensor) -> torch.Tensor:
        return GLOBAL_MODEL(x)

    def bare_attribute(x: torch.Tensor) -> torch.Tensor:
        return predictor.model(x)

    torch_call = torch.inference_mode()(bare_argument)
    argument = gradguard.infer(name="bench.argument")(bare_argument)
    global_ = gradguard.infer(name="bench.global")(bare_global)
    attribute = gradguard.infer(name="bench.attribute")(bare_attribute)
    batch = ["text"] * 10_000
    with_batch = gradguard.infer(name="bench.batch")(lambda model, x, batch: model(x))
    torch_batch = torch.inference_mode()(lambda model, x, batch: model(x))
    for fn in (argument, global_, attribute):  # past the net's first watched calls
        for _ in range(64):
            fn(GLOBAL_MODEL, x) if fn is argument else fn(x)
    times = compare_us(
        {
            "torch": lambda: torch_call(GLOBAL_MODEL, x),
            "argument": lambda: argument(GLOBAL_MODEL, x),
            "global": lambda: global_(x),
            "attribute": lambda: attribute(x),
            "torch_batch": lambda: torch_batch(GLOBAL_MODEL, x, batch),
            "batch": lambda: with_batch(GLOBAL_MODEL, x, batch),
        },
        n // 4 or 1,
        r,
    )
    t = times
    print("a model in eval reached by modules='auto' (µs per call; leak sentinel off)")
    print(f"  @torch.inference_mode(), model passed in    {t['torch']:7.3f}   1.00x")
    print(
        f"  @gradguard.infer, model passed in          {t['argument']:7.3f}   "
        f"{t['argument'] / t['torch']:.2f}x"
    )
    print(
        f"  @gradguard.infer, global model             {t['global']:7.3f}   "
        f"{t['global'] - t['argument']:+.2f} µs against passed in (goal: <= +0.5)"
    )
    print(
        f"  @gradguard.infer, predictor.model (global) {t['attribute']:7.3f}   "
        f"{t['attribute'] - t['argument']:+.2f} µs against passed in"
    )
    print(
        f"  @gradguard.infer, with a 10,000-item list  {t['batch']:7.3f}   "
        f"{t['batch'] - t['torch_batch'] - (t['argument'] - t['torch']):+.2f} µs for the list"
    )

    watched = gradguard.infer(name="bench.net", net="always")(bare_global)
    spaced = gradguard.infer(name="bench.spaced")(bare_global)
    for _ in range(64):
        spaced(x)
    net = compare_us({"spaced": lambda: spaced(x), "always": lambda: watched(x)}, n // 4 or 1, r)
    print("the run-time net on a 3-module global model (µs per call)")
    print(f"  net='spaced' (default), unwatched call     {net['spaced']:7.3f}")
    print(
        f"  net='always', every call watched           {net['always']:7.3f}   "
        f"{net['always'] - net['spaced']:+.2f} µs"
    )


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
    reach_cases(n, r)
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
