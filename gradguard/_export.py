"""``gradguard.export`` and ``gradguard.check_export``: programs captured in eval, and a check.

``torch.export`` captures whatever mode the model is in. An ``ExportedProgram`` made from a
model in training mode keeps dropout and training-form batch norm in its graph, and its
``module()`` refuses ``train()``/``eval()`` afterwards: a serving stack that loads the
``.pt2`` runs the training behaviour for good. ``export`` captures in eval and gives every
flag back; ``check_export`` reads a program's graph and names the nodes that behave as in
training, whoever exported it.

The check reads each op's own argument through its schema (``aten.dropout`` with
``train=False`` is eval's dropout, an identity), so it holds for the operator set the
program was exported with, decomposed or not.
"""

from __future__ import annotations

import logging
import os
import warnings
import zipfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from . import _eval

if TYPE_CHECKING:
    from torch.export import ExportedProgram

__all__ = ["ExportFinding", "ExportFindings", "check_export", "export"]


def export(
    model: nn.Module,
    args: tuple[Any, ...],
    kwargs: Mapping[str, Any] | None = None,
    **export_kwargs: Any,
) -> ExportedProgram:
    """Run ``torch.export.export`` with ``model`` and all its submodules in eval.

    Every module's ``training`` flag is given back afterwards, whatever happens, so a
    model in training mode stays in training mode; the program holds eval's behaviour
    (dropout off, batch norm on its running statistics). ``model`` may be a module from
    ``gradguard.guard``; ``export_kwargs`` go to ``torch.export.export`` unchanged
    (``dynamic_shapes=``, ``strict=``...).

    Example::

        program = gradguard.export(model, (example_batch,))
        torch.export.save(program, "model.pt2")
    """
    given: Any = model  # typed as a module, but users pass anything: check at run time
    if not isinstance(given, nn.Module):
        msg = (
            f"export() takes an nn.Module; got {type(given).__name__}. Pass the model (a "
            "gradguard.guard(model) proxy works too)."
        )
        raise TypeError(msg)
    module = _eval.submodules(given)[0]  # the module behind a gradguard proxy
    given_args: Any = args
    if not isinstance(given_args, tuple):
        msg = (
            f"export(model, args): args must be a tuple of the forward's positional "
            f"arguments, as for torch.export.export; got {type(args).__name__}. Write "
            "(x,) for a single input."
        )
        raise TypeError(msg)
    held = _eval.hold([module])
    try:
        return torch.export.export(
            module, args, dict(kwargs) if kwargs is not None else None, **export_kwargs
        )
    finally:
        _eval.release(held)


@dataclass(frozen=True)
class ExportFinding:
    """A node of an exported graph that behaves as in training.

    Attributes:
        node: the node's name in the graph (``"dropout"``, ``"batch_norm_1"``); a node
            inside a nested graph (``torch.cond``) is prefixed with that graph's name.
        op: the operator, as ``"aten.dropout.default"``.
        argument: what makes it training-form, as ``"train=True"``.
        module: the qualified name of the module it came from (``"layers.3"``), ``""``
            for the top module, or ``None`` where the program does not say.
        fix: what to do about it.
    """

    node: str
    op: str
    argument: str
    module: str | None
    fix: str

    def __str__(self) -> str:
        return f"{self.where()}: {self.fix}"

    def where(self) -> str:
        """The node, its op, what makes it training-form and its module, in one line."""
        module = f" in module {self.module!r}" if self.module else ""
        return f"node {self.node!r} ({self.op}, {self.argument}){module}"


class ExportFindings(list[ExportFinding]):
    """What ``check_export`` found: a list, empty (and false) when the program is clean."""

    def __str__(self) -> str:
        if not self:
            return "no node of the exported program behaves as in training"
        lines = [f.where() for f in self]
        lines.extend(f"fix: {fix}" for fix in dict.fromkeys(f.fix for f in self))
        return "\n".join(lines)


