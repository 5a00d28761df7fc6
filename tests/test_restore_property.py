"""Everything comes back after random nestings of every guarded form (hypothesis).

A strategy draws a small *program*: a tree of guarded calls (``@infer`` functions and
methods, ``guard``-ed modules, ``scope`` blocks, generators, coroutines), each with a mode,
the modules it switches, its children, and maybe an exception to raise at some point of
its body. Generators are consumed to the end, or partly and then closed, thrown into,
dropped or left to the garbage collector; coroutines run to the end or are cancelled.

The ``Interpreter`` runs a program under random ambient grad and inference modes, against
a model whose submodules have random training flags, and checks:

* inside every guarded body: its modules (and those of the guarded calls around it) are
  in eval; inference targets run with inference mode on, no_grad targets with grad off and
  inference mode off (and can still use autograd under ``torch.enable_grad()``);
* between ``next()`` calls, between steps of a coroutine and in other asyncio tasks: the
  modes and flags are those of the code outside;
* after every guarded call, and after the outermost one: grad mode, inference mode and
  every submodule's flag are as before, and an exception comes out as the very object
  that was raised.
"""

from __future__ import annotations

import asyncio
import gc
import weakref
from collections import Counter
from collections.abc import Coroutine, Generator, Iterable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, fields
from typing import Any, Literal

import pytest
import torch
from hypothesis import HealthCheck, given, settings, strategies as st
from torch import nn

import gradguard

Kind = Literal["function", "method", "guard", "scope", "generator", "coroutine"]
Mode = Literal["auto", "inference", "no_grad"]
Ending = Literal["exhaust", "close", "throw", "drop", "collect"]
State = tuple[bool, bool, tuple[bool, ...]]  # grad mode, inference mode, every flag

KINDS: tuple[Kind, ...] = ("function", "method", "guard", "scope", "generator", "coroutine")
MODES: tuple[Mode, ...] = ("auto", "inference", "no_grad")
ENDINGS: tuple[Ending, ...] = ("exhaust", "close", "throw", "drop", "collect")
MAX_CHILDREN = (3, 3, 2, 0)  # by depth: programs stay small enough to run by the hundred


class Boom(Exception):
    pass


class BoomRuntime(RuntimeError):
    """A RuntimeError that is no inference-mode error: auto mode must not retry it."""


class Abort(BaseException):
    """Not an Exception: gradguard must restore on any BaseException."""


EXCEPTIONS: tuple[type[BaseException], ...] = (Boom, BoomRuntime, Abort)


# --- the model ----------------------------------------------------------------------------


