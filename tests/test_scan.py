"""``gradguard.scan()``: each kind of waste is found where it happens, and nothing else is.

Precision first: the training, gradient and guarded patterns below must give no finding.
Then each kind is found with the right ``where`` (the line of the call in this file),
``module`` (the outermost module's class) and ``bytes``.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterator
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

import gradguard
from gradguard import _hooks
from gradguard._leaks import Findings
from gradguard._scan import ScanFinding, ScanFindings
from gradguard._scan._watch import registry

HERE = "tests/test_scan.py"


@pytest.fixture(autouse=True)
def _no_scan_left() -> Iterator[None]:
    """Every test leaves no watcher and no saved-tensor hook behind."""
    yield
    assert "scan" not in _hooks.forward_pre_hooks.watchers
    assert torch._C._autograd._top_saved_tensors_default_hooks(False) is None
    registry.reset()


def at(call: Any) -> tuple[Any, str]:
    """Run ``call`` (a lambda written on the caller's line); return its result and
    ``tests/test_scan.py:N`` for that line, where the scan must place what it finds."""
    where = f"{HERE}:{sys._getframe(1).f_lineno}"
    return call(), where


def line_of(call: Any) -> str:
    """``at``, dropping the result (and with it any graph it holds)."""
    where = f"{HERE}:{sys._getframe(1).f_lineno}"
    call()
    return where


class Seed(nn.Module):
    """The seed article's model, at a tenth of its sizes."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Sequential(nn.Linear(500, 5000), nn.ReLU(), nn.Linear(5000, 500))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x)  # type: ignore[no-any-return]


def mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2))


