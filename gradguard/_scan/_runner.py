"""``gradguard scan``: run a program under a scan, as ``python -m cProfile`` runs one.

``gradguard scan [options] SCRIPT [ARGS...]`` or ``gradguard scan [options] -m MODULE
[ARGS...]``: the program runs in this process with ``sys.argv`` set to its own, then the
findings are printed, sorted by bytes wasted. Graphs the program still holds when it ends
were never used by a backward, and count as ``graph_unused``.

Exit status: 2 on a usage error before the program starts; the program's own status
when it fails (the findings are still reported); otherwise 1 when a ``--fail-on`` kind
was found, 0 when not.
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import os
import runpy
import sys
import traceback
from collections.abc import Sequence
from typing import Any, NamedTuple

from .._streams import deliver
from ._findings import DELIBERATE, KINDS, ScanFinding, Session
from ._report import FORMATS, render, write_events
from ._watch import registry

__all__ = ["main", "parse_fail_on"]

_PROG = "gradguard scan"
_OPTIONS_WITH_VALUES = ("--format", "--fail-on", "--log-file")
# Frames a traceback of the program leaves out, as python's own would not show them.
_OWN_FRAMES = frozenset({__file__, runpy.__file__, "<frozen runpy>"})

_EPILOG = """\
kinds (for --fail-on, comma-separated; exit 1 when any is found):
  graph_unused              a forward recorded a graph no backward ever used
  training_mode             Dropout/BatchNorm in training mode with grad off
  training_mode_deliberate  the same on purpose (update_bn, Monte Carlo dropout):
                            reported, failed on only when named
  all                       every kind but training_mode_deliberate

exit status: 2 usage error; the program's own status when it fails;
otherwise 1 when a --fail-on kind was found, 0 when not. See docs/scan.md.
"""


def parse_fail_on(text: str) -> tuple[str, ...]:
    """Parse 'graph_unused,training_mode' (or 'all') into known kinds."""
    kinds = [k.strip().lower() for k in text.split(",") if k.strip()]
    if not kinds:
        msg = f"give at least one kind, from: {','.join(KINDS)} (or all)"
        raise argparse.ArgumentTypeError(msg)
    unknown = [k for k in kinds if k not in (*KINDS, "all")]
    if unknown:
        choices = ",".join(KINDS)
        msg = f"unknown kind {unknown[0]!r}; choose a comma-separated subset of {choices} (or all)"
        raise argparse.ArgumentTypeError(msg)
    if "all" in kinds:
        kinds += [k for k in KINDS if k not in DELIBERATE]
    return tuple(dict.fromkeys(k for k in kinds if k != "all"))


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=_PROG,
        usage=f"{_PROG} [-h] [--format {{{','.join(FORMATS)}}}] [--fail-on KINDS] "
        "[--log-file FILE] (SCRIPT | -m MODULE) [ARGS ...]",
        description="Run a Python program under gradguard's scan and report the inference\n"
        "code nobody guarded: forwards whose autograd graph no backward used (with the\n"
        "bytes it kept), and evaluation code running Dropout/BatchNorm in training mode.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--format", choices=FORMATS, default="table",
                        help="report format (default: table)")  # fmt: skip
    parser.add_argument("--fail-on", type=parse_fail_on, default=(), metavar="KINDS",
                        help="exit 1 when a finding of these kinds is made")  # fmt: skip
    parser.add_argument("--log-file", metavar="FILE",
                        help="append one gradguard.waste event per finding (JSON lines), for "
                        "gradguard audit")  # fmt: skip
    return parser


class _Command(NamedTuple):
    options: argparse.Namespace
    target: str
    is_module: bool
    args: list[str]


def _split(argv: Sequence[str], parser: argparse.ArgumentParser) -> _Command:
    """Options for the scan, then SCRIPT or -m MODULE, then the program's own arguments."""
    options: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "-m":
            if i + 1 >= len(argv):
                parser.error("-m needs a module name: gradguard scan -m package.module")
            return _Command(parser.parse_args(options), argv[i + 1], True, list(argv[i + 2 :]))
        if arg == "--":
            i += 1
            break
        if not arg.startswith("-") or arg == "-":
            break
        options.append(arg)
        if arg in _OPTIONS_WITH_VALUES and i + 1 < len(argv):
            options.append(argv[i + 1])
            i += 1
        i += 1
    namespace = parser.parse_args(options)  # --help exits here, bad options too (2)
    if i >= len(argv):
        parser.error("give the program to scan: SCRIPT [ARGS...] or -m MODULE [ARGS...]")
    return _Command(namespace, argv[i], False, list(argv[i + 1 :]))


