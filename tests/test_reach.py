"""modules="auto" reaches the models a function's code names, wherever they live.

Every shape of inference code: a global (also rebound after decoration), a closure, a
default argument, an attribute of a plain object (a predictor class, a Hugging Face
pipeline), a dict or list of models, a FastAPI-style handler. Inside the call every module
is in eval, afterwards every flag is back, and the result is what ``model.eval()`` under
``torch.inference_mode()`` gives.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import torch
from torch import nn

import gradguard
from gradguard import _eval, _reach


def make_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 8), nn.Dropout(0.5), nn.Linear(8, 2))  # training mode


def flags(model: nn.Module) -> list[bool]:
    return [m.training for m in model.modules()]


def reference(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    before = [(m, m.training) for m in model.modules()]
    model.eval()
    with torch.inference_mode():
        out = model(x)
    for module, flag in before:
        module.training = flag
    return out


X = torch.randn(3, 4)
MODEL = make_model()
SEEN: list[list[bool]] = []


@pytest.fixture(autouse=True)
def _no_eval_warning() -> Iterator[None]:
    """Statically reachable models need no run-time net: no EvalWarning for them."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", gradguard.EvalWarning)
        yield
    assert _eval.registry.idle()


def check(fn: Callable[[], torch.Tensor], *models: nn.Module) -> None:
    """Run ``fn`` twice (a watched call, then an unwatched one) and check each model."""
    befores = [flags(m) for m in models]
    for _ in range(3):
        SEEN.clear()
        out = fn()
        assert SEEN, "the model did not run"
        assert all(not any(seen) for seen in SEEN), SEEN
        assert [flags(m) for m in models] == befores
    assert torch.equal(out, reference(models[0], X))


def spy(model: nn.Module) -> nn.Module:
    def hook(module: nn.Module, args: Any) -> None:
        SEEN.append(flags(module))

    model.register_forward_pre_hook(hook)
    return model


spy(MODEL)


@gradguard.infer
def predict_global(x: torch.Tensor) -> torch.Tensor:
    return MODEL(x)


def test_global_model() -> None:
    check(lambda: predict_global(X), MODEL)
    assert predict_global(X).is_inference()


def test_global_model_in_a_nested_function_lambda_and_comprehension() -> None:
    @gradguard.infer
    def predict(x: torch.Tensor) -> torch.Tensor:
        def inner() -> torch.Tensor:
            return (lambda: [MODEL(row) for row in x.unsqueeze(1)])()[0]

        return torch.cat([inner(), MODEL(x[1:])])

    befores = flags(MODEL)
    SEEN.clear()
    out = predict(X)
    assert SEEN and all(not any(s) for s in SEEN)
    assert flags(MODEL) == befores
    assert torch.allclose(out, reference(MODEL, X))  # row by row: rounding may differ


REBOUND = make_model(1)


@gradguard.infer
def predict_rebound(x: torch.Tensor) -> torch.Tensor:
    return REBOUND(x)


def test_rebound_global_is_read_at_call_time() -> None:
    global REBOUND
    first = REBOUND
    check(lambda: predict_rebound(X), spy(first))
    REBOUND = spy(make_model(2))  # a new model loaded after decoration
    try:
        check(lambda: predict_rebound(X), REBOUND)
        assert first.training and REBOUND.training
    finally:
        REBOUND = first


LATER: nn.Module | None = None


@gradguard.infer
def predict_later(x: torch.Tensor) -> torch.Tensor:
    assert LATER is not None
    return LATER(x)


def test_global_defined_after_decoration() -> None:
    global LATER
    LATER = spy(make_model(3))
    try:
        check(lambda: predict_later(X), LATER)
    finally:
        LATER = None


def test_closure() -> None:
    model = spy(make_model(4))

    @gradguard.infer
    def predict(x: torch.Tensor) -> torch.Tensor:
        return model(x)

    check(lambda: predict(X), model)


