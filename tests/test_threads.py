"""Threads: one model shared by many threads, through every guarded form.

Training flags are process-wide (one attribute per module) while grad and inference mode
are per thread in torch. So gradguard must hold a module in eval while *any* thread's
guarded call needs it and give every flag back when the last one leaves, and a thread's
mode must never leak into another thread. No test here measures time: threads meet at
barriers and events, and every wait has a timeout so that a bug fails instead of hanging.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest
import torch
from torch import nn

import gradguard

N_THREADS = 8
CALLS = 1000  # per thread: 8,000 guarded calls per test
WAIT = 30.0  # seconds; only reached when something is broken


def flags(model: nn.Module) -> dict[str, bool]:
    return {name: m.training for name, m in model.named_modules()}


def modes() -> tuple[bool, bool]:
    return torch.is_grad_enabled(), torch.is_inference_mode_enabled()


def run_in_threads(n: int, work: Callable[[int], None]) -> None:
    """Run ``work(i)`` for i in range(n), each in its own thread, all released together.

    Re-raises the first error any thread raised, so asserts inside ``work`` fail the test.
    """
    start = threading.Barrier(n)
    errors: list[BaseException] = []

    def target(i: int) -> None:
        try:
            start.wait(WAIT)
            work(i)
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=target, args=(i,), name=f"worker-{i}") for i in range(n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(WAIT * 4)
    assert not any(t.is_alive() for t in threads), "a worker thread hangs"
    if errors:
        raise errors[0]


# --- one model, 8 threads, each form -------------------------------------------------------


class Net(nn.Module):
    """Dropout(0.5) and BatchNorm: any forward in training mode changes the output."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(8, 16)
        self.norm = nn.BatchNorm1d(16)
        self.drop = nn.Dropout(0.5)
        self.frozen = nn.BatchNorm1d(16)  # kept in eval by the user: must stay in eval
        self.head = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.frozen(self.drop(torch.relu(self.norm(self.linear(x))))))


def training_net() -> Net:
    torch.manual_seed(0)
    net = Net()
    with torch.no_grad():  # running statistics that differ from a batch's own
        for norm in (net.norm, net.frozen):
            norm.running_mean.uniform_(-1.0, 1.0)
            norm.running_var.uniform_(0.5, 2.0)
    net.train()
    net.frozen.eval()
    return net