def _check(command: _Command, parser: argparse.ArgumentParser) -> None:
    """Usage errors found before the program starts (exit 2)."""
    if command.is_module:
        try:
            spec = importlib.util.find_spec(command.target)
        except (ImportError, ValueError) as exc:
            spec = None
            reason = f" ({exc})"
        else:
            reason = ""
        if spec is None:
            parser.error(f"no module named {command.target!r}{reason}; check the name and "
                         "that its package is importable from here (PYTHONPATH)")  # fmt: skip
    elif not os.path.isfile(command.target):
        what = "is a directory" if os.path.isdir(command.target) else "does not exist"
        parser.error(f"the script {command.target!r} {what}; give a Python file to run")
    log_file = command.options.log_file
    if log_file is not None:
        folder = os.path.dirname(os.path.abspath(log_file))
        if os.path.isdir(log_file) or not os.path.isdir(folder):
            parser.error(f"--log-file {log_file!r}: cannot write there; give a file in an "
                         "existing folder")  # fmt: skip


def _run(command: _Command) -> int:
    """Run the program as ``python`` would; return its exit status."""
    saved_argv, saved_path0 = sys.argv, sys.path[0] if sys.path else None
    result: Any = None
    try:
        if command.is_module:
            sys.argv = [command.target, *command.args]
            sys.path.insert(0, os.getcwd())
            result = runpy.run_module(command.target, run_name="__main__", alter_sys=True)
        else:
            sys.argv = [command.target, *command.args]
            sys.path.insert(0, os.path.dirname(os.path.abspath(command.target)))
            result = runpy.run_path(command.target, run_name="__main__")
        return 0
    except SystemExit as exc:
        if exc.code is None or isinstance(exc.code, int):
            return exc.code or 0
        print(exc.code, file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        traceback.print_exc()
        return 130
    except BaseException:
        # As python prints it, without the frames of gradguard's runner.
        kind, value, tb = sys.exc_info()
        while tb is not None and tb.tb_frame.f_code.co_filename in _OWN_FRAMES:
            tb = tb.tb_next
        traceback.print_exception(kind, value, tb)
        del kind, value, tb  # the frames hold the program's tensors
        return 1
    finally:
        if result is not None:
            result.clear()  # the program's globals: what it held at the end goes now
        del result
        sys.argv = saved_argv
        if sys.path and saved_path0 is not None:
            del sys.path[0]


def scan_program(command: _Command) -> tuple[int, list[ScanFinding]]:
    """Run the program under a scan; return its status and what was found."""
    session = Session()
    registry.open(session)
    try:
        status = _run(command)
        gc.collect()  # graphs in reference cycles of the program's objects
    finally:
        registry.close(session)
    session.conclude()
    return status, session.findings()


def main(argv: Sequence[str]) -> int:
    """Run ``gradguard scan`` with ``argv`` (after 'scan'); return the exit status."""
    parser = _parser()
    try:
        command = _split(argv, parser)
        _check(command, parser)
    except SystemExit as exc:  # --help (0), usage errors (2)
        return exc.code if isinstance(exc.code, int) else 2
    status, findings = scan_program(command)
    sys.stdout.flush()
    problem = deliver(render(command.options.format, findings), None)
    if problem:
        print(f"{_PROG}: error: {problem}", file=sys.stderr)
        return status or 2
    if command.options.log_file is not None:
        try:
            write_events(command.options.log_file, findings)
        except OSError as exc:
            print(f"{_PROG}: error: --log-file: {exc}", file=sys.stderr)
            return status or 2
    if status:
        return status
    failing = [f for f in findings if f.kind in command.options.fail_on]
    if failing:
        kinds = ", ".join(dict.fromkeys(f.kind for f in failing))
        print(f"{_PROG}: failing (--fail-on): {len(failing)} finding(s) of {kinds}",
              file=sys.stderr)  # fmt: skip
        return 1
    return 0
