"""The leak sentinel: inference tensors made by guarded calls, caught where they meet autograd."""

from __future__ import annotations

import contextlib
import gc
import sys
import warnings
import weakref
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import torch
from torch import nn

import gradguard
from gradguard import _hooks, _leaks
from gradguard.testing import capture_events


@pytest.fixture
def teacher() -> nn.Module:
    torch.manual_seed(0)
    return gradguard.guard(nn.Linear(4, 4), name="teacher")


@pytest.fixture(autouse=True)
def _no_leak_state_left() -> Iterator[None]:
    yield
    gc.collect()
    nn.Identity()(torch.ones(1))  # the hook leaves at the first module call it finds idle
    hooked = _leaks.sentinel.hooked()
    _leaks.reset()  # whatever happened, the next test starts clean
    assert not hooked, "the hooks outlived the tensors they watch"


def test_distillation_teacher_output_into_student_warns_at_the_users_line(
    teacher: nn.Module,
) -> None:
    student_head = nn.Linear(4, 1)
    teacher_out = teacher(torch.randn(2, 4))
    with (
        pytest.warns(gradguard.LeakWarning, match=r"made by teacher \(call 1\)") as record,
        pytest.raises(RuntimeError, match="Inference tensors cannot be saved"),
    ):
        student_head(teacher_out)  # torch fails after gradguard has said why
    assert record[0].filename == __file__
    assert "outputs='clone'" in str(record[0].message)
    assert "Linear module" in str(record[0].message)


def test_a_failure_leaving_a_watch_leaks_block_warns_at_the_users_with_line(
    teacher: nn.Module,
) -> None:
    """The warning is raised from contextlib's ``__exit__``: it must skip that frame too,
    so filters by module and line match the user's code."""
    student = nn.Linear(4, 4)
    teacher_out = teacher(torch.randn(2, 4))
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        with_line = sys._getframe().f_lineno + 1
        with contextlib.suppress(RuntimeError), gradguard.watch_leaks():
            torch.nn.functional.mse_loss(student(torch.randn(2, 4)), teacher_out).backward()
    leaks = [w for w in record if issubclass(w.category, gradguard.LeakWarning)]
    assert len(leaks) == 1
    assert "watch_leaks block" in str(leaks[0].message)
    assert (leaks[0].filename, leaks[0].lineno) == (__file__, with_line)


@pytest.mark.parametrize(
    "view",
    [lambda t: t[:, :-1], lambda t: t.view(-1), lambda t: t.t()],
    ids=["slice", "flatten", "transpose"],
)
def test_a_view_taken_later_still_names_the_call(
    teacher: nn.Module, view: Callable[[torch.Tensor], torch.Tensor]
) -> None:
    """Views of an output, taken outside inference mode, are new inference tensors that
    torch does not link to their base; the storage they share names the call."""
    made = teacher(torch.randn(2, 4))  # kept, as a model's output object keeps its logits
    out = view(made)
    own = view(torch.inference_mode()(torch.randn)(2, 4))  # the user's own: not the teacher's
    with (
        pytest.warns(gradguard.LeakWarning, match=r"made by teacher \(call 1\)"),
        pytest.raises(RuntimeError, match="Inference tensors"),
    ):
        nn.Linear(out.shape[-1], 1)(out)
    assert gradguard._leaks.origin_of(own) is None


def test_views_are_found_past_a_remembered_tensor_without_a_storage() -> None:
    with torch.inference_mode():
        sparse = torch.eye(3).to_sparse()
        dense = torch.ones(4, 4)
    _leaks.remember(sparse, "sparse-target", 1)  # first in line: has no single storage
    _leaks.remember(dense, "dense-target", 7)
    assert _leaks.origin_of(dense[1:]) == _leaks.Origin("dense-target", 7)
    assert _leaks.origin_of(torch.inference_mode()(torch.ones)(2)) is None
    del sparse, dense


def test_cached_embeddings_reused_in_a_training_step(teacher: nn.Module) -> None:
    cache = {"emb": teacher(torch.randn(3, 4))}  # computed once, kept
    layer = nn.Linear(4, 4).train()
    # torch's own error leaves the block as a LeakError naming the call, caused by it.
    with (
        pytest.raises(gradguard.LeakError, match="made by teacher") as caught,
        gradguard.watch_leaks(action="raise"),
    ):
        layer(cache["emb"])
    assert isinstance(caught.value.__cause__, RuntimeError)
    assert "Inference tensors cannot be saved" in str(caught.value.__cause__)
    assert (caught.value.target, caught.value.call) == ("teacher", 1)
    assert caught.value.receiver == "the Linear module"