@gradguard.infer
def predict(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return model(x)


def forms(model: nn.Module) -> dict[str, Callable[[torch.Tensor], torch.Tensor]]:
    guarded = gradguard.guard(model)

    def through_infer(x: torch.Tensor) -> torch.Tensor:
        return predict(model, x)

    def through_guard(x: torch.Tensor) -> torch.Tensor:
        return guarded(x)

    def through_scope(x: torch.Tensor) -> torch.Tensor:
        with gradguard.scope(model):
            return model(x)

    return {"infer": through_infer, "guard": through_guard, "scope": through_scope}


@pytest.mark.parametrize("form", ["infer", "guard", "scope", "all three"])
def test_many_threads_see_the_eval_output_and_flags_come_back(form: str) -> None:
    model = training_net()
    x = torch.randn(4, 8)
    model.eval()
    with torch.no_grad():
        expected = model(x)
    model.train()
    model.frozen.eval()
    before = flags(model)
    assert before["frozen"] is False and before["drop"] is True
    statistics = {k: v.clone() for k, v in model.state_dict().items() if "running" in k}
    calls = forms(model)
    wrong: list[tuple[int, int]] = []

    def work(i: int) -> None:
        names = list(calls) if form == "all three" else [form]
        for n in range(CALLS):
            out = calls[names[(i + n) % len(names)]](x)
            if not (torch.equal(out, expected) and out.is_inference()):
                wrong.append((i, n))

    run_in_threads(N_THREADS, work)
    assert wrong == []
    assert flags(model) == before
    for key, value in statistics.items():  # no forward ran in training mode
        assert torch.equal(model.state_dict()[key], value), key
    assert modes() == (True, False)


# --- overlapping roots: the whole model in some threads, a part of it in others ------------


class Probe(nn.Module):
    """Records, from inside its forward, every time it finds itself in training mode."""

    def __init__(self) -> None:
        super().__init__()
        self.seen_training: list[str] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            self.seen_training.append(threading.current_thread().name)
        return x


class Tower(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.top = Probe()
        self.part = nn.Sequential(Probe(), nn.Linear(4, 4), nn.Dropout(0.5), Probe())
        self.frozen = nn.Sequential(Probe(), nn.BatchNorm1d(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.frozen(self.part(self.top(x)))


class TowerKeepsFrozen(Tower):
    """The same, with its own train() (which gradguard calls) keeping ``frozen`` in eval."""

    def train(self, mode: bool = True) -> TowerKeepsFrozen:
        super().train(mode)
        self.frozen.eval()
        return self


@pytest.mark.parametrize("tower_class", [Tower, TowerKeepsFrozen])
def test_overlapping_roots_never_show_a_part_in_training(tower_class: type[Tower]) -> None:
    tower = tower_class().train()
    tower.frozen.eval()
    before = flags(tower)
    x = torch.randn(3, 4)
    with torch.no_grad():
        tower.eval()
        expected_whole, expected_part = tower(x), tower.part(x)
        expected_frozen = tower.frozen(x)
    tower.train()
    tower.frozen.eval()
    whole, part, frozen = (gradguard.guard(m) for m in (tower, tower.part, tower.frozen))

    @gradguard.infer
    def through_part(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
        return module(x)

    calls: list[tuple[Callable[[], torch.Tensor], torch.Tensor]] = [
        (lambda: whole(x), expected_whole),
        (lambda: part(x), expected_part),
        (lambda: whole(x), expected_whole),
        (lambda: through_part(tower.part, x), expected_part),
        (lambda: frozen(x), expected_frozen),
    ]
    wrong: list[int] = []

    def work(i: int) -> None:
        call, expected = calls[i % len(calls)]
        for n in range(CALLS):
            if not torch.equal(call(), expected):
                wrong.append(n)

    run_in_threads(N_THREADS, work)
    probes = [m for m in tower.modules() if isinstance(m, Probe)]
    assert [p.seen_training for p in probes] == [[] for _ in probes]
    assert wrong == []
    assert flags(tower) == before


class Gate(nn.Module):
    """Runs ``on_forward`` (once) from inside its forward."""

    def __init__(self) -> None:
        super().__init__()
        self.on_forward: Callable[[], None] | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hook, self.on_forward = self.on_forward, None
        if hook is not None:
            hook()
        return x


class PausesInTrain(nn.Module):
    """A model whose own train() does more than nn.Module's: here it may pause once, as a
    slower override would, or as the interpreter may when it switches threads."""

    def __init__(self) -> None:
        super().__init__()
        self.part = nn.Sequential(Gate(), nn.Linear(2, 2), nn.Dropout(0.5))
        self.frozen = nn.Sequential(Gate(), nn.BatchNorm1d(2))
        self.pause: Callable[[], None] | None = None

    def train(self, mode: bool = True) -> PausesInTrain:
        super().train(mode)
        if mode and self.pause is not None:
            pause, self.pause = self.pause, None
            pause()
        return self


@pytest.mark.parametrize("which", ["part", "frozen"])
def test_a_part_in_use_by_another_thread_never_flips_to_training_on_the_way_back(
    which: str,
) -> None:
    """While thread B is inside a guarded forward of a part, thread A leaves a guarded call
    on the whole model, whose own train() gradguard calls to restore it. B must see its part
    in eval for its whole forward: ``part`` because B holds it, ``frozen`` because it was in
    eval before anyone came. Events make the interleaving certain instead of lucky.
    """
    model = PausesInTrain().train()
    model.frozen.eval()
    before = flags(model)
    watched: nn.Sequential = getattr(model, which)
    b_inside, a_restoring, b_looked = threading.Event(), threading.Event(), threading.Event()
    seen: list[bool] = []

    def in_b_forward() -> None:  # thread B, inside its guarded forward
        b_inside.set()
        a_restoring.wait(WAIT)
        seen.extend(m.training for m in watched.modules())
        b_looked.set()

    def in_a_train() -> None:  # thread A, inside the model's train(True) on the way back
        a_restoring.set()
        b_looked.wait(WAIT)

    watched[0].on_forward = in_b_forward
    b = threading.Thread(target=lambda: gradguard.guard(watched)(torch.ones(3, 2)), name="B")
    b.start()
    try:
        assert b_inside.wait(WAIT)
        model.pause = in_a_train
        with gradguard.scope(model):
            pass
    finally:
        a_restoring.set()  # whatever happened above, let B finish
        b.join(WAIT)
    assert not b.is_alive()
    assert seen == [False] * len(list(watched.modules()))
    assert flags(model) == before


# --- nested calls switch once --------------------------------------------------------------


class CountsTrain(nn.Module):
    """Records each call of its own train(); gradguard must call it rather than set flags."""

    def __init__(self) -> None:
        super().__init__()
        self.drop = nn.Dropout(0.5)
        self.calls: list[bool] = []

    def train(self, mode: bool = True) -> CountsTrain:
        self.calls.append(mode)
        return super().train(mode)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(x)


def nested_calls(model: CountsTrain, x: torch.Tensor) -> list[list[bool]]:
    """Run an outer guarded call with inner ones of each form on the same model inside.

    Returns ``model.calls`` as each of the five bodies saw it, outer first.
    """
    guarded = gradguard.guard(model)
    seen: list[list[bool]] = []

    @gradguard.infer
    def inner(m: CountsTrain) -> torch.Tensor:
        seen.append(list(m.calls))
        return m(x)

    @gradguard.infer
    def outer(m: CountsTrain) -> None:
        seen.append(list(m.calls))
        inner(m)
        guarded(x)
        seen.append(list(m.calls))  # after the guarded forward
        with gradguard.scope(m):
            seen.append(list(m.calls))
            inner(m)

    outer(model)
    return seen


def test_nested_calls_on_one_module_switch_it_once_through_its_own_train() -> None:
    model = CountsTrain().train()
    model.calls.clear()
    seen = nested_calls(model, torch.ones(2, 2))
    assert seen == [[False]] * 5  # switched by the outer call only, by its train(False)
    assert model.calls == [False, True]
    assert model.training and model.drop.training


def test_nested_calls_in_many_threads_each_on_its_own_model() -> None:
    models = [CountsTrain().train() for _ in range(N_THREADS)]
    for model in models:
        model.calls.clear()
    rounds = CALLS // 10

    def work(i: int) -> None:
        model = models[i]
        for n in range(rounds):
            seen = nested_calls(model, torch.ones(2, 2))
            assert seen == [[False, True] * n + [False]] * 5
            assert model.calls[-2:] == [False, True]

    run_in_threads(N_THREADS, work)
    assert all(m.calls == [False, True] * rounds for m in models)
    assert all(m.training and m.drop.training for m in models)


def test_nested_calls_in_many_threads_on_one_model_balance_their_switches() -> None:
    model = CountsTrain().train()
    model.calls.clear()
    rounds = CALLS // 10
    in_training: list[list[bool]] = []

    def work(i: int) -> None:
        for _ in range(rounds):
            for seen in nested_calls(model, torch.ones(2, 2)):
                if seen[-1] is not False:  # the last switch a body saw must be to eval
                    in_training.append(seen)

    run_in_threads(N_THREADS, work)
    assert in_training == []
    switches = model.calls.count(False)
    assert 1 <= switches <= N_THREADS * rounds  # never more than one per outer call
    assert model.calls == [False, True] * switches  # each switch undone, in order
    assert model.training and model.drop.training


# --- grad and inference mode are per thread ------------------------------------------------


FORMS = ["infer", "guard", "scope"]


def hold_inside(form: str, model: nn.Module, mode: str, body: Callable[[], None]) -> None:
    """Run ``body`` inside a guarded call of ``form`` on ``model`` in ``mode``."""
    if form == "scope":
        with gradguard.scope(model, mode=mode):
            body()
    elif form == "infer":

        def call(m: nn.Module) -> None:
            body()

        gradguard.infer(mode=mode)(call)(model)
    else:

        class Holder(nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.model = model

            def forward(self) -> None:
                body()

        gradguard.guard(Holder(), mode=mode)()


@pytest.mark.parametrize("form", FORMS)
def test_a_thread_inside_a_guarded_call_leaves_other_threads_modes_alone(form: str) -> None:
    model = nn.Sequential(nn.Linear(2, 2), nn.Dropout(0.5)).train()
    inside, done = threading.Event(), threading.Event()
    seen: dict[str, object] = {}

    def worker() -> None:
        def body() -> None:
            seen["worker"] = modes()
            inside.set()
            done.wait(WAIT)

        hold_inside(form, model, "inference", body)
        seen["worker after"] = modes()

    thread = threading.Thread(target=worker)
    thread.start()
    try:
        assert inside.wait(WAIT)
        seen["main"] = modes()  # while the worker is inside its guarded call
        seen["main sees model"] = model.training  # flags, unlike modes, are shared
    finally:
        done.set()
        thread.join(WAIT)
    assert not thread.is_alive()
    assert seen == {
        "worker": (False, True),
        "main": (True, False),
        "main sees model": False,
        "worker after": (True, False),
    }
    assert model.training


@pytest.mark.parametrize("form", FORMS)
def test_threads_inside_guarded_calls_of_different_modes_at_once_each_see_their_own(
    form: str,
) -> None:
    model = nn.Sequential(nn.Linear(2, 2), nn.Dropout(0.5)).train()
    plans: list[tuple[str, bool, bool]] = [  # (mode, grad mode before, inference mode before)
        ("inference", True, False),
        ("no_grad", True, False),
        ("no_grad", False, False),
        ("inference", True, True),
        ("no_grad", True, True),  # leaves inference mode for its body
        ("outside", True, False),  # no guarded call at all
    ]
    all_inside = threading.Barrier(len(plans))
    seen: dict[int, tuple[tuple[bool, bool], tuple[bool, bool], tuple[bool, bool]]] = {}

    def work(i: int) -> None:
        mode, grad, inference = plans[i]
        found: list[tuple[bool, bool]] = []

        def body() -> None:
            all_inside.wait(WAIT)  # every thread is inside its call: look now
            found.append(modes())
            all_inside.wait(WAIT)  # and again, after every other thread has looked
            found.append(modes())

        with torch.inference_mode(inference), torch.set_grad_enabled(grad):
            before = modes()
            if mode == "outside":
                body()
            else:
                hold_inside(form, model, mode, body)
            after = modes()
        assert found[0] == found[1]
        seen[i] = (before, found[0], after)

    run_in_threads(len(plans), work)
    inside = {"inference": (False, True), "no_grad": (False, False)}
    for i, (mode, grad, inference) in enumerate(plans):
        before, during, after = seen[i]
        assert before == after == (grad, inference), plans[i]
        assert during == inside.get(mode, (grad, inference)), plans[i]
    assert model.training