class KeepsNormFrozen(nn.Module):
    """A block whose own ``train()`` keeps its BatchNorm in eval, so gradguard calls it."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(2, 2)
        self.norm = nn.BatchNorm1d(2)
        self.drop = nn.Dropout(0.5)

    def train(self, mode: bool = True) -> KeepsNormFrozen:
        super().train(mode)
        self.norm.eval()
        return self


N_MODULES = 9


def make_model(flags: list[bool]) -> nn.Module:
    """Nine modules, each given its own flag (a frozen BatchNorm, a training Dropout...)."""
    model = nn.Sequential(
        nn.Linear(2, 2),
        KeepsNormFrozen(),
        nn.Sequential(nn.BatchNorm1d(2), nn.Dropout(0.1)),
    )
    modules = list(model.modules())
    assert len(modules) == len(flags) == N_MODULES
    for module, flag in zip(modules, flags, strict=True):
        module.training = flag
    return model


def below(modules: Iterable[nn.Module]) -> frozenset[nn.Module]:
    """The modules and all their submodules: what a guarded call must hold in eval."""
    return frozenset(sub for module in modules for sub in module.modules())


# --- programs -----------------------------------------------------------------------------


@dataclass(frozen=True, repr=False)
class Node:
    """One guarded call and what its body does: run its children, maybe raise on the way."""

    kind: Kind
    mode: Mode
    targets: tuple[int, ...]  # indices into the model's modules, switched by this call
    children: tuple[Node, ...] = ()
    raises: type[BaseException] | None = None
    raise_at: int = 0  # raised before child number `raise_at` (or at the end)
    ending: Ending = "exhaust"  # generators: how the consumer stops
    take: int = 0  # generators: values taken before an ending other than "exhaust"
    cancel_after: int | None = None  # coroutines: steps before cancellation, if any

    def __repr__(self) -> str:  # short: only what differs from the defaults
        shown = [repr(self.kind), repr(self.mode), repr(self.targets)]
        for field in fields(self)[3:]:
            value = getattr(self, field.name)
            if value != field.default:
                text = value.__name__ if isinstance(value, type) else repr(value)
                shown.append(f"{field.name}={text}")
        return f"Node({', '.join(shown)})"

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        printer.text(repr(self))  # hypothesis prints falsifying examples with this


@st.composite
def programs(draw: st.DrawFn, depth: int = 0) -> Node:
    kind = draw(st.sampled_from(KINDS))
    most = MAX_CHILDREN[depth]
    children = tuple(draw(st.lists(programs(depth + 1), min_size=min(most, 1), max_size=most)))
    extra: dict[str, Any] = {}
    if kind == "generator":
        extra["ending"] = draw(st.sampled_from(ENDINGS))
        extra["take"] = draw(st.integers(0, len(children) + 1))
    if kind == "coroutine":
        extra["cancel_after"] = draw(st.none() | st.integers(0, len(children) + 1))
    return Node(
        kind=kind,
        mode=draw(st.sampled_from(MODES)),
        targets=tuple(draw(st.lists(st.integers(0, N_MODULES - 1), max_size=2))),
        children=children,
        # Mostly None, so that most programs run deep before anything is raised.
        raises=draw(st.sampled_from((*[None] * 15, *EXCEPTIONS))),
        raise_at=draw(st.integers(0, len(children))),
        **extra,
    )


# --- the guarded forms the interpreter calls -------------------------------------------
# Built once, one per mode. Their code uses nothing of autograd, so auto means inference
# (test_auto_targets_here_run_in_inference_mode checks it).


def _function(
    interp: Interpreter, node: Node, in_eval: frozenset[nn.Module], *modules: Any
) -> None:
    interp.body(node, in_eval | below(modules))


def _generator(
    interp: Interpreter, node: Node, in_eval: frozenset[nn.Module], *modules: Any
) -> Iterator[int]:
    yield from interp.steps(node, in_eval | below(modules))


async def _coroutine(
    interp: Interpreter, node: Node, in_eval: frozenset[nn.Module], *modules: Any
) -> None:
    await interp.async_body(node, in_eval | below(modules))


FUNCTIONS = {mode: gradguard.infer(mode=mode)(_function) for mode in MODES}
GENERATORS = {mode: gradguard.infer(mode=mode)(_generator) for mode in MODES}
COROUTINES = {mode: gradguard.infer(mode=mode)(_coroutine) for mode in MODES}


class Owner:
    """A plain object with modules as attributes: a guarded method finds them on self."""

    def __init__(self, modules: list[nn.Module]) -> None:
        for i, module in enumerate(modules):
            setattr(self, f"module{i}", module)

    def run(self, interp: Interpreter, node: Node, in_eval: frozenset[nn.Module]) -> None:
        interp.body(node, in_eval | below(vars(self).values()))

    run_auto = gradguard.infer(mode="auto")(run)
    run_inference = gradguard.infer(mode="inference")(run)
    run_no_grad = gradguard.infer(mode="no_grad")(run)


class Host(nn.Module):
    """A module whose forward is a body; ``guard(host)`` switches it and its parts."""

    def __init__(self, parts: list[nn.Module]) -> None:
        super().__init__()
        self.parts = nn.ModuleList(parts)

    def forward(self, interp: Interpreter, node: Node, in_eval: frozenset[nn.Module]) -> None:
        interp.body(node, in_eval | below([self]))


def autograd_works() -> bool:
    """Whether a tensor made here can record a graph under ``torch.enable_grad()``."""
    try:
        with torch.enable_grad():
            x = torch.ones(2, requires_grad=True)
            (x * 3).sum().backward()
    except RuntimeError:
        return False
    return x.grad is not None and torch.equal(x.grad, torch.full((2,), 3.0))


# --- the interpreter ----------------------------------------------------------------------


class Interpreter:
    """Runs a program against one model; records what went wrong instead of raising."""

    def __init__(self, model: nn.Module) -> None:
        self.modules = list(model.modules())
        self.problems: list[str] = []
        self.raised: list[BaseException] = []
        self.bodies: Counter[Kind] = Counter()  # body steps run, by kind

    # What is observed and expected.

    def state(self) -> State:
        flags = tuple(m.training for m in self.modules)
        return torch.is_grad_enabled(), torch.is_inference_mode_enabled(), flags

    def expect_state(self, expected: State, where: str) -> None:
        now = self.state()
        if now != expected:
            self.problems.append(f"{where}: (grad, inference, flags) {now} != {expected}")

    def check_body(self, node: Node, in_eval: frozenset[nn.Module]) -> None:
        self.bodies[node.kind] += 1
        where = f"inside a {node.mode} {node.kind}"
        grad, inference = torch.is_grad_enabled(), torch.is_inference_mode_enabled()
        if node.mode == "no_grad":
            if grad or inference:
                self.problems.append(f"{where}: grad={grad} inference={inference}")
            elif not autograd_works():
                self.problems.append(f"{where}: torch.enable_grad() records nothing")
        elif grad or not inference:
            self.problems.append(f"{where}: grad={grad} inference={inference}")
        training = sorted(type(m).__name__ for m in in_eval if m.training)
        if training:
            self.problems.append(f"{where}: still in training: {training}")

    def maybe_raise(self, node: Node, position: int) -> None:
        if node.raises is not None and node.raise_at == position:
            error = node.raises(f"raised by a {node.kind} before step {position}")
            self.raised.append(error)
            raise error

    # Bodies: plain, generator and coroutine.

    def run_child(self, child: Node, in_eval: frozenset[nn.Module]) -> None:
        before = self.state()
        self.call(child, in_eval)
        self.expect_state(before, f"after a {child.mode} {child.kind}")

    def body(self, node: Node, in_eval: frozenset[nn.Module]) -> None:
        self.check_body(node, in_eval)
        for i, child in enumerate(node.children):
            self.maybe_raise(node, i)
            self.run_child(child, in_eval)
        self.maybe_raise(node, len(node.children))

    def steps(self, node: Node, in_eval: frozenset[nn.Module]) -> Iterator[int]:
        """A generator body: yields before its first child, after each, raises on the way."""
        try:
            for i in range(len(node.children) + 1):
                self.check_body(node, in_eval)  # on the first step, and again on each resume
                self.maybe_raise(node, i)
                if i < len(node.children):
                    self.run_child(node.children[i], in_eval)
                yield i
        finally:  # cleanup runs guarded too: at the end, on error, close, throw or collection
            self.check_body(node, in_eval)

    async def async_body(self, node: Node, in_eval: frozenset[nn.Module]) -> None:
        """A coroutine body: awaits child coroutines, suspends between children."""
        try:
            for i in range(len(node.children) + 1):
                self.check_body(node, in_eval)  # on the first step, and again on each resume
                self.maybe_raise(node, i)
                if i < len(node.children):
                    child = node.children[i]
                    if child.kind == "coroutine" and child.cancel_after is None:
                        before = self.state()
                        await self.coroutine(child, in_eval)
                        self.expect_state(before, f"after awaiting a {child.mode} coroutine")
                    else:
                        self.run_child(child, in_eval)
                await asyncio.sleep(0)
        finally:  # cleanup runs guarded too: at the end, on error and on cancellation
            self.check_body(node, in_eval)

    # Calls: one guarded form per kind.

    def call(self, node: Node, in_eval: frozenset[nn.Module]) -> None:
        modules = [self.modules[i] for i in node.targets]
        if node.kind == "function":
            FUNCTIONS[node.mode](self, node, in_eval, *modules)
        elif node.kind == "method":
            getattr(Owner(modules), f"run_{node.mode}")(self, node, in_eval)
        elif node.kind == "guard":
            gradguard.guard(Host(modules), mode=node.mode)(self, node, in_eval)
        elif node.kind == "scope":
            with gradguard.scope(*modules, mode=node.mode):
                self.body(node, in_eval | below(modules))
        elif node.kind == "generator":
            self.consume(GENERATORS[node.mode](self, node, in_eval, *modules), node)
        else:
            self.drive(self.coroutine(node, in_eval), node)

    def coroutine(self, node: Node, in_eval: frozenset[nn.Module]) -> Coroutine[Any, Any, None]:
        modules = [self.modules[i] for i in node.targets]
        return COROUTINES[node.mode](self, node, in_eval, *modules)

    def consume(self, gen: Generator[int, None, None], node: Node) -> None:
        """Take values from a guarded generator, then stop as ``node.ending`` says."""
        if node.ending == "collect":
            # Make the wrapper older than the body it starts on the first next(): then the
            # collector finalizes the body first, the order least kind to gradguard.
            gc.collect(0)
        outside = self.state()
        limit = None if node.ending == "exhaust" else node.take
        taken = 0
        while limit is None or taken < limit:
            try:
                next(gen)
            except StopIteration:
                break
            taken += 1
            self.expect_state(outside, "between next() calls on a guarded generator")
        if node.ending == "close":
            gen.close()
        elif node.ending == "throw":
            error = Boom("thrown into a guarded generator")
            self.raised.append(error)
            gen.throw(error)
            self.problems.append("an error thrown into a generator did not come out")
        elif node.ending in ("drop", "collect"):
            ref = weakref.ref(gen)
            if node.ending == "collect":  # only the collector can finalize a cycle
                cycle: list[Any] = [gen]
                cycle.append(cycle)
                del cycle
            del gen
            if node.ending == "collect":
                gc.collect()
            if ref() is not None:
                self.problems.append(f"a {node.ending}ped generator was not finalized")
        self.expect_state(outside, f"after a guarded generator ({node.ending})")

    def drive(self, coro: Coroutine[Any, Any, None], node: Node) -> None:
        """Run a guarded coroutine step by step, without an event loop; maybe cancel it."""
        outside = self.state()
        steps = 0
        while True:
            if steps == node.cancel_after:
                cancel = asyncio.CancelledError()
                try:
                    coro.throw(cancel)
                except asyncio.CancelledError as error:
                    if error is not cancel:
                        self.problems.append("the cancellation came out as another object")
                except StopIteration:
                    self.problems.append("a cancelled coroutine returned")
                else:
                    self.problems.append("a cancelled coroutine went on")
                    coro.close()
                break
            try:
                coro.send(None)
            except StopIteration:
                break
            steps += 1
            self.expect_state(outside, "between steps of a guarded coroutine")
        self.expect_state(outside, "after a guarded coroutine")

    async def in_event_loop(self, node: Node) -> None:
        """Run a coroutine program as a task; watch from this other task while it waits."""
        outside = self.state()
        task = asyncio.ensure_future(self.coroutine(node, frozenset()))
        turns = 0
        while not task.done():
            if turns == node.cancel_after:
                task.cancel()
            await asyncio.sleep(0)
            turns += 1
            self.expect_state(outside, "in another task while a guarded coroutine waits")
        error = None if task.cancelled() else task.exception()
        if error is not None:
            raise error

    def run(self, program: Node) -> None:
        if program.kind == "coroutine":
            asyncio.run(self.in_event_loop(program))
        else:
            self.call(program, frozenset())


# --- the tests ----------------------------------------------------------------------------


@contextmanager
def only_the_collections_asked_for() -> Iterator[None]:
    """Turn off automatic garbage collection, so that which of a wrapper and its body the
    collector finalizes first depends on the program alone, not on what ran before it."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def ambient(stack: ExitStack, grad: bool, inference: bool) -> None:
    """Enter the modes the outermost call is made in (grad may be on inside inference)."""
    if inference:
        stack.enter_context(torch.inference_mode())
    stack.enter_context(torch.set_grad_enabled(grad))


