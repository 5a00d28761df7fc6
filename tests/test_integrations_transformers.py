"""gradguard around real Hugging Face transformers models: tiny GPT-2 and BERT from configs.

No downloads: every model is built from a small config, and so starts in training mode
(dropout on). References come from ``model.eval()`` under ``torch.inference_mode()``.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import gradguard
from gradguard.testing import capture_events, event_schema

transformers = pytest.importorskip(
    "transformers",
    reason="transformers is not installed; pip install -e '.[integrations]' (or '.[test]')",
)
jsonschema = pytest.importorskip("jsonschema", reason="jsonschema validates the event schema")

from transformers import (  # noqa: E402 - only once transformers is known to be there
    BertConfig,
    BertModel,
    GPT2Config,
    GPT2LMHeadModel,
    PreTrainedModel,
)
from transformers.modeling_outputs import (  # noqa: E402
    BaseModelOutputWithPoolingAndCrossAttentions,
    CausalLMOutputWithCrossAttentions,
)

VALIDATOR = jsonschema.Draft202012Validator(event_schema())
GREEDY = {"max_new_tokens": 6, "do_sample": False}


@pytest.fixture(autouse=True)
def _quiet_transformers() -> Iterator[None]:
    """No progress bars from save_pretrained/from_pretrained in the test output."""
    transformers.utils.logging.disable_progress_bar()
    yield
    transformers.utils.logging.enable_progress_bar()


def tiny_gpt2(seed: int = 0) -> GPT2LMHeadModel:
    torch.manual_seed(seed)
    config = GPT2Config(
        n_layer=2,
        n_embd=32,
        n_head=2,
        vocab_size=100,
        n_positions=64,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=2,
    )
    return GPT2LMHeadModel(config)  # built from a config: in training mode


def tiny_bert(seed: int = 0) -> BertModel:
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=100,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=37,
        max_position_embeddings=64,
        pad_token_id=0,
    )
    return BertModel(config)


def batch(seed: int = 1) -> dict[str, torch.Tensor]:
    """What a tokenizer returns for two sequences of six tokens (no special ids in them)."""
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(3, 100, (2, 6), generator=generator)
    return {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids)}


def training_flags(model: nn.Module) -> dict[str, bool]:
    return {name: module.training for name, module in model.named_modules()}


def reference(model: nn.Module, method: str, **kwargs: Any) -> Any:
    """``model.<method>(**kwargs)`` in eval under inference mode, then back to training."""
    model.eval()
    with torch.inference_mode():
        result = getattr(model, method)(**kwargs)
    model.train()
    return result


def valid(event: dict[str, Any]) -> dict[str, Any]:
    errors = [e.message for e in VALIDATOR.iter_errors(event)]
    assert not errors, (errors, event)
    return event


# --- the proxy is the model ---------------------------------------------------------------


def test_a_guarded_model_is_still_a_pretrained_model_with_its_config() -> None:
    model = tiny_gpt2()
    g = gradguard.guard(model, methods=("generate",))
    assert isinstance(g, PreTrainedModel)
    assert isinstance(g, GPT2LMHeadModel)
    assert g.config is model.config
    assert g.generation_config is model.generation_config
    assert g.get_input_embeddings() is model.transformer.wte
    assert gradguard.unguard(g) is model


# --- generate -----------------------------------------------------------------------------


def test_guarded_greedy_generate_equals_eval_under_inference_mode_and_restores_flags() -> None:
    model = tiny_gpt2()
    expected = reference(model, "generate", **batch(), **GREEDY)
    model.transformer.h[1].attn.attn_dropout.eval()  # one submodule the user froze
    before = training_flags(model)
    g = gradguard.guard(model, methods=("generate",))
    seen: list[tuple[bool, bool]] = []
    model.transformer.drop.register_forward_pre_hook(
        lambda m, a: seen.append((m.training, torch.is_inference_mode_enabled()))
    )
    with capture_events() as events:
        generated = g.generate(**batch(), **GREEDY)
    assert torch.equal(generated, expected)
    assert torch.equal(generated[:, :6], batch()["input_ids"]) and generated.shape[1] > 6
    assert seen and set(seen) == {(False, True)}  # every step ran in eval, in inference mode
    assert training_flags(model) == before  # PreTrainedModel.train() override and all
    assert model.training and not model.transformer.h[1].attn.attn_dropout.training
    assert torch.is_grad_enabled() and not torch.is_inference_mode_enabled()
    (event,) = events  # the forwards generate makes inside are the module's own: one event
    valid(event)
    assert event["target"] == "transformers.models.gpt2.modeling_gpt2:GPT2LMHeadModel.generate"
    assert (event["kind"], event["mode"], event["status"]) == ("module", "inference", "ok")
    assert event["eval_switched"] == sum(before.values())  # the frozen dropout was left alone
    assert gradguard.describe(g, "generate").calls == 1


def test_generate_inside_no_grad_leaves_grad_mode_off() -> None:
    g = gradguard.guard(tiny_gpt2(), methods=("generate",))
    with torch.no_grad():
        g.generate(**batch(), **GREEDY)
        assert not torch.is_grad_enabled() and not torch.is_inference_mode_enabled()
    assert g.training


def test_generate_outputs_are_remembered_inside_their_model_output() -> None:
    g = gradguard.guard(tiny_gpt2(), methods=("generate",), name="writer")
    out = g.generate(**batch(), **GREEDY, return_dict_in_generate=True, output_scores=True)
    assert out.sequences.is_inference()
    scores = out.scores[-1]  # a tuple of tensors inside the ModelOutput
    assert scores.is_inference()
    head = nn.Linear(100, 1)
    with (
        pytest.warns(gradguard.LeakWarning, match=r"made by writer\.generate \(call 1\)"),
        pytest.raises(RuntimeError, match="Inference tensors cannot be saved"),
    ):
        head(scores)


# --- save_pretrained / from_pretrained ----------------------------------------------------


def test_save_pretrained_through_the_guard_round_trips(tmp_path: Path) -> None:
    model = tiny_gpt2()
    g = gradguard.guard(model, methods=("generate",))
    g(**batch())  # a guarded call first: nothing of it may land in what is saved
    g.save_pretrained(tmp_path)
    loaded = GPT2LMHeadModel.from_pretrained(tmp_path)
    saved, back = model.state_dict(), loaded.state_dict()
    assert list(back) == list(saved)
    assert not any(key.startswith(("_self_", "__wrapped__")) for key in back)
    for key, value in saved.items():
        assert torch.equal(back[key], value), key
    assert not gradguard.check_module(g) and not gradguard.check_module(loaded)
    config = {k: v for k, v in loaded.config.to_dict().items() if k != "_name_or_path"}
    assert config == {k: v for k, v in model.config.to_dict().items() if k != "_name_or_path"}

    expected = reference(model, "generate", **batch(), **GREEDY)
    again = gradguard.guard(loaded.train(), methods=("generate",))  # from_pretrained gives eval
    assert torch.equal(again.generate(**batch(), **GREEDY), expected)
    assert loaded.training
    assert isinstance(again, GPT2LMHeadModel)


# --- ModelOutput results ------------------------------------------------------------------


def test_a_causal_lm_output_comes_back_as_itself_with_inference_tensors() -> None:
    model = tiny_gpt2()
    expected = reference(model, "__call__", **batch(), use_cache=False)
    g = gradguard.guard(model, name="teacher")
    with capture_events() as events:
        out = g(**batch(), use_cache=False)
    assert type(out) is CausalLMOutputWithCrossAttentions
    assert out.logits.is_inference()
    assert torch.equal(out.logits, expected.logits)
    assert not torch.equal(model(**batch(), use_cache=False).logits, expected.logits)  # dropout
    (event,) = events
    valid(event)
    assert (event["target"], event["kind"]) == ("teacher", "module")
    assert event["eval_switched"] == len(training_flags(model))


def test_bert_outputs_come_back_as_their_type_and_equal_the_eval_reference() -> None:
    model = tiny_bert()
    before = training_flags(model)
    expected = reference(model, "__call__", **batch())
    g = gradguard.guard(model)
    with capture_events() as events:
        out = g(**batch())
    assert type(out) is BaseModelOutputWithPoolingAndCrossAttentions
    assert torch.equal(out.last_hidden_state, expected.last_hidden_state)
    assert torch.equal(out.pooler_output, expected.pooler_output)
    assert out.last_hidden_state.is_inference() and out.pooler_output.is_inference()
    assert training_flags(model) == before
    (event,) = events
    valid(event)
    assert event["target"] == "transformers.models.bert.modeling_bert:BertModel"
    assert event["eval_switched"] == len(before)


@pytest.mark.parametrize("field", ["last_hidden_state", "pooler_output", "hidden_states"])
def test_a_frozen_bert_encoder_feeding_a_trained_head_names_the_encoder(field: str) -> None:
    encoder = gradguard.guard(tiny_bert(), name="encoder")
    out = encoder(**batch(), output_hidden_states=True)
    features = out[field][-1] if field == "hidden_states" else out[field]  # nested: a tuple
    head = nn.Linear(32, 2)  # trained on the encoder's features
    with (
        pytest.warns(gradguard.LeakWarning, match=r"made by encoder \(call 1\).*Linear module"),
        pytest.raises(RuntimeError, match="Inference tensors cannot be saved"),
    ):
        head(features)


def test_the_same_head_trains_on_features_of_a_guard_with_outputs_clone() -> None:
    encoder = gradguard.guard(tiny_bert(), name="encoder", outputs="clone")
    out = encoder(**batch())
    assert type(out) is BaseModelOutputWithPoolingAndCrossAttentions
    assert not out.last_hidden_state.is_inference()
    head = nn.Linear(32, 2)
    with warnings.catch_warnings():
        warnings.simplefilter("error", gradguard.LeakWarning)
        F.cross_entropy(head(out.pooler_output), torch.tensor([0, 1])).backward()
    assert head.weight.grad is not None


# --- distillation -------------------------------------------------------------------------

TEMPERATURE = 2.0


def distillation_step(
    student: GPT2LMHeadModel,
    teacher: nn.Module,
    optimizer: torch.optim.Optimizer,
    inputs: dict[str, torch.Tensor],
    fix: str = "",
) -> torch.Tensor:
    """One step as Hugging Face distillation code writes it (DistilBERT's ``distiller.py``):
    the student's LM loss, a KL term on softened distributions, and an MSE term on the
    logits through loss modules, with the teacher's logits as they come back."""
    teacher_logits = teacher(**inputs).logits
    if fix == "clone":
        teacher_logits = teacher_logits.clone()  # outside inference mode: an ordinary tensor
    student_out = student(**inputs, labels=inputs["input_ids"])
    kl = nn.KLDivLoss(reduction="batchmean")(
        F.log_softmax(student_out.logits / TEMPERATURE, dim=-1),
        F.softmax(teacher_logits / TEMPERATURE, dim=-1),  # a new, ordinary tensor: fine
    )
    mse = nn.MSELoss()(student_out.logits, teacher_logits)  # the teacher's own tensor
    loss = student_out.loss + kl * TEMPERATURE**2 + mse
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return loss.detach()


def test_a_distillation_step_with_the_teachers_logits_warns_naming_the_teacher() -> None:
    teacher = gradguard.guard(tiny_gpt2(seed=0), name="teacher")
    student = tiny_gpt2(seed=1)
    optimizer = torch.optim.AdamW(student.parameters(), lr=1e-3)
    with (
        capture_events() as events,
        pytest.warns(gradguard.LeakWarning) as record,
        pytest.raises(RuntimeError, match="Inference tensors cannot be saved"),
    ):
        distillation_step(student, teacher, optimizer, batch())
    message = str(record[0].message)
    assert "made by teacher (call 1)" in message
    assert "MSELoss module" in message
    assert "outputs='clone'" in message and "tensor.clone()" in message
    assert record[0].filename == __file__  # the user's line, not torch's or transformers'
    leaks = [e for e in events if e["event"] == "gradguard.leak"]
    assert [(e["target"], e["call"], e["receiver"]) for e in leaks] == [
        ("teacher", 1, "the MSELoss module")
    ]
    assert teacher.training  # the teacher built from its config is back in training mode


@pytest.mark.parametrize(
    ("fix", "options"),
    [("clone", {}), ("", {"outputs": "clone"}), ("", {"mode": "no_grad"})],
    ids=["tensor.clone()", "outputs='clone'", "mode='no_grad'"],
)
def test_the_fixes_the_warning_names_train_without_a_warning(
    fix: str, options: dict[str, Any]
) -> None:
    teacher = gradguard.guard(tiny_gpt2(seed=0), name="teacher", **options)
    student = tiny_gpt2(seed=1)
    optimizer = torch.optim.AdamW(student.parameters(), lr=1e-2)
    start = student.lm_head.weight.detach().clone()
    with warnings.catch_warnings():
        warnings.simplefilter("error", gradguard.LeakWarning)
        losses = [distillation_step(student, teacher, optimizer, batch(), fix) for _ in range(3)]
    assert all(torch.isfinite(loss) for loss in losses)
    assert not torch.equal(student.lm_head.weight, start)  # the student trained
    assert student.training and teacher.training


def test_strict_mode_also_catches_a_functional_loss_on_the_teachers_logits() -> None:
    teacher = gradguard.guard(tiny_gpt2(seed=0), name="teacher")
    student = tiny_gpt2(seed=1)
    teacher_logits = teacher(**batch()).logits
    student_logits = student(**batch()).logits
    with warnings.catch_warnings():
        warnings.simplefilter("error", gradguard.LeakWarning)
        with pytest.raises(RuntimeError, match="Inference tensors cannot be saved"):
            F.mse_loss(student_logits, teacher_logits)  # no module call: the boundary is silent
    with (
        gradguard.watch_leaks(level="strict", action="raise"),
        pytest.raises(gradguard.LeakError, match=r"made by teacher \(call 1\).*mse_loss"),
    ):
        F.mse_loss(student_logits, teacher_logits)


@pytest.mark.parametrize(
    "view",
    [
        lambda logits: logits[..., :-1, :],  # the causal shift
        lambda logits: logits.view(-1, logits.size(-1)),  # as loss code flattens
    ],
    ids=["shift", "flatten"],
)
def test_a_view_of_the_teachers_logits_names_the_teacher(view: Any) -> None:
    # Regression: a view taken outside inference mode is a new inference tensor that
    # torch does not link to its base; gradguard used to be silent about it.
    teacher = gradguard.guard(tiny_gpt2(seed=0), name="teacher")
    student = tiny_gpt2(seed=1)
    teacher_logits = teacher(**batch()).logits
    student_logits = student(**batch()).logits
    with (
        pytest.warns(gradguard.LeakWarning, match=r"made by teacher \(call 1\).*MSELoss"),
        pytest.raises(RuntimeError, match="Inference tensors cannot be saved"),
    ):
        nn.MSELoss()(view(student_logits), view(teacher_logits))
    with torch.inference_mode():
        own = torch.zeros_like(student_logits)  # the user's own: not gradguard's to name
    with warnings.catch_warnings():
        warnings.simplefilter("error", gradguard.LeakWarning)
        with pytest.raises(RuntimeError, match="Inference tensors cannot be saved"):
            nn.MSELoss()(view(student_logits), view(own))


# --- @gradguard.infer on functions taking a model -----------------------------------------


def test_infer_switches_a_bert_argument_to_eval_for_the_call() -> None:
    model = tiny_bert()
    expected = reference(model, "__call__", **batch())
    seen: list[tuple[bool, bool, bool]] = []

    @gradguard.infer
    def embed(model: BertModel, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        dropout = model.encoder.layer[0].output.dropout
        seen.append((model.training, dropout.training, torch.is_inference_mode_enabled()))
        return model(**inputs).pooler_output

    with capture_events() as events:
        pooled = embed(model, batch())
    assert seen == [(False, False, True)]
    assert torch.equal(pooled, expected.pooler_output)
    assert pooled.is_inference()
    assert model.training and model.encoder.layer[0].output.dropout.training
    (event,) = events
    valid(event)
    assert event["kind"] == "function" and event["eval_switched"] == len(training_flags(model))


# --- distillation idioms the leak sentinel must follow --------------------------------------


def test_detached_teacher_logits_given_by_keyword_name_the_teacher_in_torchs_error() -> None:
    teacher = gradguard.guard(tiny_gpt2(seed=0), name="teacher")
    student = tiny_gpt2(seed=1)
    soft = teacher(**batch()).logits.detach()  # the ModelOutput is dropped at once
    criterion = nn.MSELoss()
    with (
        pytest.warns(gradguard.LeakWarning, match=r"made by teacher \(call 1\) enters the MSEL"),
        pytest.raises(RuntimeError, match="Inference tensors cannot be saved") as caught,
    ):
        criterion(input=student(**batch()).logits, target=soft)
    assert "made by teacher (call 1)" in "\n".join(getattr(caught.value, "__notes__", []))


def test_kl_div_on_a_teachers_log_probs_with_log_target_trains_without_a_warning() -> None:
    teacher_model = tiny_gpt2(seed=0)
    student = tiny_gpt2(seed=1)

    @gradguard.infer(name="teacher_log_probs")
    def teacher_log_probs(inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        return F.log_softmax(teacher_model(**inputs).logits, dim=-1)

    optimizer = torch.optim.AdamW(student.parameters(), lr=1e-2)
    criterion = nn.KLDivLoss(reduction="batchmean", log_target=True)
    start = student.lm_head.weight.detach().clone()
    with warnings.catch_warnings():
        warnings.simplefilter("error", gradguard.LeakWarning)
        for _ in range(2):
            target = teacher_log_probs(batch())
            assert target.is_inference()
            loss = criterion(F.log_softmax(student(**batch()).logits, dim=-1), target)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    assert not torch.equal(student.lm_head.weight, start)
