"""``gradguard.scan()`` around real training and generation loops: no finding where the
code is right, the finding where it is not."""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import gradguard

pytestmark = [
    # torch's note that a global hook (the scan's) also fires for the compiled wrapper.
    pytest.mark.filterwarnings(
        r"ignore:Using `torch.compile\(module\)` when there are global hooks"
    ),
    # Lightning's own use of a torch pytree API that torch has deprecated: not ours to fix.
    pytest.mark.filterwarnings(r"ignore:`isinstance\(treespec, LeafSpec\)`"),
]


def test_no_finding_for_lightning_fit_with_validation() -> None:
    L = pytest.importorskip(
        "lightning",
        reason="lightning is not installed; pip install -e '.[integrations]' (or '.[test]')",
    )

    class Net(L.LightningModule):  # type: ignore[misc,name-defined]
        def __init__(self) -> None:
            super().__init__()
            self.body = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Dropout(0.5))
            self.head = nn.Linear(8, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(self.body(x))  # type: ignore[no-any-return]

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            x, y = batch
            return F.cross_entropy(self(x), y)

        def validation_step(self, batch: Any, batch_idx: int) -> None:
            x, y = batch
            self.log("val_loss", F.cross_entropy(self(x), y))

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.SGD(self.parameters(), lr=0.1)

    generator = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn(12, 4, generator=generator), torch.arange(12) % 2)
    trainer = L.Trainer(
        accelerator="cpu",
        max_epochs=2,
        logger=False,
        enable_progress_bar=False,
        enable_checkpointing=False,
        enable_model_summary=False,
    )
    model = Net()
    with gradguard.scan() as findings:
        trainer.fit(model, DataLoader(data, batch_size=4), DataLoader(data, batch_size=4))
    assert trainer.global_step == 6  # it trained
    assert not findings, str(findings)


def _tiny_gpt2() -> Any:
    transformers = pytest.importorskip(
        "transformers",
        reason="transformers is not installed; pip install -e '.[integrations]' (or '.[test]')",
    )
    torch.manual_seed(0)
    config = transformers.GPT2Config(
        n_layer=2, n_embd=32, n_head=2, vocab_size=100, n_positions=64,
        bos_token_id=0, eos_token_id=1, pad_token_id=2,
    )  # fmt: skip
    return transformers.GPT2LMHeadModel(config)


def test_no_finding_for_hugging_face_generate_on_a_model_in_eval() -> None:
    model = _tiny_gpt2().eval()  # from_pretrained returns it in eval
    input_ids = torch.randint(3, 100, (2, 6), generator=torch.Generator().manual_seed(1))
    with gradguard.scan() as findings:
        out = model.generate(
            input_ids=input_ids, attention_mask=torch.ones_like(input_ids),
            max_new_tokens=4, do_sample=False,
        )  # fmt: skip
    assert out.shape == (2, 10)
    assert not findings, str(findings)


def test_a_hugging_face_forward_without_no_grad_is_found() -> None:
    model = _tiny_gpt2().eval()
    input_ids = torch.randint(3, 100, (2, 6), generator=torch.Generator().manual_seed(1))
    with gradguard.scan() as findings:
        logits = model(input_ids=input_ids).logits
        del logits
    (finding,) = findings
    assert finding.kind == "graph_unused"
    assert finding.module == "transformers.models.gpt2.modeling_gpt2.GPT2LMHeadModel"
    assert finding.where.startswith("tests/test_scan_integrations.py:")
    # The attention, MLP and layer-norm activations of 2 x 6 tokens; input_ids (given by
    # keyword) and the weights are not counted.
    assert 10_000 < finding.bytes_max < 1_000_000


def test_no_finding_for_a_compiled_training_step() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2))
    compiled = torch.compile(model, backend="aot_eager")
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    x = torch.randn(4, 8)
    with gradguard.scan() as findings:
        for _ in range(2):
            loss = compiled(x).square().mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        del loss
    assert model[0].weight.grad is not None
    assert not findings, str(findings)


def test_a_compiled_module_called_without_no_grad_is_found_under_its_own_name() -> None:
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2))
    compiled = torch.compile(model, backend="aot_eager")
    with gradguard.scan() as findings:
        compiled(torch.randn(4, 8))
    assert [(f.kind, f.module) for f in findings] == [
        ("graph_unused", "torch.nn.modules.container.Sequential")
    ]


@pytest.mark.slow
def test_no_finding_for_a_training_step_compiled_with_inductor() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2))
    compiled = torch.compile(model)
    x = torch.randn(4, 8)
    expected = torch.autograd.grad(model(x).square().mean(), list(model.parameters()))
    with gradguard.scan() as findings:
        got = torch.autograd.grad(compiled(x).square().mean(), list(model.parameters()))
    for a, b in zip(got, expected, strict=True):
        torch.testing.assert_close(a, b)
    assert not findings, str(findings)