def test_leak_event_goes_through_telemetry(teacher: nn.Module) -> None:
    out = teacher(torch.randn(1, 4))
    with (
        capture_events() as events,
        pytest.warns(gradguard.LeakWarning),
        contextlib.suppress(RuntimeError),
    ):
        nn.Linear(4, 1)(out)
    leaks = [e for e in events if e["event"] == "gradguard.leak"]
    assert [(e["target"], e["call"], e["level"]) for e in leaks] == [("teacher", 1, "warning")]


@pytest.mark.parametrize(
    "use",
    ["no_grad", "inference_mode", "eval_frozen", "clone_outputs", "no_grad_mode"],
)
def test_legitimate_uses_do_not_warn(use: str) -> None:
    model = nn.Linear(4, 4)
    options = {"clone_outputs": {"outputs": "clone"}, "no_grad_mode": {"mode": "no_grad"}}
    guarded = gradguard.guard(model, **options.get(use, {}))  # type: ignore[arg-type]
    out = guarded(torch.randn(2, 4))
    consumer = nn.Linear(4, 1)
    with warnings.catch_warnings():
        warnings.simplefilter("error", gradguard.LeakWarning)
        if use == "no_grad":
            with torch.no_grad():
                consumer(out)
        elif use == "inference_mode":
            with torch.inference_mode():
                consumer(out)
        elif use == "eval_frozen":
            consumer.eval().requires_grad_(False)
            consumer(out)
        else:
            consumer(out).sum().backward()  # ordinary tensors: training works


def test_nothing_is_kept_alive_and_the_hook_goes_away(teacher: nn.Module) -> None:
    out = teacher(torch.randn(2, 4))
    # While a gradguard-made inference tensor lives, torch's errors are watched for; the
    # pre-hook is for parameters and buffers a call left in modules, of which there are none.
    assert _hooks.forward_hooks_always.installed()
    assert not _hooks.forward_pre_hooks.installed()
    ref = weakref.ref(out)
    del out
    gc.collect()
    assert ref() is None
    assert _leaks.sentinel.remembered() == 0
    nn.Identity()(torch.ones(1))  # the next module call finds nothing to watch, and unhooks
    assert not _leaks.sentinel.hooked()


def test_level_off_remembers_nothing(teacher: nn.Module) -> None:
    gradguard.configure(leaks="off")
    out = teacher(torch.randn(2, 4))
    assert not _hooks.forward_pre_hooks.installed()
    with warnings.catch_warnings():
        warnings.simplefilter("error", gradguard.LeakWarning)
        with pytest.raises(RuntimeError, match="Inference tensors cannot be saved"):
            nn.Linear(4, 1)(out)


def test_environment_variable_and_bad_levels(monkeypatch: pytest.MonkeyPatch) -> None:
    from gradguard import _config

    monkeypatch.setenv("GRADGUARD_LEAKS", "off")
    _config.reset()
    assert _config.current().leaks == "off"
    with pytest.raises(ValueError, match="leaks must be one of 'off', 'boundary', 'strict'"):
        gradguard.configure(leaks="loud")
    with pytest.raises(ValueError, match="set for a block"):
        gradguard.configure(leaks="strict")
    with pytest.raises(ValueError, match="level must be one of"), gradguard.watch_leaks("x"):  # type: ignore[arg-type]
        pass
    with (
        pytest.raises(ValueError, match="action must be 'warn' or 'raise'"),
        gradguard.watch_leaks(
            action="shout"  # type: ignore[arg-type]
        ),
    ):
        pass


def test_check_module_finds_parameters_built_under_inference_mode() -> None:
    with torch.inference_mode():
        model = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
    findings = gradguard.check_module(model)
    names = [(f.name, f.kind) for f in findings]
    assert ("0.weight", "parameter") in names and ("1.running_mean", "buffer") in names
    assert "outside torch.inference_mode()" in str(findings)
    clean = gradguard.check_module(nn.Linear(2, 2))
    assert not clean and clean == []
    with pytest.raises(TypeError, match=r"check_module\(\) takes an nn.Module"):
        gradguard.check_module("model")  # type: ignore[arg-type]


