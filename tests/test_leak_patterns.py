"""The leak sentinel on the code users write: distillation idioms, caches in attributes,
metric states, models built under inference mode, values left by a scope, keyword
arguments, and the legitimate uses that train fine."""

from __future__ import annotations

import gc
import pickle
import warnings
from collections.abc import Callable, Iterator

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import gradguard
from gradguard import _leaks
from gradguard._leaks import _reports


@pytest.fixture(autouse=True)
def _no_leak_state_left() -> Iterator[None]:
    yield
    gc.collect()
    nn.Identity()(torch.ones(1))  # the hooks leave at the first module call that finds none
    hooked = _leaks.sentinel.hooked()
    _leaks.reset()
    assert not hooked, "the hooks outlived the tensors they watch"


@pytest.fixture
def teacher() -> nn.Module:
    torch.manual_seed(0)
    return gradguard.guard(
        nn.Sequential(nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 6)), name="teacher"
    )


def notes(error: BaseException) -> str:
    return "\n".join(getattr(error, "__notes__", []))


# --- 1. provenance that outlives the returned tensor --------------------------------------


@pytest.mark.parametrize(
    "derive",
    [
        lambda out: out.detach(),
        lambda out: out.view(-1, 3),
        lambda out: out[:, :4],
        lambda out: out.reshape(2, -1),
        lambda out: out.T,
    ],
    ids=["detach", "view", "slice", "reshape", "T"],
)
def test_a_tensor_derived_from_a_dropped_output_still_names_the_teacher(
    teacher: nn.Module, derive: Callable[[torch.Tensor], torch.Tensor]
) -> None:
    x = torch.randn(2, 8)
    soft = derive(teacher(x))  # the output itself is not kept: only what derive made of it
    gc.collect()
    student = nn.Linear(soft.shape[-1], 1)
    with (
        pytest.warns(gradguard.LeakWarning, match=r"made by teacher \(call 1\) enters the Linear"),
        pytest.raises(RuntimeError, match="Inference tensors cannot be saved") as caught,
    ):
        student(soft)
    assert "made by teacher (call 1)" in notes(caught.value)  # in torch's own error too


def test_a_distillation_step_on_detached_soft_targets_names_the_teacher(
    teacher: nn.Module,
) -> None:
    student = nn.Sequential(nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 6))
    optimizer = torch.optim.SGD(student.parameters(), lr=0.1)
    x = torch.randn(4, 8)
    soft = teacher(x).detach()  # the most common idiom
    with pytest.raises(RuntimeError) as caught, warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        loss = F.mse_loss(student(x), soft)  # functional: no module receives it
        loss.backward()
        optimizer.step()
    assert "Inference tensors cannot be saved" in str(caught.value)
    assert not [w for w in seen if issubclass(w.category, gradguard.LeakWarning)]
    # Inside a watch_leaks block torch's error is named as it leaves the block.
    with (
        pytest.raises(gradguard.LeakError, match=r"made by teacher \(call 1\)") as raised,
        gradguard.watch_leaks(action="raise"),
    ):
        F.mse_loss(student(x), soft)
    assert raised.value.receiver == "code in a watch_leaks block"
    with (
        pytest.warns(gradguard.LeakWarning, match="made by teacher"),
        pytest.raises(RuntimeError),
        gradguard.watch_leaks(),
    ):
        F.mse_loss(student(x), soft)


# --- 6. keyword arguments -------------------------------------------------------------------


def test_keyword_arguments_to_a_loss_module_are_named_through_torchs_error(
    teacher: nn.Module,
) -> None:
    student = nn.Linear(8, 6)
    criterion = nn.MSELoss()
    x = torch.randn(3, 8)
    teacher_probs = teacher(x).softmax(-1)  # softmax outside inference mode: ordinary
    teacher_logits = teacher(x)
    with warnings.catch_warnings():
        warnings.simplefilter("error", gradguard.LeakWarning)
        criterion(input=student(x), target=teacher_probs).backward()  # ordinary: trains
    with (
        pytest.warns(gradguard.LeakWarning, match=r"teacher \(call 2\) enters the MSELoss") as w,
        pytest.raises(RuntimeError, match="Inference tensors cannot be saved") as caught,
    ):
        criterion(input=student(x), target=teacher_logits)
    assert w[0].filename == __file__
    assert "teacher (call 2)" in notes(caught.value)