_FIX = (
    "the program was captured with the model in training mode; export it in eval: "
    "gradguard.export(model, args), or model.eval() before torch.export.export (the "
    "program's module() cannot be switched to eval afterwards)"
)
_FLAGS = ("train", "training", "use_input_stats")
# The probability of an op that has one: at 0 its training form changes nothing.
_PROBABILITIES = ("p", "dropout", "dropout_p")
# Ops that exist only in their training form: they update running statistics or drop.
_ALWAYS_TRAINING = frozenset(
    {
        "_batch_norm_with_update",
        "_batch_norm_with_update_functional",
        "_fused_dropout",
        "batch_norm_update_stats",
        "batch_norm_gather_stats",
        "batch_norm_gather_stats_with_counts",
    }
)


def _arguments(op: Any, node: torch.fx.Node) -> dict[str, Any]:
    """The node's arguments by their schema names, defaults filled in."""
    values: dict[str, Any] = {}
    for index, argument in enumerate(op._schema.arguments):
        name = argument.name
        if not argument.kwarg_only and index < len(node.args):
            values[name] = node.args[index]
        elif name in node.kwargs:
            values[name] = node.kwargs[name]
        elif argument.has_default_value():
            values[name] = argument.default_value
        else:
            values[name] = None
    return values


def _is_true(value: Any) -> bool:
    return value is True


def _training_argument(op: Any, node: torch.fx.Node) -> str | None:
    """Why ``node`` behaves as in training (``"train=True"``), or ``None``."""
    packet = op._schema.name.split("::")[-1]
    if "backward" in packet:
        return None  # a joint graph's backward: follows its forward
    values = _arguments(op, node)
    if packet in _ALWAYS_TRAINING:
        return "always training-form"
    if packet.startswith("bernoulli"):
        return "random draw from a dropout" if _from_dropout(node) else None
    dropout_p = values.get("dropout_p")
    if isinstance(dropout_p, (int, float)) and dropout_p > 0:  # attention's own dropout
        return f"dropout_p={dropout_p}"
    for flag in _FLAGS:
        if flag not in values:
            continue
        value = values[flag]
        # native_dropout's train is optional: left out, it drops.
        if not (_is_true(value) or (value is None and packet == "native_dropout")):
            continue
        if "norm" in packet and values.get("running_mean") is None:
            # No running statistics (track_running_stats=False, InstanceNorm, the
            # no_stats overload): the batch's statistics are used in eval too.
            return None
        for name in _PROBABILITIES:
            p = values.get(name)
            if isinstance(p, (int, float)) and not isinstance(p, bool) and p == 0:
                return None
        return f"{flag}={value}"
    return None


def _from_dropout(node: torch.fx.Node) -> bool:
    """Whether a random draw comes from a dropout (decomposed), not from the model's own
    sampling: the program's record of where the node came from says so."""
    meta = node.meta
    stack = meta.get("nn_module_stack")
    if stack:
        innermost = list(stack.values())[-1]
        if "dropout" in str(innermost[-1]).lower():
            return True
    torch_fn = meta.get("torch_fn")
    if torch_fn and "dropout" in str(torch_fn[-1]).lower():
        return True
    for source in meta.get("from_node") or ():
        if "dropout" in str(getattr(source, "name", "")).lower():
            return True
    trace = meta.get("stack_trace") or ""
    last = trace.strip().splitlines()[-1:] if trace else []
    return bool(last) and "dropout" in last[0].lower()


def _module_of(node: torch.fx.Node) -> str | None:
    stack = node.meta.get("nn_module_stack")
    if not stack:
        return None
    path = str(list(stack.values())[-1][0])
    # Exported paths spell list indices as attributes and may keep dynamo's L['self'].
    return path.replace("L['self'].", "").replace("L__self__", "")


def _graphs(program: ExportedProgram) -> Iterator[tuple[str, torch.fx.Graph]]:
    for name, module in program.graph_module.named_modules():
        if isinstance(module, torch.fx.GraphModule):
            yield name, module.graph