def test_check_module_passes_over_lazy_parameters_not_yet_made() -> None:
    with torch.inference_mode():
        model = nn.Sequential(nn.LazyLinear(2), nn.BatchNorm1d(2))
    assert [(f.name, f.kind) for f in gradguard.check_module(model)] == [
        ("1.weight", "parameter"),
        ("1.bias", "parameter"),
        ("1.running_mean", "buffer"),
        ("1.running_var", "buffer"),
        ("1.num_batches_tracked", "buffer"),
    ]


def test_strict_catches_functional_uses_at_the_exact_op(teacher: nn.Module) -> None:
    import torch.nn.functional as F

    teacher_out = teacher(torch.randn(2, 4))
    student_out = nn.Linear(4, 4)(torch.randn(2, 4))
    with gradguard.watch_leaks(level="strict", action="raise"):
        with pytest.raises(gradguard.LeakError, match="torch operation mse_loss"):
            F.mse_loss(student_out, teacher_out)
        with pytest.raises(gradguard.LeakError, match=r"torch operation add\b"):
            _ = student_out + teacher_out  # torch itself lets this one through silently
        with pytest.raises(gradguard.LeakError, match="updated in place by torch operation add_"):
            teacher_out.add_(1)
        with torch.no_grad():
            F.mse_loss(student_out, teacher_out)  # no graph: no leak
    assert torch.is_grad_enabled()


def test_boundary_does_not_see_functional_uses(teacher: nn.Module) -> None:
    teacher_out = teacher(torch.randn(2, 4))
    student_out = nn.Linear(4, 4)(torch.randn(2, 4))
    with warnings.catch_warnings():
        warnings.simplefilter("error", gradguard.LeakWarning)
        total = student_out + teacher_out  # silently works in torch, and at this level
    assert total.requires_grad


LEAKY_TEST = """
import torch
from torch import nn
import gradguard

def test_distillation():
    teacher = gradguard.guard(nn.Linear(4, 4), name="teacher")
    student = nn.Linear(4, 4)
    x = torch.randn(2, 4)
    (student(x) + teacher(x)).sum().backward()  # torch lets this through silently
"""


@pytest.mark.parametrize(
    ("option", "outcome"),
    [([], {"passed": 1}), (["--gradguard-leaks=strict"], {"failed": 1})],
)
def test_pytest_plugin_fails_the_leaking_test_only_when_asked(
    pytester: pytest.Pytester, option: list[str], outcome: dict[str, int]
) -> None:
    pytester.makepyfile(test_leaky=LEAKY_TEST)
    result = pytester.runpytest_subprocess(*option)  # the plugin comes from its entry point
    result.assert_outcomes(**outcome)
    if option:
        result.stdout.fnmatch_lines(["*LeakError*made by teacher*"])


def test_a_weakref_callback_inside_the_lock_does_not_deadlock() -> None:
    # The collector may free a remembered tensor (and run _forget) while this thread is
    # inside _note's lock: the lock must be reentrant.
    import threading

    def forget_inside_the_lock() -> None:
        with _leaks.sentinel.lock:
            _leaks.sentinel.forget(-1, weakref.ref(torch.ones(1)))

    worker = threading.Thread(target=forget_inside_the_lock, daemon=True)
    worker.start()
    worker.join(timeout=10)
    assert not worker.is_alive()


def test_generator_values_name_the_call_that_made_them() -> None:
    @gradguard.infer(name="batches")
    def batches() -> Iterator[torch.Tensor]:
        yield nn.Linear(2, 2)(torch.ones(1, 2))

    first = next(batches())
    second_gen = batches()
    next(second_gen)
    assert _leaks.origin_of(first) == _leaks.Origin("batches", 1)


def test_frozen_training_modules_and_in_place_copies_are_not_leaks(teacher: nn.Module) -> None:
    frozen = nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.1)).train().requires_grad_(False)
    teacher_out = teacher(torch.randn(2, 4))
    buffer = torch.zeros(2, 4)
    with gradguard.watch_leaks(level="strict", action="raise"):
        frozen(teacher_out)  # nothing requires grad: no graph, no leak
        buffer.copy_(teacher_out)  # the usual way out of inference mode
        with gradguard.watch_leaks(level="off"):
            _ = nn.Linear(4, 4)(torch.ones(2, 4)) + teacher_out  # turned off inside