def name(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def kinds(findings: ScanFindings) -> list[tuple[str, str, str]]:
    return [(f.kind, f.where, f.module) for f in findings]


# --- graph_unused: found, with its bytes ---------------------------------------------------


def test_the_seed_forward_without_no_grad_wastes_exactly_its_activations() -> None:
    model = Seed()
    x = torch.ones(100, 500)
    x.requires_grad = True
    with gradguard.scan() as findings:
        out, where = at(lambda: model(x))
        del out  # the graph goes with the output, unused
    (finding,) = findings
    assert finding.kind == "graph_unused"
    assert finding.where == where
    assert finding.module == f"{__name__}.Seed"
    # ReLU's 100 x 5000 float32 output, saved once for ReLU and once for the second
    # Linear (one storage); the input and the weights are not counted.
    assert (finding.calls, finding.bytes_max, finding.bytes_total) == (1, 2_000_000, 2_000_000)
    assert "gradguard.scope(model)" in finding.message
    assert "@gradguard.infer" in finding.message
    assert where in str(findings) and "2,000,000 bytes" in str(findings)


def test_repeated_calls_at_one_line_add_up_to_one_finding() -> None:
    model = mlp()
    with gradguard.scan() as findings:
        for n in (1, 3, 2):
            where = line_of(lambda n=n: model(torch.randn(n, 8)))
    (finding,) = findings
    # ReLU's output (n x 16 float32) for each call; the first Linear's output is freed.
    assert (finding.where, finding.calls) == (where, 3)
    assert (finding.bytes_max, finding.bytes_total) == (3 * 16 * 4, 6 * 16 * 4)


def test_findings_are_sorted_by_bytes_wasted() -> None:
    small, big = mlp(), Seed()
    with gradguard.scan() as findings:
        first = line_of(lambda: small(torch.randn(2, 8)))
        second = line_of(lambda: big(torch.ones(100, 500)))
    assert [f.where for f in findings] == [second, first]


def test_inputs_given_by_keyword_and_parameters_are_not_counted() -> None:
    class Keyword(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.weight = nn.Parameter(torch.ones(4, 4))

        def forward(self, *, x: torch.Tensor) -> torch.Tensor:
            return x @ self.weight

    with gradguard.scan() as findings:
        where = line_of(lambda: Keyword()(x=torch.ones(3, 4)))
    # The matmul saved x (the call's input) and the weight: nothing the graph alone kept.
    assert [(f.where, f.bytes_max) for f in findings] == [(where, 0)]


def test_a_graph_freed_inside_the_call_is_found_when_the_call_ends() -> None:
    class Scalar(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = mlp()

        def forward(self, x: torch.Tensor) -> float:
            return float(self.inner(x).sum().item())  # the graph dies in here

    with gradguard.scan() as findings:
        where = line_of(lambda: Scalar()(torch.randn(4, 8)))
    assert kinds(findings) == [("graph_unused", where, name(Scalar))]


def test_a_graph_alive_at_the_end_is_pending_then_reported_when_freed() -> None:
    model = mlp()
    with gradguard.scan() as findings:
        out, where = at(lambda: model(torch.randn(2, 8)))
    assert not findings and findings.pending == 1
    assert "still alive" in str(findings)
    del out
    assert findings.pending == 0
    assert [f.where for f in findings] == [where]


def test_the_outermost_module_is_named_not_its_children() -> None:
    model = mlp()
    with gradguard.scan() as findings:
        model(torch.randn(2, 8))
    assert [f.module for f in findings] == ["torch.nn.modules.container.Sequential"]


def test_a_forward_in_another_thread_is_seen_with_its_own_line() -> None:
    model = mlp()
    wheres: list[str] = []

    def work() -> None:
        wheres.append(line_of(lambda: model(torch.randn(2, 8))))

    with gradguard.scan() as findings:
        thread = threading.Thread(target=work)
        thread.start()
        thread.join()
    assert [(f.kind, f.where) for f in findings] == [("graph_unused", wheres[0])]


# --- no finding: the graph was used, or no graph was recorded -----------------------------


def test_no_finding_for_a_training_step() -> None:
    model = mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with gradguard.scan() as findings:
        for _ in range(3):
            loss = F.cross_entropy(model(torch.randn(4, 8)), torch.tensor([0, 1, 0, 1]))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        del loss
    assert not findings and findings.pending == 0


def test_no_finding_for_a_loss_on_an_intermediate_activation() -> None:
    class TwoHeads(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = mlp()
            self.head = nn.Linear(2, 2)

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            feature = self.body(x)
            return feature, self.head(feature)

    model = TwoHeads()
    with gradguard.scan() as findings:
        feature, _ = model(torch.randn(4, 8))
        feature.pow(2).sum().backward()  # the head's part is never used: still used
        del feature, _
    assert not findings


def test_no_finding_when_the_backward_reaches_only_an_output_whose_nodes_saved_nothing() -> None:
    class TwoOutputs(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.weight = nn.Parameter(torch.ones(4))

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            hidden = x * 2 + self.weight  # nothing saved on this path
            return hidden.sigmoid(), hidden + 1  # sigmoid saves its output

    model = TwoOutputs()
    with gradguard.scan() as findings:
        _, plain = model(torch.ones(4))
        plain.sum().backward()  # reaches the call's nodes, unpacks nothing
        del _, plain
    assert model.weight.grad is not None
    assert not findings, str(findings)


def test_no_finding_for_a_saliency_map_with_autograd_grad() -> None:
    model = mlp().eval()
    with gradguard.scan() as findings:
        x = torch.randn(1, 8, requires_grad=True)
        (saliency,) = torch.autograd.grad(model(x)[0, 1], x)
    assert saliency.shape == (1, 8)
    assert not findings


def test_no_finding_for_a_gradient_penalty() -> None:
    critic = mlp()
    with gradguard.scan() as findings:
        x = torch.randn(4, 8, requires_grad=True)
        (grad,) = torch.autograd.grad(critic(x).sum(), x, create_graph=True)
        penalty = ((grad.norm(dim=1) - 1) ** 2).mean()
        penalty.backward()
        del penalty, grad
    assert not findings


def test_no_finding_for_gradient_accumulation() -> None:
    model = mlp()
    with gradguard.scan() as findings:
        losses = [model(torch.randn(2, 8)).sum() for _ in range(4)]
        torch.stack(losses).sum().backward()  # one backward, later, for all four
        del losses
    assert not findings


def test_no_finding_for_a_rollout_used_by_a_later_loss() -> None:
    policy = mlp()
    with gradguard.scan() as findings:
        log_probs = []
        for _ in range(5):  # the episode: the graphs stay alive for the update
            action_logits = policy(torch.randn(1, 8))
            log_probs.append(action_logits.log_softmax(-1)[0, 0])
        loss = -torch.stack(log_probs).sum()
        loss.backward()
        del loss, log_probs, action_logits
    assert not findings


def test_no_finding_for_a_graph_kept_across_two_backwards() -> None:
    model = mlp()
    with gradguard.scan() as findings:
        out = model(torch.randn(2, 8)).sum()
        out.backward(retain_graph=True)
        out.backward()
        del out
    assert not findings and findings.pending == 0


@pytest.mark.parametrize(
    "run",
    [
        pytest.param(lambda m, x: gradguard.infer(m)(x), id="infer"),
        pytest.param(lambda m, x: gradguard.guard(m)(x), id="guard"),
        pytest.param(lambda m, x: _in_scope(m, x), id="scope"),
    ],
)
def test_no_finding_under_gradguards_own_guards(run: Any) -> None:
    model = nn.Sequential(nn.Linear(8, 8), nn.Dropout(), nn.BatchNorm1d(8)).train()
    with gradguard.scan() as findings:
        out = run(model, torch.randn(4, 8))
        del out
    assert not findings and findings.pending == 0
    assert model.training  # and the guard put the flags back


def _in_scope(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with gradguard.scope(model):
        return model(x)  # type: ignore[no-any-return]


def test_no_finding_for_evaluation_done_right() -> None:
    model = nn.Sequential(nn.Linear(8, 8), nn.Dropout(), nn.BatchNorm1d(8)).eval()
    with gradguard.scan() as findings:
        with torch.no_grad():
            model(torch.randn(4, 8))
        with torch.inference_mode():
            model(torch.randn(4, 8))
    assert not findings


def test_no_finding_and_nothing_broken_for_activation_checkpointing() -> None:
    class Checkpointed(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = mlp()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return checkpoint(self.inner, x, use_reentrant=False)  # type: ignore[no-any-return]

    model = Checkpointed()
    x = torch.randn(2, 8, requires_grad=True)
    model(x).sum().backward()
    expected = x.grad.clone()  # type: ignore[union-attr]
    x.grad = None
    with gradguard.scan() as findings:
        model(x).sum().backward()
    torch.testing.assert_close(x.grad, expected)
    assert not findings


# --- training_mode ------------------------------------------------------------------------


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(8, 8), nn.BatchNorm1d(8), nn.Dropout(0.5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)  # type: ignore[no-any-return]


@pytest.mark.parametrize("mode", [torch.no_grad, torch.inference_mode])
def test_a_forgotten_eval_is_found_and_says_batchnorm_statistics_were_updated(mode: Any) -> None:
    model = Net()
    before = model.body[1].running_mean.clone()
    with gradguard.scan() as findings:
        for _ in range(2):
            with mode():
                where = line_of(lambda: model(torch.randn(4, 8)))
    assert not torch.equal(model.body[1].running_mean, before)  # what the finding says
    (finding,) = findings
    assert (finding.kind, finding.where, finding.module) == ("training_mode", where,
                                                             f"{__name__}.Net")  # fmt: skip
    assert (finding.calls, finding.bytes_max, finding.bytes_total) == (2, 0, 0)
    assert "BatchNorm1d (running statistics updated)" in finding.message
    assert "Dropout" in finding.message
    assert "gradguard.scope(model)" in finding.message


def test_a_module_overriding_train_counts_as_training_dependent() -> None:
    class Custom(nn.Module):
        def train(self, mode: bool = True) -> Custom:
            return super().train(mode)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x * 2

    with gradguard.scan() as findings, torch.no_grad():
        where = line_of(lambda: Custom()(torch.ones(2)))
    assert kinds(findings) == [("training_mode", where, name(Custom))]


def test_a_model_in_training_mode_without_dropout_or_batchnorm_is_not_reported() -> None:
    with gradguard.scan() as findings, torch.no_grad():
        mlp().train()(torch.randn(2, 8))
    assert not findings


def test_training_mode_under_grad_is_training_not_evaluation() -> None:
    model = Net()
    with gradguard.scan() as findings:
        model(torch.randn(4, 8)).sum().backward()
    assert not findings


def test_update_bn_is_reported_as_deliberate() -> None:
    model = Net()
    loader = [torch.randn(4, 8) for _ in range(3)]
    with gradguard.scan() as findings:
        where = line_of(lambda: torch.optim.swa_utils.update_bn(loader, model))
    assert [(f.kind, f.where, f.calls) for f in findings] == [
        ("training_mode_deliberate", where, 3)
    ]
    assert "update_bn" in findings[0].message


def test_monte_carlo_dropout_is_reported_as_deliberate() -> None:
    model = Net().eval()
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.train()
    with gradguard.scan() as findings, torch.no_grad():
        samples, where = at(lambda: torch.stack([model(torch.ones(1, 8)) for _ in range(4)]))
    assert samples.std(0).sum() > 0  # dropout did run
    assert kinds(findings) == [("training_mode_deliberate", where, f"{__name__}.Net")]


# --- what the scan leaves behind, and what it keeps working -------------------------------


def test_nothing_is_installed_when_not_scanning() -> None:
    assert "scan" not in _hooks.forward_pre_hooks.watchers
    model = mlp()
    with gradguard.scan():
        assert "scan" in _hooks.forward_pre_hooks.watchers
        model(torch.randn(2, 8))
    assert "scan" not in _hooks.forward_pre_hooks.watchers
    assert not any(m._forward_hooks for m in model.modules())


def test_an_error_in_a_forward_leaves_no_state_and_the_next_call_is_seen() -> None:
    class Fails(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = x * torch.ones(2, requires_grad=True)
            raise ValueError(f"bad input {y.shape}")

    model, failing = mlp(), Fails()
    with gradguard.scan() as findings:
        with pytest.raises(ValueError, match="bad input"):
            failed = f"{HERE}:{sys._getframe().f_lineno + 1}"
            failing(torch.ones(2))
        assert torch._C._autograd._top_saved_tensors_default_hooks(False) is None
        where = line_of(lambda: model(torch.randn(2, 8)))
    # The failed call recorded a graph (saving only its input: 0 bytes) freed unused.
    assert [(f.where, f.bytes_max > 0) for f in findings] == [(where, True), (failed, False)]
    assert not failing._forward_hooks and not failing._forward_hooks_always_called


def test_an_error_in_another_threads_forward_leaves_no_hook_once_the_scan_ends() -> None:
    class Fails(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            raise ValueError("bad input")

    failing = Fails()
    errors: list[BaseException] = []

    def work() -> None:
        try:
            failing(torch.ones(2))
        except ValueError as exc:
            errors.append(exc)

    with gradguard.scan():
        thread = threading.Thread(target=work)
        thread.start()
        thread.join()
        assert failing._forward_hooks  # left while torch ran its hooks after the error
    assert len(errors) == 1
    assert not failing._forward_hooks and not failing._forward_hooks_always_called


def test_an_inplace_change_to_a_saved_tensor_still_fails_the_backward() -> None:
    model = nn.Sequential(nn.Linear(4, 4), nn.Sigmoid())
    with gradguard.scan():
        out = model(torch.randn(2, 4))
        out.mul_(2)
        with pytest.raises(RuntimeError, match="modified by an inplace operation"):
            out.sum().backward()
        del out


def test_gradients_under_the_scan_are_the_same() -> None:
    model = mlp()
    x = torch.randn(4, 8)
    expected = torch.autograd.grad(model(x).sum(), list(model.parameters()))
    with gradguard.scan():
        got = torch.autograd.grad(model(x).sum(), list(model.parameters()))
    for a, b in zip(got, expected, strict=True):
        torch.testing.assert_close(a, b)


def test_the_result_types_are_public_and_distinct_from_check_module() -> None:
    assert gradguard.ScanFindings is ScanFindings and gradguard.ScanFinding is ScanFinding
    assert not issubclass(ScanFindings, Findings)
    with gradguard.scan() as findings:
        pass
    assert not findings and len(findings) == 0 and list(findings) == []
    assert str(findings) == "no unguarded inference found"
    assert "inference tensor" not in str(findings)


def test_nested_scans_both_see_the_call() -> None:
    model = mlp()
    with gradguard.scan() as outer:
        with gradguard.scan() as inner:
            where = line_of(lambda: model(torch.randn(2, 8)))
        assert "scan" in _hooks.forward_pre_hooks.watchers
    assert [f.where for f in inner] == [f.where for f in outer] == [where]


def test_a_long_run_merges_its_findings_as_it_goes() -> None:
    from gradguard._scan._findings import _MERGE_EVERY, Observation, Session

    session = Session()
    for n in range(_MERGE_EVERY + 10):
        session.post(Observation("graph_unused", "x.py:1", "M", n, "", None))
    assert len(session._queue) < _MERGE_EVERY  # merged on the way, not kept one by one
    (finding,) = session.findings()
    assert finding.calls == _MERGE_EVERY + 10
    assert finding.bytes_max == _MERGE_EVERY + 9