def _findings(program: ExportedProgram) -> ExportFindings:
    findings = ExportFindings()
    for prefix, graph in _graphs(program):
        for node in graph.nodes:
            op = node.target
            if node.op != "call_function" or not isinstance(op, torch._ops.OpOverload):
                continue
            argument = _training_argument(op, node)
            if argument is None:
                continue
            name = f"{prefix}.{node.name}" if prefix else node.name
            findings.append(ExportFinding(name, str(op), argument, _module_of(node), _FIX))
    return findings


def check_export(program: ExportedProgram | str | os.PathLike[str]) -> ExportFindings:
    """Return the nodes of an exported program that behave as in training.

    ``program`` is an ``ExportedProgram`` or the path of a file saved with
    ``torch.export.save``. Dropout in its training form (``aten.dropout`` with
    ``train=True``, ``native_dropout``, the feature and alpha variants, attention with
    ``dropout_p > 0``, and ``bernoulli`` where a decomposed dropout draws its mask),
    batch norm normalising with the batch's statistics while it has running ones
    (``training=True``), and ``RReLU``'s random slopes are findings. A norm without
    running statistics (``BatchNorm(track_running_stats=False)``, ``InstanceNorm``) runs
    ``training=True`` in eval too, and is none. Each finding names the node, the op and
    the fix; the result is empty, and false, for a program captured in eval.

    An AOTInductor package holds compiled code, not a graph: it is refused with a
    ``ValueError`` that says to check the program it was compiled from.

    Example::

        findings = gradguard.check_export("model.pt2")
        assert not findings, str(findings)
    """
    given: Any = program
    if isinstance(given, (str, os.PathLike)):
        given = _load(os.fspath(given))
    elif not isinstance(given, torch.export.ExportedProgram):
        msg = (
            f"check_export() takes an ExportedProgram or the path of a file saved with "
            f"torch.export.save; got {type(given).__name__}."
        )
        raise TypeError(msg)
    return _findings(given)


def _load(path: str) -> ExportedProgram:
    if not os.path.isfile(path):
        what = "is a directory" if os.path.isdir(path) else "does not exist"
        msg = f"check_export({path!r}): the path {what}; give a file saved with torch.export.save"
        raise FileNotFoundError(msg)
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except zipfile.BadZipFile:
        names = None
    if names is None or not any(_in_dir(n, "models/") for n in names):
        if names is not None and any(_in_dir(n, "data/aotinductor/") for n in names):
            msg = (
                f"check_export({path!r}): this is an AOTInductor package, compiled code "
                "without the graph gradguard reads. Check the ExportedProgram it was "
                "compiled from: check_export(program) before "
                "torch._inductor.aoti_compile_and_package(program), or save that program "
                "with torch.export.save and check that file."
            )
        else:
            what = "not a zip archive" if names is None else "a zip archive without a program"
            msg = (
                f"check_export({path!r}): {what}, so not a file written by "
                "torch.export.save. Give the .pt2 file torch.export.save wrote."
            )
        raise ValueError(msg)
    caught = _CaughtLoadError()
    logger = logging.getLogger("torch.export")
    logger.addFilter(caught)
    try:
        with warnings.catch_warnings():
            # torch's own deprecation notices while it unpickles the program's tree specs.
            warnings.simplefilter("ignore", FutureWarning)
            return torch.export.load(path)
    except Exception as error:
        cause = caught.error or error
        msg = (
            f"check_export({path!r}): torch.export.load cannot read it "
            f"({type(cause).__name__}: {_first_line(cause)}). Save the program again with "
            "torch.export.save, with the torch version that reads it."
        )
        raise ValueError(msg) from error
    finally:
        logger.removeFilter(caught)


class _CaughtLoadError(logging.Filter):
    """Takes the error torch.export.load logs with its traceback before it tries the older
    format: the error raised then says only "check the warnings above"."""

    def __init__(self) -> None:
        super().__init__()
        self.error: BaseException | None = None

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and record.exc_info[1] is not None:
            self.error = record.exc_info[1]
            return False
        return True


def _in_dir(name: str, directory: str) -> bool:
    # Archives keep their entries under one root folder: "model/models/model.json".
    return f"/{directory}" in f"/{name}"


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else "no message"