# --- inference tensors a guarded call leaves in its modules -------------------------------


class _LazyRotary(nn.Module):
    """Builds its cos/sin cache on the first forward, as many attention layers do."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not hasattr(self, "cos_cached"):
            self.register_buffer("cos_cached", torch.arange(4.0).cos(), persistent=False)
        return self.proj(x) * self.cos_cached


def test_a_cache_built_inside_a_call_warns_once_naming_the_call_and_the_buffer() -> None:
    model = nn.Sequential(_LazyRotary())
    guarded = gradguard.guard(model, name="decoder")
    with capture_events() as events, pytest.warns(gradguard.LeakWarning) as record:
        guarded(torch.ones(2, 4))
    assert record[0].filename == __file__
    message = str(record[0].message)
    assert "decoder (call 1)" in message
    assert "buffer '0.cos_cached'" in message
    assert "mode='no_grad'" in message
    (leak,) = [e for e in events if e["event"] == "gradguard.leak"]
    assert (leak["target"], leak["call"]) == ("decoder", 1)
    with warnings.catch_warnings():
        warnings.simplefilter("error", gradguard.LeakWarning)
        for _ in range(5):
            guarded(torch.ones(2, 4))  # nothing new: no more warnings
    assert [f.name for f in gradguard.check_module(model)] == ["0.cos_cached"]


def test_the_same_cache_built_under_no_grad_mode_is_no_leak() -> None:
    guarded = gradguard.guard(_LazyRotary(), mode="no_grad")
    with warnings.catch_warnings():
        warnings.simplefilter("error", gradguard.LeakWarning)
        guarded(torch.ones(2, 4))
    assert not gradguard.check_module(guarded)


def test_half_inside_a_later_call_is_found_within_a_power_of_two_calls() -> None:
    model = nn.Linear(3, 3)

    @gradguard.infer(name="convert")
    def convert(model: nn.Module, now: bool) -> None:
        if now:
            model.to(torch.float64)  # registers nothing: only a look at the tensors sees it

    with warnings.catch_warnings():
        warnings.simplefilter("error", gradguard.LeakWarning)
        for _ in range(4):  # calls 1-4
            convert(model, now=False)
        convert(model, now=True)  # call 5
        convert(model, now=False)  # 6
        convert(model, now=False)  # 7
    with pytest.warns(gradguard.LeakWarning, match=r"convert \(one of calls 5-7\), or code run"):
        convert(model, now=False)  # 8: the next look
    assert model.weight.is_inference()


def test_a_submodule_replaced_inside_a_call_is_named_by_its_path() -> None:
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2))

    @gradguard.infer(name="fuse")
    def fuse(model: nn.Sequential) -> None:
        model[1] = nn.Linear(4, 2)  # built under inference mode: its parameters too

    with pytest.warns(gradguard.LeakWarning) as record:
        fuse(model)
    assert "parameter '1.weight', parameter '1.bias'" in str(record[0].message)


def test_tensors_already_in_the_model_or_in_dropped_modules_are_not_this_calls() -> None:
    with torch.inference_mode():
        loaded = nn.Linear(2, 2)  # built under inference mode before any guarded call

    @gradguard.infer(name="predict")
    def predict(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        scratch = nn.Linear(2, 2)  # made and dropped inside the call
        return model(scratch(x))

    with warnings.catch_warnings():
        warnings.simplefilter("error", gradguard.LeakWarning)
        for _ in range(4):
            predict(loaded, torch.ones(1, 2))
    assert len(gradguard.check_module(loaded)) == 2  # check_module is the tool for those


def test_a_cache_built_in_a_scope_or_a_generator_is_found_too() -> None:
    model = _LazyRotary()
    with (
        pytest.warns(gradguard.LeakWarning, match=r"scope\.block \(call 1\)"),
        gradguard.scope(model, name="scope.block"),
    ):
        model(torch.ones(1, 4))

    @gradguard.infer(name="stream")
    def stream(model: nn.Module) -> Iterator[torch.Tensor]:
        yield model(torch.ones(1, 4))

    with pytest.warns(gradguard.LeakWarning, match=r"stream \(call 1\)"):
        list(stream(_LazyRotary()))


def test_module_leaks_raise_under_watch_leaks_raise_and_are_off_with_level_off() -> None:
    with (
        gradguard.watch_leaks(action="raise"),
        pytest.raises(gradguard.LeakError, match="left inference tensors"),
    ):
        gradguard.guard(_LazyRotary())(torch.ones(1, 4))
    gradguard.configure(leaks="off")
    with warnings.catch_warnings():
        warnings.simplefilter("error", gradguard.LeakWarning)
        gradguard.guard(_LazyRotary())(torch.ones(1, 4))


def test_a_module_about_to_train_with_an_inference_buffer_warns_before_torch_fails(
    teacher: nn.Module,
) -> None:
    model = _LazyRotary()
    with pytest.warns(gradguard.LeakWarning):
        gradguard.guard(model, name="rotary")(torch.ones(1, 4))
    teacher_out = teacher(torch.ones(1, 4))  # a gradguard-made tensor alive: watching
    model.train()
    with (
        pytest.warns(gradguard.LeakWarning, match="about to train") as record,
        pytest.raises(RuntimeError, match="Inference tensors cannot be saved"),
    ):
        model(teacher_out.clone().requires_grad_())
    message = str(record[0].message)
    assert "buffer 'cos_cached' of the _LazyRotary module" in message
    assert "left by rotary (call 1)" in message
    assert record[0].filename == __file__


def test_lazy_modules_work_with_targets_around_and_as_targets(teacher: nn.Module) -> None:
    lazy = nn.LazyLinear(3)  # its uninitialised parameters refuse most tensor methods
    # Initialised by a guarded call, its parameters are inference tensors: a true leak.
    with pytest.warns(gradguard.LeakWarning, match="parameter 'weight', parameter 'bias'"):
        assert gradguard.guard(nn.LazyLinear(3))(torch.ones(1, 2)).shape == (1, 3)
    teacher_out = teacher(torch.ones(1, 4))  # the boundary hook is in
    assert lazy(torch.ones(1, 2, requires_grad=True)).shape == (1, 3)
    del teacher_out


def test_models_loaded_under_inference_mode_are_not_blamed_on_a_call() -> None:
    @gradguard.infer(name="predict")
    def predict(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        return model(x)

    with torch.inference_mode():
        served = nn.Linear(2, 2)  # a serving model loaded under inference mode
    with warnings.catch_warnings():
        warnings.simplefilter("error", gradguard.LeakWarning)
        predict(nn.Linear(2, 2), torch.ones(1, 2))  # call 1, another model
        predict(served, torch.ones(1, 2))  # call 2: this model is new to the target
        guarded = gradguard.guard(nn.Linear(2, 2), name="serve")
        guarded(torch.ones(1, 2))  # call 1
        with torch.inference_mode():
            guarded.to(torch.float64)  # the user's own conversion, between calls
        guarded(torch.ones(1, 2, dtype=torch.float64))  # call 2: no call of it ran since


def test_inference_tensors_gradguard_did_not_make_are_left_to_check_module(
    teacher: nn.Module,
) -> None:
    class Positional(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            with torch.inference_mode():
                self.register_buffer("pe", torch.arange(4.0))  # a constant table

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x + self.pe  # an addition saves nothing for backward: torch is fine

    with torch.inference_mode():
        frozen = nn.Linear(4, 4)  # loaded under inference mode, never trained
    teacher_out = teacher(torch.ones(1, 4))  # the boundary hook is in
    with gradguard.watch_leaks(action="raise"):
        frozen(torch.ones(1, 4))
        Positional()(torch.ones(1, 4, requires_grad=True)).sum().backward()
    assert gradguard.check_module(frozen)
    del teacher_out


def test_a_collection_while_torch_copies_its_hooks_breaks_no_module_call(
    teacher: nn.Module,
) -> None:
    # A watched tensor that only a reference cycle holds dies in a collection, which
    # may run while Module.__call__ copies the global hooks: nothing may change them
    # then. Sweeping the collector's threshold makes it run at every point of a call.
    others = [
        nn.modules.module.register_module_forward_pre_hook(lambda m, a: None) for _ in range(5)
    ]
    identity, x = nn.Identity(), torch.ones(1)
    try:
        for threshold in range(1, 400):
            gc.collect(0)
            box: list[Any] = [teacher(torch.ones(1, 4))]
            box.append(box)
            del box
            gc.set_threshold(threshold)
            try:
                identity(x)  # raised 'OrderedDict mutated during iteration' once
            finally:
                gc.set_threshold(700)
    finally:
        for handle in others:
            handle.remove()
        gc.collect()


def test_a_leak_warning_made_an_error_by_a_filter_reaches_the_caller() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error", gradguard.LeakWarning)
        with pytest.raises(gradguard.LeakWarning, match="left inference tensors"):
            gradguard.guard(_LazyRotary(), name="strict.ci")(torch.ones(1, 4))


def test_a_cache_registered_between_looks_is_reported_once() -> None:
    model = nn.Sequential(nn.Linear(4, 4))

    @gradguard.infer(name="grow")
    def grow(model: nn.Module, now: bool) -> None:
        if now:
            model[0].register_buffer("cache", torch.ones(2))

    with capture_events() as events, warnings.catch_warnings():
        warnings.simplefilter("ignore", gradguard.LeakWarning)
        for now in (False, False, True, False, False, False, False, False):  # calls 1-8
            grow(model, now)
    leaks = [e for e in events if e["event"] == "gradguard.leak"]
    assert [(e["call"], e["receiver"]) for e in leaks] == [(3, "buffer '0.cache'")]


def test_a_loaded_module_swapped_in_is_not_blamed_on_the_call() -> None:
    with torch.inference_mode():
        head = nn.Linear(4, 2)  # loaded under inference mode, before the call
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2))

    @gradguard.infer(name="swap")
    def swap(model: nn.Sequential, head: nn.Module) -> None:
        model[1] = head

    with warnings.catch_warnings():
        warnings.simplefilter("error", gradguard.LeakWarning)
        swap(model, head)  # call 1: looked at before and after


def test_a_model_mended_outside_inference_mode_trains_without_a_warning(
    teacher: nn.Module,
) -> None:
    model = nn.Linear(4, 4)

    @gradguard.infer(name="convert")
    def convert(model: nn.Module) -> None:
        model.to(torch.float64)

    with pytest.warns(gradguard.LeakWarning):
        convert(model)
    model.to(torch.float32)  # outside inference mode: ordinary tensors again
    assert not gradguard.check_module(model)
    teacher_out = teacher(torch.ones(1, 4))
    with warnings.catch_warnings():
        warnings.simplefilter("error", gradguard.LeakWarning)
        model.train()(torch.ones(1, 4, requires_grad=True)).sum().backward()
    del teacher_out


def test_the_look_keeps_no_replaced_cache_alive() -> None:
    model = nn.Linear(2, 2)
    with torch.inference_mode():
        model.register_buffer("cache", torch.ones(2))  # there before the first call
    old = weakref.ref(model.cache)

    @gradguard.infer(name="steps")
    def steps(model: nn.Module) -> Iterator[None]:
        model.cache = torch.zeros(2)  # replaced inside the call (a registration)
        yield

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", gradguard.LeakWarning)
        running = steps(model)
        next(running)  # suspended inside call 1, looked at on the way in
        gc.collect()
        assert old() is None
        list(running)


@pytest.mark.filterwarnings("ignore:Using `torch.compile\\(module\\)` when there are global hooks")
def test_compiled_training_is_not_broken_up_and_its_leaks_are_caught(teacher: nn.Module) -> None:
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    student = torch.compile(nn.Sequential(nn.Linear(4, 4), nn.ReLU()), backend="eager")
    teacher_out = teacher(torch.ones(2, 4))  # the boundary hook is in while it lives
    for _ in range(2):
        student(teacher_out.clone()).sum().backward()
    assert not counters["graph_break"]  # the hook returns at once in traced code
    with (
        pytest.warns(gradguard.LeakWarning, match="made by teacher.*OptimizedModule"),
        pytest.raises(RuntimeError, match="Inference tensors cannot be saved"),
    ):
        student(teacher_out).sum().backward()
    del teacher_out
    torch._dynamo.reset()
