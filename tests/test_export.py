"""``gradguard.export`` captures in eval; ``gradguard.check_export`` finds training-form nodes.

The models are small copies of the usual shapes, built here: a torchvision-style CNN
(convolutions, BatchNorm, Dropout before the classifier) and a Hugging Face-style encoder
(embeddings, LayerNorm, attention with its own dropout, hidden dropout).
"""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import gradguard

ROOT = Path(__file__).resolve().parent.parent

pytestmark = [
    # torch's own notices while it unpickles and decomposes programs
    pytest.mark.filterwarnings("ignore:`isinstance\\(treespec, LeafSpec\\)` is deprecated"),
]


class SmallCNN(nn.Module):
    """A torchvision-style classifier: conv-BN-ReLU blocks, pooling, dropout, linear."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1),
            nn.BatchNorm2d(8),
            nn.ReLU(),
            nn.Conv2d(8, 8, 3, padding=1),
            nn.BatchNorm2d(8),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
        )
        self.classifier = nn.Sequential(nn.Flatten(), nn.Dropout(0.5), nn.Linear(8, 5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class SelfAttention(nn.Module):
    def __init__(self, dim: int, p: float) -> None:
        super().__init__()
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        # As Hugging Face models do: attention dropout only while training.
        a = F.scaled_dot_product_attention(q, k, v, dropout_p=self.p if self.training else 0.0)
        return self.out(a)


class SmallEncoder(nn.Module):
    """A Hugging Face-style encoder layer stack, built from a small config."""

    def __init__(self, vocab: int = 50, dim: int = 16) -> None:
        super().__init__()
        self.embeddings = nn.Embedding(vocab, dim)
        self.norm = nn.LayerNorm(dim)
        self.dropout = nn.Dropout(0.1)
        self.attention = SelfAttention(dim, 0.1)
        self.hidden_dropout = nn.Dropout(0.1)
        self.head = nn.Linear(dim, vocab)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        h = self.dropout(self.norm(self.embeddings(input_ids)))
        h = h + self.hidden_dropout(self.attention(h))
        return self.head(h)


def cnn_case() -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    return SmallCNN().train(), torch.randn(2, 3, 8, 8)


def encoder_case() -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    return SmallEncoder().train(), torch.randint(0, 50, (2, 6))


CASES = {"cnn": cnn_case, "encoder": encoder_case}
# What plain torch.export.export of each model in training mode holds, by op.
TRAINING_OPS = {
    "cnn": {"aten.batch_norm.default", "aten.dropout.default"},
    "encoder": {"aten.dropout.default", "aten.scaled_dot_product_attention.default"},
}


def flags(model: nn.Module) -> list[bool]:
    return [m.training for m in model.modules()]


@pytest.mark.parametrize("case", sorted(CASES))
def test_export_captures_a_training_model_in_eval_and_gives_its_flags_back(case: str) -> None:
    model, x = CASES[case]()
    model.features[1].eval() if case == "cnn" else model.dropout.eval()  # a mixed tree
    before = flags(model)
    program = gradguard.export(model, (x,))
    assert flags(model) == before
    findings = gradguard.check_export(program)
    assert not findings
    assert isinstance(findings, gradguard.ExportFindings)
    assert not gradguard.check_export(program.run_decompositions())
    # The program computes what the model computes in eval.
    model.eval()
    with torch.no_grad():
        expected = model(x)
    torch.testing.assert_close(program.module()(x), expected)


@pytest.mark.parametrize("case", sorted(CASES))
def test_check_export_finds_the_training_ops_of_a_plain_export_in_training_mode(
    case: str,
) -> None:
    model, x = CASES[case]()
    program = torch.export.export(model, (x,))
    findings = gradguard.check_export(program)
    assert findings
    assert {f.op for f in findings} == TRAINING_OPS[case]
    graph_nodes = {n.name for n in program.graph.nodes}
    for finding in findings:
        assert finding.node in graph_nodes
        assert "gradguard.export(model, args)" in finding.fix
        assert finding.node in str(finding) and finding.op in str(finding)
    if case == "cnn":
        assert {f.module for f in findings} == {"features.1", "features.4", "classifier.1"}
        assert {f.argument for f in findings} == {"training=True", "train=True"}
    else:
        assert "dropout_p=0.1" in {f.argument for f in findings}
    text = str(findings)
    assert text.count("fix:") == 1  # one fix, said once
    assert all(f.node in text for f in findings)


def test_check_export_reads_a_decomposed_program() -> None:
    model, x = cnn_case()
    program = torch.export.export(model, (x,)).run_decompositions()
    ops = {f.op for f in gradguard.check_export(program)}
    assert ops == {
        "aten._native_batch_norm_legit_functional.default",
        "aten.native_dropout.default",
    }


def test_an_eval_export_still_holds_dropout_with_train_false_and_is_no_finding() -> None:
    model, x = cnn_case()
    program = torch.export.export(model.eval(), (x,))
    dropouts = [n for n in program.graph.nodes if n.target is torch.ops.aten.dropout.default]
    assert dropouts and dropouts[0].args[2] is False
    assert not gradguard.check_export(program)


class Norms(nn.Module):
    """Norms that use the batch's statistics in eval too, and the user's own sampling."""

    def __init__(self) -> None:
        super().__init__()
        self.instance = nn.InstanceNorm2d(4)
        self.instance_affine = nn.InstanceNorm2d(4, affine=True)
        self.batch_no_stats = nn.BatchNorm2d(4, track_running_stats=False)
        self.group = nn.GroupNorm(2, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.group(self.batch_no_stats(self.instance_affine(self.instance(x))))
        return x * torch.bernoulli(torch.full_like(x, 0.5))  # sampling on purpose


@pytest.mark.parametrize("decompose", [False, True], ids=["export", "decomposed"])
def test_norms_without_running_statistics_and_own_sampling_are_no_findings(
    decompose: bool,
) -> None:
    torch.manual_seed(0)
    program = torch.export.export(Norms().train(), (torch.randn(2, 4, 5, 5),))
    if decompose:
        program = program.run_decompositions()
    training_flags = [n for n in program.graph.nodes if "norm" in str(n.target) and True in n.args]
    assert training_flags  # they do run with training=True / use_input_stats=True
    assert not gradguard.check_export(program)


def test_instance_norm_with_running_statistics_in_training_is_a_finding() -> None:
    model = nn.Sequential(nn.InstanceNorm2d(4, track_running_stats=True)).train()
    program = torch.export.export(model, (torch.randn(2, 4, 5, 5),))
    (finding,) = gradguard.check_export(program)
    assert finding.op == "aten.instance_norm.default"
    assert finding.argument == "use_input_stats=True"
    assert not gradguard.check_export(gradguard.export(model, (torch.randn(2, 4, 5, 5),)))


class Variants(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.feature = nn.Dropout2d(0.2)
        self.alpha = nn.AlphaDropout(0.2)
        self.rrelu = nn.RReLU()
        self.none = nn.Dropout(0.0)  # drops nothing in training either

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.none(self.rrelu(self.alpha(self.feature(x))))


@pytest.mark.parametrize("decompose", [False, True], ids=["export", "decomposed"])
def test_dropout_variants_and_rrelu_are_found_with_their_modules(decompose: bool) -> None:
    program = torch.export.export(Variants().train(), (torch.randn(2, 4, 5, 5),))
    if decompose:
        program = program.run_decompositions()
    findings = gradguard.check_export(program)
    assert {f.module for f in findings} == {"feature", "alpha", "rrelu"}
    if decompose:  # the dropouts draw their masks with bernoulli
        assert sum(f.op.startswith("aten.bernoulli") for f in findings) == 2
    in_eval = torch.export.export(Variants().eval(), (torch.randn(2, 4, 5, 5),))
    assert not gradguard.check_export(in_eval)


@pytest.mark.filterwarnings("ignore:The tensor attributes self._flat_weights")
@pytest.mark.parametrize(("dropout", "found"), [(0.3, True), (0.0, False)])
def test_recurrent_dropout_is_found_when_it_drops(dropout: float, found: bool) -> None:
    model = nn.LSTM(4, 4, num_layers=2, dropout=dropout).train()
    x = torch.randn(3, 2, 4)
    findings = gradguard.check_export(torch.export.export(model, (x,)))
    assert [(f.op, f.argument) for f in findings] == (
        [("aten.lstm.input", "train=True")] if found else []
    )
    assert not gradguard.check_export(gradguard.export(model, (x,)))


def test_export_takes_a_guarded_module_and_export_options() -> None:
    model, x = encoder_case()
    guarded = gradguard.guard(model)
    batch = torch.export.Dim("batch", min=1, max=64)
    program = gradguard.export(guarded, (x,), dynamic_shapes=({0: batch},))
    assert not gradguard.check_export(program)
    assert all(m.training for m in model.modules())
    assert program.module()(torch.randint(0, 50, (5, 6))).shape == (5, 6, 50)


def test_export_gives_the_flags_back_when_torch_export_fails() -> None:
    model, _ = cnn_case()
    with pytest.raises(Exception, match=r"channels|shape|size"):
        gradguard.export(model, (torch.randn(2, 7, 8, 8),))  # wrong channel count
    assert all(m.training for m in model.modules())


@pytest.mark.parametrize(
    ("model", "args", "match"),
    [
        (lambda x: x, (torch.ones(1),), "export\\(\\) takes an nn.Module; got function"),
        (nn.Linear(2, 2), torch.ones(1, 2), "args must be a tuple.*\\(x,\\)"),
    ],
)
def test_export_refuses_bad_input_early(model: object, args: object, match: str) -> None:
    with pytest.raises(TypeError, match=match):
        gradguard.export(model, args)  # type: ignore[arg-type]


def test_check_export_reads_a_saved_program(tmp_path: Path) -> None:
    model, x = cnn_case()
    program = torch.export.export(model, (x,))
    path = tmp_path / "model.pt2"
    torch.export.save(program, path)
    from_file = gradguard.check_export(path)
    assert [(f.node, f.op, f.module) for f in from_file] == [
        (f.node, f.op, f.module) for f in gradguard.check_export(program)
    ]
    assert gradguard.check_export(str(path))


def write_aoti_like(path: Path) -> None:
    """The layout of an AOTInductor package: compiled code, no program."""
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("model/archive_format", "pt2")
        archive.writestr("model/data/aotinductor/model/model.wrapper.so", b"\0")


@pytest.mark.parametrize(
    ("content", "error", "match"),
    [
        (None, FileNotFoundError, "does not exist"),
        (b"not a zip", ValueError, "not a zip archive.*torch.export.save"),
        ("aoti", ValueError, "AOTInductor package.*check_export\\(program\\) before"),
        ("corrupt", ValueError, "torch.export.load cannot read it \\(RuntimeError"),
    ],
)
def test_check_export_says_what_is_wrong_with_a_file(
    tmp_path: Path, content: object, error: type[Exception], match: str
) -> None:
    path = tmp_path / "model.pt2"
    if content == "aoti":
        write_aoti_like(path)
    elif content == "corrupt":
        with zipfile.ZipFile(path, "w") as archive:
            archive.writestr("model/models/model.json", "{")
    elif isinstance(content, bytes):
        path.write_bytes(content)
    with pytest.raises(error, match=match):
        gradguard.check_export(path)


def test_check_export_refuses_other_objects() -> None:
    with pytest.raises(TypeError, match=r"ExportedProgram or the path.*got Linear"):
        gradguard.check_export(nn.Linear(2, 2))  # type: ignore[arg-type]


def python_m(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "gradguard", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )


def test_cli_check_export_round_trip(tmp_path: Path) -> None:
    model, x = cnn_case()
    training = tmp_path / "training.pt2"
    torch.export.save(torch.export.export(model, (x,)), training)
    evaluated = tmp_path / "eval.pt2"
    torch.export.save(gradguard.export(model, (x,)), evaluated)

    found = python_m("check-export", str(training))
    assert found.returncode == 1, found.stderr
    assert "3 node(s) behave as in training" in found.stdout
    for node in ("batch_norm", "batch_norm_1", "dropout"):
        assert f"node {node!r}" in found.stdout
    assert "fix: " in found.stdout
    assert found.stderr == ""

    clean = python_m("check-export", str(evaluated))
    assert (clean.returncode, clean.stderr) == (0, "")
    assert "no node behaves as in training" in clean.stdout


@pytest.mark.parametrize("content", [None, b"junk", "aoti", "corrupt", "usage"])
def test_cli_check_export_exits_2_on_bad_input_without_a_traceback(
    tmp_path: Path, content: object
) -> None:
    path = tmp_path / "model.pt2"
    if content == "aoti":
        write_aoti_like(path)
    elif content == "corrupt":
        with zipfile.ZipFile(path, "w") as archive:
            archive.writestr("model/models/model.json", "{")
    elif isinstance(content, bytes):
        path.write_bytes(content)
    result = python_m("check-export") if content == "usage" else python_m("check-export", str(path))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "error:" in result.stderr
    assert result.stdout == ""
