"""Hugging Face generate(), guarded: eval and inference mode for the call, flags restored.

A transformers model built from a config (or fine-tuned, then handed to generation code)
is in training mode: dropout on. ``gradguard.guard(model, methods=("generate",))`` makes
``generate`` run in eval under ``torch.inference_mode()`` and puts every flag back after,
while the proxy stays the model for everything else (``isinstance``, ``config``,
``save_pretrained``). This builds a tiny GPT-2 from a config (no download), shows that
guarded greedy generation equals the ``model.eval()`` + ``torch.inference_mode()``
reference, that the model is back in training mode, and the event gradguard logged.

Run: python examples/transformers_generate.py
(needs transformers: ``pip install -e ".[examples]"``; under a minute on two CPU cores)
"""

from __future__ import annotations

import torch

try:
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedModel
except ImportError:
    raise SystemExit(
        'this example needs transformers: pip install -e ".[examples]" (from the repository root)'
    ) from None

import gradguard
from gradguard.testing import capture_events


def modes() -> str:
    return f"grad={torch.is_grad_enabled()} inference_mode={torch.is_inference_mode_enabled()}"


torch.manual_seed(0)
config = GPT2Config(
    n_layer=2,
    n_embd=32,
    n_head=2,
    vocab_size=100,
    n_positions=64,
    bos_token_id=0,
    eos_token_id=1,
    pad_token_id=2,  # not the eos id, so generate needs no warning about the mask
)
model = GPT2LMHeadModel(config)  # built from a config: in training mode, dropout on
input_ids = torch.tensor([[5, 17, 42, 8], [61, 3, 29, 77]])
inputs = {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids)}
greedy = {"max_new_tokens": 8, "do_sample": False}
print(f"tiny GPT-2 from a config: {config.n_layer} layers, training={model.training}")

# The reference: what careful code writes by hand, and must remember to undo.
model.eval()
with torch.inference_mode():
    expected = model.generate(**inputs, **greedy)
model.train()

guarded = gradguard.guard(model, methods=("generate",), name="tiny-gpt2")
print(
    f"still a PreTrainedModel: {isinstance(guarded, PreTrainedModel)}, "
    f"same config: {guarded.config is model.config}"
)

seen = []  # what the model's first dropout sees at each forward inside generate
model.transformer.drop.register_forward_pre_hook(
    lambda module, args: seen.append((module.training, torch.is_inference_mode_enabled()))
)
with capture_events() as events:  # in an application they go to structlog, or a file
    generated = guarded.generate(**inputs, **greedy)

print(f"guarded greedy generate equals eval + inference_mode: {torch.equal(generated, expected)}")
print(f"generated ids: {generated[0].tolist()}")
in_eval = not any(training for training, _ in seen)
in_inference = all(inference for _, inference in seen)
print(
    f"inside generate: {len(seen)} forwards, in eval: {in_eval}, in inference_mode: {in_inference}"
)
print(f"after generate: training={model.training} {modes()}")
print(f"the output is an inference tensor: {generated.is_inference()}")

print(f"events logged: {len(events)}")
for event in events:
    print(
        f"  {event['event']} target={event['target']} kind={event['kind']} "
        f"mode={event['mode']} status={event['status']} eval_switched={event['eval_switched']} "
        f"wall_ms={event['wall_ms']:.1f}"
    )
info = gradguard.describe(guarded, "generate")
print(f"describe: {info.name} mode={info.mode} calls={info.calls}")