def test_default_argument_and_keyword_only_default() -> None:
    model = spy(make_model(5))
    other = spy(make_model(6))

    @gradguard.infer
    def predict(x: torch.Tensor, m: nn.Module = model, *, o: nn.Module = other) -> torch.Tensor:
        return m(x) + o(x) * 0

    check(lambda: predict(X), model, other)


class Predictor:
    """The common shape: a plain class holding its model."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.labels = ["neg", "pos"]

    @gradguard.infer
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


class SlottedPredictor:
    __slots__ = ("model",)

    def __init__(self, model: nn.Module) -> None:
        self.model = model


def test_attribute_of_self_and_of_a_global_object() -> None:
    model = spy(make_model(7))
    predictor = Predictor(model)
    check(lambda: predictor.predict(X), model)

    @gradguard.infer
    def handler(x: torch.Tensor) -> torch.Tensor:
        return predictor(x)

    check(lambda: handler(X), model)


def test_slots_attribute() -> None:
    model = spy(make_model(8))
    holder = SlottedPredictor(model)

    @gradguard.infer
    def predict(x: torch.Tensor) -> torch.Tensor:
        return holder.model(x)

    check(lambda: predict(X), model)


def test_argument_object_dict_and_list_of_models() -> None:
    a, b = spy(make_model(9)), spy(make_model(10))

    @gradguard.infer
    def predict(things: Any, x: torch.Tensor) -> torch.Tensor:
        if isinstance(things, dict):
            return things["a"](x) + things["b"](x) * 0
        if isinstance(things, (list, tuple)):
            return things[0](x) + things[1](x) * 0
        return things.model(x)

    check(lambda: predict({"a": a, "b": b}, X), a, b)
    check(lambda: predict([a, b], X), a, b)
    check(lambda: predict((a, b), X), a, b)
    check(lambda: predict(Predictor(a), X), a)


MODELS = {"en": make_model(11), "de": make_model(12)}
for _m in MODELS.values():
    spy(_m)


def test_global_dict_of_models() -> None:
    @gradguard.infer
    def predict(x: torch.Tensor, lang: str = "en") -> torch.Tensor:
        return MODELS[lang](x)

    check(lambda: predict(X), MODELS["en"], MODELS["de"])


APP_MODEL = spy(make_model(13))


def handle_request(payload: dict[str, list[list[float]]]) -> dict[str, list[int]]:
    """A FastAPI-style handler: a plain function, a global model, JSON in and out."""
    x = torch.tensor(payload["inputs"])
    return {"labels": APP_MODEL(x).argmax(-1).tolist()}


def test_fastapi_style_handler_with_a_global_model() -> None:
    guarded = gradguard.infer(handle_request)
    payload = {"inputs": X.tolist()}
    before = flags(APP_MODEL)
    SEEN.clear()
    result = guarded(payload)
    assert SEEN and not any(SEEN[0])
    assert flags(APP_MODEL) == before
    expected = reference(APP_MODEL, torch.tensor(payload["inputs"])).argmax(-1).tolist()
    assert result == {"labels": expected}


def test_guarded_model_held_in_a_global_is_switched_through_its_proxy() -> None:
    model = spy(make_model(14))
    guarded_model = gradguard.guard(model)

    @gradguard.infer
    def predict(x: torch.Tensor) -> torch.Tensor:
        return guarded_model(x)

    check(lambda: predict(X), model)


def test_describe_lists_the_modules_found_and_how() -> None:
    model = make_model(15)
    predictor = Predictor(model)

    @gradguard.infer
    def predict(x: torch.Tensor, extra: nn.Module) -> torch.Tensor:
        return MODEL(x) + predictor(x) * 0 + extra(x) * 0

    extra = make_model(16)
    predict(X, extra)
    found = {how: m for m, how in gradguard.describe(predict).modules}
    assert found["global 'MODEL'"] is MODEL
    assert found["attribute 'predictor.model' (closure)"] is model
    assert found["argument 'extra'"] is extra


class CountingList(list):  # type: ignore[type-arg]
    reads = 0

    def __getitem__(self, index: Any) -> Any:
        CountingList.reads += 1
        return super().__getitem__(index)

    def __iter__(self) -> Iterator[Any]:
        CountingList.reads += 1_000_000
        return super().__iter__()


def test_a_big_batch_list_costs_one_look_at_its_first_item() -> None:
    model = spy(make_model(17))
    batch = CountingList(["some text"] * 10_000)

    @gradguard.infer
    def predict(texts: list[str], x: torch.Tensor) -> torch.Tensor:
        return model(x)

    gradguard.configure(enabled=False)  # events look at the arguments on their own
    CountingList.reads = 0
    predict(batch, X)  # watched by the net: looked at twice, once for describe()
    assert CountingList.reads == 2  # the first item, never a walk
    predict(batch, X)
    CountingList.reads = 0
    predict(batch, X)  # the third call is not watched
    assert CountingList.reads == 1


def test_the_walk_inside_a_container_is_bounded() -> None:
    found: list[nn.Module] = []
    models = {f"m{i}": nn.Linear(1, 1) for i in range(_reach.ITEMS + 10)}
    _reach.look(found, models)
    assert len(found) == _reach.ITEMS


def test_strings_tensors_numbers_and_functions_are_skipped_by_type() -> None:
    found: list[nn.Module] = []
    for value in ("text", b"bytes", 3, 2.5, None, torch.ones(2), print, len, torch, int):
        _reach.look(found, value)
    assert found == []


def test_imported_modules_and_functions_are_not_looked_up_per_call() -> None:
    def predict(x: torch.Tensor) -> torch.Tensor:
        return torch.relu(reference(MODEL, x)) + len(SEEN)

    reach = _reach.reach_of(predict)
    assert reach is not None
    assert reach.names == ("MODEL", "SEEN")  # torch, reference, len: code, not data


def test_eval_false_switches_nothing_found_statically() -> None:
    model = spy(make_model(18))

    @gradguard.infer(eval=False)
    def predict(x: torch.Tensor) -> torch.Tensor:
        return model(x)

    SEEN.clear()
    predict(X)
    assert SEEN == [[True, True, True, True]]


@pytest.fixture
def tiny_pipeline(tmp_path: Any) -> Any:
    tf = pytest.importorskip(
        "transformers", reason="transformers is not installed; pip install -e '.[test]'"
    )
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "hello", "world", "good", "bad"]
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(words + [f"w{i}" for i in range(40)]) + "\n")
    tokenizer = tf.BertTokenizer(vocab_file=str(vocab))
    torch.manual_seed(0)
    config = tf.BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=37,
        max_position_embeddings=64,
        hidden_dropout_prob=0.5,
        attention_probs_dropout_prob=0.5,
    )
    model = tf.BertForSequenceClassification(config)  # built from a config: training mode
    return tf.pipeline("text-classification", model=model, tokenizer=tokenizer, device="cpu")


def test_hugging_face_pipeline_in_a_global_object(tiny_pipeline: Any) -> None:
    pipe = tiny_pipeline
    model = pipe.model
    assert model.training
    seen: list[bool] = []
    model.register_forward_pre_hook(lambda m, a: seen.append(any(flags(m))))

    @gradguard.infer
    def classify(text: str) -> Any:
        return pipe(text)

    before = flags(model)
    results = [classify("hello world good") for _ in range(3)]
    assert seen == [False, False, False]
    assert flags(model) == before
    model.eval()
    with torch.inference_mode():
        expected = pipe("hello world good")
    model.train()
    assert results == [expected] * 3
    assert {how for m, how in gradguard.describe(classify).modules if m is model} == {
        "attribute 'pipe.model' (closure)"
    }


class Translator:
    """A predictor holding a dict of models, a vocabulary and a tokenizer-like object."""

    def __init__(self, models: dict[str, nn.Module]) -> None:
        self.models = models
        self.vocab = {f"word{i}": i for i in range(30_000)}
        self.labels = ["negative", "positive"]
        self.tokenizer = Tokenizer()

    @gradguard.infer
    def predict(self, lang: str, x: torch.Tensor) -> torch.Tensor:
        return self.models[lang](x)


class Tokenizer:
    def __init__(self) -> None:
        self.lowercase = True
        self.special = {"[CLS]": 0}


class Service:
    """A service holding a pipeline-like object that holds the model: ``self.pipe.model``."""

    def __init__(self, model: nn.Module) -> None:
        self.pipe = Predictor(model)

    @gradguard.infer
    def run(self, x: torch.Tensor) -> torch.Tensor:
        return self.pipe.model(x)


def test_models_two_levels_below_self_run_in_eval_from_the_first_call() -> None:
    """``self.models[lang]`` and ``self.pipe.model``: each model is in eval whichever call
    first runs it (the net watches only calls 1, 2, 4, 8…; this is the static look)."""
    models = {lang: spy(make_model(20 + i)) for i, lang in enumerate(("en", "de", "fr"))}
    translator = Translator(models)
    befores = {lang: flags(m) for lang, m in models.items()}
    for lang in ("en", "en", "de", "en", "fr", "de", "fr"):  # de first on call 3, fr on 5
        SEEN.clear()
        out = translator.predict(lang, X)
        assert SEEN and not any(any(seen) for seen in SEEN), (lang, SEEN)
        assert torch.equal(out, reference(models[lang], X))
    assert {lang: flags(m) for lang, m in models.items()} == befores
    how = {h for _, h in gradguard.describe(Translator.predict).modules}
    assert how == {f"item \"self.models['{lang}']\"" for lang in ("en", "de", "fr")}

    model = spy(make_model(30))
    service = Service(model)
    check(lambda: service.run(X), model)
    assert [h for _, h in gradguard.describe(Service.run).modules] == [
        "attribute 'self.pipe.model'"
    ]


def test_below_self_a_vocabulary_costs_one_look_and_a_barren_class_stops_being_looked_at(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _reach.forget_barren()
    translator = Translator({"en": make_model(40)})
    looked: list[Any] = []
    real = _reach.look

    def counting(found: list[nn.Module], value: Any, *args: Any, **kwargs: Any) -> None:
        looked.append(value)
        real(found, value, *args, **kwargs)

    monkeypatch.setattr(_reach, "look", counting)
    for _ in range(_reach.BARREN + 5):
        found: list[nn.Module] = []
        _reach.look(found, translator, deep=True)
        assert found == [translator.models["en"]]
    inside = [v for v in looked if v is not translator]
    assert translator.vocab not in inside  # its first value is an int: skipped on it
    assert translator.labels not in inside
    assert sum(v is translator.tokenizer for v in inside) == _reach.BARREN
    assert sum(v is translator.models for v in inside) == _reach.BARREN + 5


def test_a_barren_class_that_later_holds_a_model_is_found_again() -> None:
    """A holder filled lazily (``self.slot.model = load()`` on some later call) is found
    within RELOOK looks, and looked into every time from then on."""
    _reach.forget_barren()

    class Slot:
        def __init__(self) -> None:
            self.model: nn.Module | None = None

    class Holder:
        def __init__(self) -> None:
            self.slot = Slot()

    holder = Holder()
    for _ in range(_reach.BARREN):
        found: list[nn.Module] = []
        _reach.look(found, holder, deep=True)
        assert found == []
    model = make_model(50)
    holder.slot.model = model
    calls = 0
    found = []
    while not found:
        calls += 1
        _reach.look(found, holder, deep=True)
    assert found == [model] and calls <= _reach.RELOOK
    for _ in range(3):  # not barren any more
        found = []
        _reach.look(found, holder, deep=True)
        assert found == [model]