# --- 7. no false positives ------------------------------------------------------------------


def test_kl_div_with_log_target_on_the_teachers_log_probs_trains_without_a_warning() -> None:
    teacher = gradguard.guard(nn.Sequential(nn.Linear(8, 6), nn.LogSoftmax(-1)), name="teacher")
    student = nn.Linear(8, 6)
    optimizer = torch.optim.SGD(student.parameters(), lr=0.1)
    criterion = nn.KLDivLoss(reduction="batchmean", log_target=True)
    start = student.weight.detach().clone()
    with warnings.catch_warnings():
        warnings.simplefilter("error", gradguard.LeakWarning)
        for _ in range(3):
            x = torch.randn(4, 8)
            log_probs = teacher(x)  # an inference tensor, and it trains fine
            loss = criterion(F.log_softmax(student(x), -1), log_probs)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    assert not torch.equal(student.weight, start)


def test_a_container_that_concatenates_the_teachers_features_trains_without_a_warning(
    teacher: nn.Module,
) -> None:
    class Fusion(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.scale = nn.Parameter(torch.ones(1))
            self.head = nn.Linear(14, 1)

        def forward(self, own: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
            return self.head(torch.cat([own * self.scale, features], -1))

    fusion = Fusion()
    with warnings.catch_warnings():
        warnings.simplefilter("error", gradguard.LeakWarning)
        fusion(torch.randn(2, 8), teacher(torch.randn(2, 8))).sum().backward()
    assert fusion.scale.grad is not None


def test_the_note_goes_into_the_message_where_python_shows_no_notes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(_reports, "_NOTES", False)  # Python 3.10
    error = RuntimeError("Inference tensors cannot be saved for backward.")
    _reports.attach_note(error, "gradguard: made by teacher (call 1)")
    assert str(error).splitlines() == [
        "Inference tensors cannot be saved for backward.",
        "gradguard: made by teacher (call 1)",
    ]


# --- 2. inference tensors left in plain attributes ------------------------------------------


class Rotary(nn.Module):
    """Caches cos/sin in plain attributes, as many rotary embeddings do."""

    def __init__(self) -> None:
        super().__init__()
        self._cos_cached: torch.Tensor | None = None
        self._sin_cached: torch.Tensor | None = None

    def forward(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self._cos_cached is None or self._cos_cached.shape[0] < n:
            angles = torch.arange(n, dtype=torch.float32)[:, None] * torch.ones(1, 4)
            self._cos_cached, self._sin_cached = angles.cos(), angles.sin()
        assert self._sin_cached is not None
        return self._cos_cached[:n], self._sin_cached[:n]


class Attention(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.q = nn.Linear(4, 4)
        self.rotary = Rotary()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        cos, sin = self.rotary(x.shape[0])
        q = self.q(x)
        return q * cos + q.flip(-1) * sin  # saves cos and sin for backward when q needs grad


def test_a_rotary_cache_in_a_plain_attribute_is_named_where_training_fails() -> None:
    model = Attention()
    guarded = gradguard.guard(model, name="decoder")
    with warnings.catch_warnings():
        warnings.simplefilter("error", gradguard.LeakWarning)  # a cache alone is no leak
        guarded(torch.ones(6, 4))
    assert model.rotary._cos_cached is not None and model.rotary._cos_cached.is_inference()
    model.train()
    with (
        pytest.warns(gradguard.LeakWarning, match=r"attribute 'rotary._cos_cached' left by dec"),
        pytest.raises(RuntimeError, match="Inference tensors cannot be saved") as caught,
    ):
        model(torch.ones(5, 4)).sum().backward()  # a slice of the cache: the same storage
    assert "decoder (call 1)" in notes(caught.value)
    assert "the Attention module" in notes(caught.value)


def test_a_cache_dict_attribute_is_named_one_level_in() -> None:
    class Cached(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.proj = nn.Linear(4, 4)
            self.cache: dict[str, torch.Tensor] = {}

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if "mask" not in self.cache:
                self.cache["mask"] = torch.ones(4) * 0.5  # built on the first call
            return self.proj(x) * self.cache["mask"]

    model = Cached()
    gradguard.guard(model, name="encoder")(torch.ones(1, 4))
    with pytest.raises(RuntimeError) as caught, warnings.catch_warnings():
        warnings.simplefilter("ignore", gradguard.LeakWarning)
        model(torch.ones(1, 4)).sum().backward()
    assert "attribute \"cache['mask']\" left by encoder (call 1)" in notes(caught.value)


def test_a_torchmetrics_state_reset_in_validation_is_named_in_the_next_training_step() -> None:
    torchmetrics = pytest.importorskip(
        "torchmetrics", reason="metric states come from torchmetrics"
    )

    class Module(nn.Module):  # a LightningModule's training step, as a forward
        def __init__(self) -> None:
            super().__init__()
            self.net = nn.Linear(4, 1)
            self.mean_loss = torchmetrics.MeanMetric()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            loss = self.net(x).mean()
            self.mean_loss.update(loss.detach())
            return loss

    module = Module()
    with gradguard.scope(module, name="validation"):  # Lightning's validation loop
        module(torch.ones(2, 4))
        module.mean_loss.compute()
        module.mean_loss.reset()  # setattr of fresh states, made under inference mode
    assert module.mean_loss.mean_value.is_inference()
    with (
        pytest.warns(gradguard.LeakWarning, match=r"attribute 'mean_loss.mean_value'"),
        pytest.raises(RuntimeError, match="Inplace update to inference tensor") as caught,
    ):
        module(torch.ones(2, 4)).backward()  # the next training step
    assert "validation (call 1)" in notes(caught.value)


def test_a_model_first_seen_at_a_later_look_is_not_blamed_for_what_it_held() -> None:
    @gradguard.infer(name="predict")
    def predict(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        return model(x)

    with torch.inference_mode():
        served = nn.Linear(2, 2)  # loaded under inference mode, before any call
        served.cache = served.weight * 2  # and a plain attribute made of it
    assert served.cache.is_inference()
    with warnings.catch_warnings():
        warnings.simplefilter("error", gradguard.LeakWarning)
        for _ in range(3):
            predict(nn.Linear(2, 2), torch.ones(1, 2))  # calls 1-3, other models
        predict(served, torch.ones(1, 2))  # call 4: looked at, for the first time
    assert _leaks.origin_of(served.weight) is None
    assert _leaks.origin_of(served.cache) is None


def test_a_memory_bank_filled_in_a_guarded_call_is_named_when_training_writes_into_it() -> None:
    class Queue(nn.Module):
        """A MoCo-style bank of keys, kept in a plain attribute and written in place."""

        def __init__(self) -> None:
            super().__init__()
            self.encoder = nn.Linear(4, 4)
            self.bank: torch.Tensor | None = None

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            keys = self.encoder(x)
            if self.bank is None:
                self.bank = torch.zeros(8, 4)
            self.bank[: keys.shape[0]] = keys.detach()  # in place, as the bank is updated
            return keys

    model = Queue()
    with gradguard.scope(model, name="warmup"):  # the bank is made under inference mode
        model(torch.ones(2, 4))
    with (
        pytest.warns(gradguard.LeakWarning, match=r"attribute 'bank' left by warmup \(call 1\)"),
        pytest.raises(RuntimeError, match="Inplace update to inference tensor") as caught,
    ):
        model(torch.ones(2, 4))  # the first training step
    assert "it is updated in place outside inference mode" in notes(caught.value)


# --- 3. a model built inside a guarded call -------------------------------------------------


def test_a_model_built_and_returned_by_a_guarded_loader_warns_naming_the_loader() -> None:
    @gradguard.infer(name="load_backbone")
    def load_backbone() -> nn.Module:
        return nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))

    with pytest.warns(gradguard.LeakWarning, match=r"load_backbone \(call 1\) left") as record:
        model = load_backbone()
    message = str(record[0].message)
    assert "modules it built" in message and "parameter '0.weight'" in message
    assert record[0].filename == __file__
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with (
        pytest.warns(
            gradguard.LeakWarning,
            match=r"load_backbone \(call 1\), and the module is about to train",
        ),
        pytest.raises(RuntimeError, match="Inference tensors cannot be saved"),
    ):
        model(torch.ones(1, 4, requires_grad=True)).sum().backward()
    del optimizer


def test_a_model_built_and_stored_by_a_guarded_method_warns_naming_the_call() -> None:
    class Pipeline:  # a plain object, no module arguments
        model: nn.Module

        @gradguard.infer(name="Pipeline.setup")
        def setup(self) -> None:
            self.model = nn.Linear(3, 3)

    pipeline = Pipeline()
    with pytest.warns(gradguard.LeakWarning, match=r"Pipeline.setup \(call 1\) left") as record:
        pipeline.setup()
    assert "parameter 'Linear.weight'" in str(record[0].message)


# --- 4. values made inside a scope block ----------------------------------------------------


def test_a_loss_accumulated_in_a_scope_and_used_afterwards_is_named() -> None:
    model = nn.Linear(4, 1)
    head = nn.Linear(1, 1)
    total = torch.zeros(())
    losses: list[torch.Tensor] = []
    with gradguard.scope(model, name="eval_loop"):
        for _ in range(3):
            loss = model(torch.ones(2, 4)).mean()
            total = total + loss
            losses.append(loss)
    assert _leaks.origin_of(total) == _leaks.Origin("eval_loop", 1, "local 'total'")
    assert _leaks.origin_of(losses[0]) == _leaks.Origin("eval_loop", 1, "local 'losses'")
    with (
        pytest.warns(gradguard.LeakWarning, match=r"local 'total' left by eval_loop \(call 1\)"),
        pytest.raises(RuntimeError, match="Inference tensors cannot be saved"),
    ):
        head(total.view(1, 1))


def test_values_there_before_the_scope_are_not_the_scopes() -> None:
    with torch.inference_mode():
        mine = torch.ones(2)  # the user's own, made before the block
    kept = [mine]
    with gradguard.scope(nn.Linear(2, 2), name="block"):
        other = mine  # rebound to a tensor that existed before: not made here either
    assert _leaks.origin_of(mine) is _leaks.origin_of(kept[0])
    assert other is mine


# --- 5. strict mode sees every in-place update ----------------------------------------------


@pytest.mark.parametrize(
    ("update", "name"),
    [
        (lambda t: t.__setitem__(0, 1.0), "__setitem__"),
        (lambda t: t.__iadd__(1.0), "add_"),
        (lambda t: t.__imul__(2.0), "mul_"),
    ],
    ids=["setitem", "iadd", "imul"],
)
def test_strict_sees_dunder_in_place_updates(
    teacher: nn.Module, update: Callable[[torch.Tensor], object], name: str
) -> None:
    cache = teacher(torch.randn(2, 8))
    with (
        gradguard.watch_leaks(level="strict", action="raise"),
        pytest.raises(gradguard.LeakError, match=f"updated in place by torch operation {name}"),
    ):
        update(cache)


def test_is_in_place_knows_the_dunder_forms() -> None:
    from gradguard._leaks._strict import is_in_place

    assert [is_in_place(n) for n in ("__setitem__", "__iadd__", "add_", "add", "__add__")] == [
        True,
        True,
        True,
        False,
        False,
    ]


# --- 8. LeakError carries data --------------------------------------------------------------


def test_leak_error_carries_target_call_and_receiver_and_pickles() -> None:
    error = gradguard.LeakError("gradguard: made by t", target="t", call=3, receiver="the X module")
    assert isinstance(error, gradguard.GradguardError) and isinstance(error, RuntimeError)
    assert error.args == ("gradguard: made by t",) and str(error) == "gradguard: made by t"
    back = pickle.loads(pickle.dumps(error))
    assert (type(back), str(back), back.target, back.call, back.receiver) == (
        gradguard.LeakError,
        "gradguard: made by t",
        "t",
        3,
        "the X module",
    )
    assert "GradguardError" in gradguard.__all__