@settings(
    max_examples=500,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(
    flags=st.lists(st.booleans(), min_size=N_MODULES, max_size=N_MODULES),
    grad=st.booleans(),
    inference=st.booleans(),
    program=programs(),
)
def test_random_nestings_restore_modes_flags_and_exceptions(
    flags: list[bool], grad: bool, inference: bool, program: Node
) -> None:
    interp = Interpreter(make_model(flags))
    caught: BaseException | None = None
    with ExitStack() as stack:
        stack.enter_context(only_the_collections_asked_for())
        ambient(stack, grad, inference)
        before = interp.state()
        try:
            interp.run(program)
        except (Exception, Abort) as error:
            caught = error
        after = interp.state()
    assert after == before
    assert interp.problems == []
    assert len(interp.raised) <= 1  # nothing catches an error, so the first one ends it
    assert caught is (interp.raised[0] if interp.raised else None)


def test_auto_targets_here_run_in_inference_mode() -> None:
    """The interpreter expects auto to mean inference: none of its bodies uses autograd."""
    model = nn.Linear(1, 1)
    targets: list[Any] = [
        FUNCTIONS["auto"],
        GENERATORS["auto"],
        COROUTINES["auto"],
        Owner([model]).run_auto,
        gradguard.guard(Host([model])),
        gradguard.scope(model),
    ]
    assert [gradguard.describe(t).mode for t in targets] == ["inference"] * len(targets)


@pytest.mark.parametrize("ending", ENDINGS)
def test_each_generator_ending_once_in_a_nesting(ending: Ending) -> None:
    """A fixed program per ending, so each path runs even where hypothesis draws few."""
    leaf = Node("function", "no_grad", (4,))
    gen = Node("generator", "inference", (0,), (leaf, leaf), ending=ending, take=1)
    program = Node("coroutine", "no_grad", (2,), (Node("scope", "inference", (3,), (gen,)),))
    model = make_model([True, True, True, True, False, True, False, True, True])
    interp = Interpreter(model)
    before = interp.state()
    caught: BaseException | None = None
    try:
        interp.run(program)
    except Boom as error:
        caught = error
    assert interp.state() == before
    assert interp.problems == []
    assert caught is (interp.raised[0] if ending == "throw" else None)
    assert interp.bodies["generator"] >= 1 and interp.bodies["scope"] == 1


@pytest.mark.parametrize("cancel_after", [0, 1, 2, 3])
def test_cancelled_coroutine_programs_in_a_loop_and_by_hand(cancel_after: int) -> None:
    """A coroutine awaiting a coroutine, cancelled by the loop; inside, one cancelled by hand."""
    by_hand = Node(
        "coroutine", "inference", (1,), (Node("method", "no_grad", (5,)),), cancel_after=1
    )
    inner = Node("coroutine", "no_grad", (2,), (by_hand, Node("guard", "auto", (6,))))
    program = Node("coroutine", "inference", (0,), (inner, inner), cancel_after=cancel_after)
    interp = Interpreter(make_model([True] * N_MODULES))
    before = interp.state()
    interp.run(program)
    assert interp.state() == before
    assert interp.problems == []
    assert interp.raised == []
    # Cancelled before its first step, a coroutine's body never runs; after, it has run.
    assert (interp.bodies["coroutine"] > 0) == (cancel_after > 0)


def _dropped_in_a_cycle(
    model: nn.Module, cleanup: list[tuple[bool, bool]], kind: str = "generator"
) -> None:
    """Start a guarded generator or coroutine on ``model``, drop it half way in a cycle."""

    @gradguard.infer(mode="inference")
    def generator(m: nn.Module) -> Iterator[None]:
        try:
            yield
            yield
        finally:
            cleanup.append((torch.is_inference_mode_enabled(), m.training))

    @gradguard.infer(mode="inference")
    async def coroutine(m: nn.Module) -> None:
        try:
            await asyncio.sleep(0)
            await asyncio.sleep(0)
        finally:
            cleanup.append((torch.is_inference_mode_enabled(), m.training))

    body: Any = generator(model) if kind == "generator" else coroutine(model)
    gc.collect(0)  # the wrapper gets older than the body it starts now:
    body.send(None)  # the collector will finalize the body first
    cycle: list[Any] = [body]
    cycle.append(cycle)


@pytest.mark.parametrize("kind", ["generator", "coroutine"])
def test_cleanup_of_a_body_collected_in_a_cycle_runs_guarded(kind: str) -> None:
    """Dropped half way in a reference cycle, a guarded generator or coroutine still runs
    its body's cleanup under the mode, with its module in eval, whichever of the wrapper
    and the body the collector finalizes first."""
    model = nn.Linear(1, 1).train()
    cleanup: list[tuple[bool, bool]] = []
    _dropped_in_a_cycle(model, cleanup, kind)
    gc.collect()
    assert cleanup == [(True, False)]  # under inference mode, model in eval
    assert model.training
    assert not torch.is_inference_mode_enabled()


@pytest.mark.parametrize("which", [0, 1])
def test_an_interrupt_in_a_collector_callback_leaves_nothing_behind(
    which: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An interrupt landing as one of the callbacks that end a collection starts is dropped
    by Python ("Exception ignored"), with no second run: the other callback still leaves
    the mode and gives the flags back."""
    from gradguard._steps import bodies

    dropped: list[type[BaseException]] = []
    monkeypatch.setattr("sys.unraisablehook", lambda u: dropped.append(u.exc_type))
    callbacks = list(bodies._callbacks)
    real = callbacks[which]

    def interrupted(phase: str, info: dict[str, Any]) -> None:
        if phase == "stop":
            raise KeyboardInterrupt  # before its first line, as a signal handler would
        real(phase, info)

    callbacks[which] = interrupted
    monkeypatch.setattr(bodies, "_callbacks", tuple(callbacks))
    model = nn.Sequential(nn.Linear(1, 1), nn.Dropout()).train()
    cleanup: list[tuple[bool, bool]] = []
    try:
        _dropped_in_a_cycle(model, cleanup)
        gc.collect()
    finally:
        bodies.untrack(None)  # no body left: the callbacks, the interrupted one too, go
    assert dropped == [KeyboardInterrupt]
    assert cleanup == [(True, False)]  # still guarded
    assert all(m.training for m in model.modules())
    assert not torch.is_inference_mode_enabled()
    assert bodies.dying == []


def test_the_application_gc_callbacks_all_run_when_the_last_body_is_collected() -> None:
    """gradguard never takes its callbacks out of gc.callbacks while the collector walks
    that list: a removal there would make it skip the application's next callback."""
    from gradguard._steps import bodies

    phases: list[str] = []

    def mine(phase: str, info: dict[str, Any]) -> None:
        phases.append(phase)

    model = nn.Linear(1, 1).train()
    cleanup: list[tuple[bool, bool]] = []
    _dropped_in_a_cycle(model, cleanup)
    gc.callbacks.append(mine)
    try:
        gc.collect()
    finally:
        gc.callbacks.remove(mine)
    assert phases == ["start", "stop"]
    assert cleanup == [(True, False)]
    bodies.untrack(None)  # ordinary code: the callbacks come out once no body is left
    assert not any(c in gc.callbacks for c in bodies._callbacks)
