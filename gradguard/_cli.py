"""The ``gradguard`` command line: ``audit``, ``scan``, ``demo`` and ``check-export``.

``audit`` reads gradguard's JSON-lines events and never imports torch; ``scan``, ``demo``
and ``check-export`` are loaded only when asked for.

Exit status: 0 when all went well, 1 when a ``--fail-on`` condition was found,
2 on a usage error or an input that cannot be read.

Example:
    $ gradguard audit 'logs/*.jsonl.gz' --by rank --fail-on errors,leaks
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence

from gradguard import __version__
from gradguard._audit import (
    FAIL_ON_CONDITIONS,
    GROUP_KEYS,
    InputError,
    Progress,
    Summary,
    check_fail_on,
    compare,
    expand_inputs,
    render,
    summarize,
)
from gradguard._audit._reader import total_size
from gradguard._audit._render import COLUMN_NAMES, clean
from gradguard._streams import deliver, say

__all__ = ["main"]

_PROG = "gradguard"

_AUDIT_EPILOG = """\
inputs:
  Plain or gzip-compressed JSON-lines files (gzip is recognised by content),
  glob patterns expanded by gradguard itself (quote them: 'logs/*.jsonl.gz';
  ** recurses), and - for standard input. All inputs are merged in one pass.
  --compare takes one or more baselines: put the current files first, or end
  the baseline list with --, as in: --compare base.jsonl -- new.jsonl

fail-on conditions (comma-separated; exit 1 when any is found):
  errors      a call ended with an error
  leaks       a gradguard.leak event was recorded
  fallbacks   a call fell back from inference_mode to no_grad
  grad        a call recorded gradients or left modules in training mode
  waste       a gradguard.waste event was recorded (gradguard scan --log-file)
  regression  a group's wall p95 or peak memory max grew past --threshold
              (needs --compare)
  empty       no gradguard event was read (a wrong path, or logging never
              configured); a warning says so on stderr either way

exit status: 0 ok, 1 a --fail-on condition was found, 2 usage or input error.
"""


def _threshold(text: str) -> float:
    """Parse a percentage written with its sign ('10%', '2.5%') into a fraction."""
    number = text.strip()
    if not number.endswith("%"):
        msg = f"threshold must be a percentage with a % sign, e.g. 10%; got {text!r}"
        raise argparse.ArgumentTypeError(msg)
    try:
        value = float(number[:-1]) / 100.0
    except ValueError:
        msg = f"threshold must be a number followed by %, e.g. 10%; got {text!r}"
        raise argparse.ArgumentTypeError(msg) from None
    if not math.isfinite(value) or value < 0:
        msg = f"threshold must be a non-negative percentage, e.g. 10%; got {text!r}"
        raise argparse.ArgumentTypeError(msg)
    return value


def _fail_on(text: str) -> list[str]:
    """Parse 'errors,leaks' into a list of known conditions."""
    conditions = [c.strip().lower() for c in text.split(",") if c.strip()]
    if not conditions:
        msg = f"give at least one condition, from: {','.join(FAIL_ON_CONDITIONS)}"
        raise argparse.ArgumentTypeError(msg)
    unknown = [c for c in conditions if c not in FAIL_ON_CONDITIONS]
    if unknown:
        msg = (
            f"unknown condition {unknown[0]!r}; choose a comma-separated subset of "
            f"{','.join(FAIL_ON_CONDITIONS)}"
        )
        raise argparse.ArgumentTypeError(msg)
    return list(dict.fromkeys(conditions))


def _columns(text: str) -> list[str]:
    """Parse 'calls,wall_p95' into a list of known column names."""
    names = [c.strip().lower().replace("-", "_") for c in text.split(",") if c.strip()]
    unknown = [c for c in names if c not in COLUMN_NAMES]
    if not names or unknown:
        got = repr(unknown[0]) if unknown else "nothing"
        msg = f"unknown column {got}; choose a comma-separated list from {','.join(COLUMN_NAMES)}"
        raise argparse.ArgumentTypeError(msg)
    return list(dict.fromkeys(names))


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=_PROG,
        description="Guard PyTorch inference calls, and audit the events they log.",
    )
    parser.add_argument("--version", action="version", version=f"{_PROG} {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    audit = sub.add_parser(
        "audit",
        help="summarize gradguard event logs (JSON lines)",
        description="Summarize gradguard event logs per group: calls, errors, modes, "
        "fallbacks, leaks, latency and memory percentiles.",
        epilog=_AUDIT_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    audit.add_argument("inputs", nargs="+", metavar="FILE_OR_GLOB", help="log files, globs, or -")
    audit.add_argument(
        "--by", choices=GROUP_KEYS, default="target", help="group events by (default: target)"
    )
    audit.add_argument(
        "--format",
        choices=("table", "json", "markdown", "html"),
        default="table",
        help="output format (default: table); json is a stable, documented contract; "
        "html is one self-contained file with charts (needs gradguard[report])",
    )
    audit.add_argument(
        "--output",
        "-o",
        metavar="FILE",
        help="write the report to FILE instead of standard output (replaced if it exists)",
    )
    columns = audit.add_mutually_exclusive_group()
    columns.add_argument(
        "--wide", action="store_true", help="show every column of the table, even empty ones"
    )
    columns.add_argument(
        "--columns",
        type=_columns,
        metavar="NAMES",
        help=f"the table's columns, comma-separated, from: {','.join(COLUMN_NAMES)}",
    )
    audit.add_argument(
        "--compare",
        nargs="+",
        action="extend",
        metavar="BASELINE",
        help="baseline files or globs to compare the inputs against",
    )
    audit.add_argument(
        "--threshold",
        type=_threshold,
        default=0.10,
        metavar="PCT",
        help="growth that counts as a regression, as a percentage with its sign (default: 10%%)",
    )
    audit.add_argument(
        "--fail-on",
        type=_fail_on,
        default=[],
        metavar="CONDITIONS",
        help=f"exit 1 when any is found; comma-separated subset of {','.join(FAIL_ON_CONDITIONS)}",
    )
    audit.add_argument(
        "--no-progress", action="store_true", help="never draw the progress line on stderr"
    )
    audit.set_defaults(parser=audit)

    # Only for the help texts: main() hands everything after "demo", --help included,
    # to the demo's own parser; this one answers --help when the demo cannot load.
    demo = sub.add_parser(
        "demo",
        help="run a short demonstration of gradguard (needs torch)",
        description="Run a short demonstration of gradguard. The arguments after 'demo' "
        "are passed to the demo unchanged.",
    )
    demo.add_argument("args", nargs=argparse.REMAINDER, metavar="ARGS", help="the demo's own")

    # Only for the help texts, as for the demo: main() hands everything after "scan" on.
    scan = sub.add_parser(
        "scan",
        help="run a program and report the inference code nobody guarded (needs torch)",
        description="Run a Python program under gradguard's scan: gradguard scan [options] "
        "SCRIPT [ARGS...] or gradguard scan [options] -m MODULE [ARGS...].",
    )
    scan.add_argument("args", nargs=argparse.REMAINDER, metavar="ARGS", help="see scan --help")
    _add_check_export(sub)
    return parser


def _add_check_export(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    check = sub.add_parser(
        "check-export",
        help="list the nodes of a torch.export program that behave as in training",
        description="Read a program saved with torch.export.save and list its nodes that "
        "behave as in training (dropout, batch norm in training form...): the model was "
        "exported in training mode. Needs torch.",
        epilog="exit status: 0 none found, 1 some found, 2 usage error or unreadable file.",
    )
    check.add_argument("program", metavar="PROGRAM_PT2", help="a .pt2 file from torch.export.save")
    check.set_defaults(run=_run_check_export)


def _run_check_export(args: argparse.Namespace) -> int:
    prefix = f"{_PROG} check-export"
    try:
        from gradguard._export import check_export
    except ImportError as exc:
        print(f"{prefix}: error: it needs torch ({exc}): pip install gradguard", file=sys.stderr)
        return 2
    try:
        findings = check_export(args.program)
    except (OSError, ValueError) as exc:
        print(f"{prefix}: error: {exc}", file=sys.stderr)
        return 2
    if not findings:
        text = f"{args.program}: no node behaves as in training\n"
    else:
        text = f"{args.program}: {len(findings)} node(s) behave as in training\n{findings}\n"
    problem = deliver(text, None)
    if problem is not None:
        print(f"{prefix}: error: {problem}", file=sys.stderr)
        return 2
    return 1 if findings else 0


def _run_audit(args: argparse.Namespace) -> int:
    parser: argparse.ArgumentParser = args.parser
    conditions: list[str] = args.fail_on
    if "regression" in conditions and not args.compare:
        parser.error("--fail-on regression needs a baseline: add --compare BASELINE...")
    if args.format == "html":
        from gradguard._audit._html import check_available

        problem = check_available()
        if problem:
            return _error(problem)
    try:
        paths = expand_inputs(args.inputs)
        baseline_paths = expand_inputs(args.compare) if args.compare else []
    except InputError as exc:
        return _error(str(exc))
    if "-" in paths and "-" in baseline_paths:
        parser.error("standard input (-) can be read only once: use it for the inputs or for "
                     "--compare, not both")  # fmt: skip

    def progress(p: Sequence[str]) -> Progress | None:
        return None if args.no_progress else Progress(total_size(p))

    timeline = None
    try:
        baseline = None
        if args.compare:
            baseline = summarize(baseline_paths, args.by, progress(baseline_paths))
        if args.format == "html":
            from gradguard._audit._timeline import summarize_with_timeline

            collector, timeline = summarize_with_timeline(paths, args.by, progress(paths))
            summary = collector.summary(paths)
        else:
            summary = summarize(paths, args.by, progress(paths))
    except InputError as exc:
        return _error(str(exc))
    _warn_if_empty(summary, paths)
    if baseline is not None:
        _warn_if_empty(baseline, baseline_paths, what="the baseline")
    comparison = compare(baseline, summary, args.threshold) if baseline is not None else None
    result = check_fail_on(conditions, summary, comparison) if conditions else None
    columns = list(COLUMN_NAMES) if args.wide else args.columns
    if timeline is not None:
        from gradguard._audit._html import render_html

        text = render_html(collector, timeline, comparison, result, files=paths, columns=columns)
    else:
        text = render(args.format, summary, comparison, result, columns=columns)
    problem = deliver(text, args.output)
    if problem:
        return _error(problem)
    if result is not None and result.failed:
        reasons = "; ".join(f"{c}: {result.details[c]}" for c in result.failed)
        say(f"{_PROG} audit: failing (--fail-on): {reasons}")
        return 1
    return 0


def _warn_if_empty(summary: Summary, paths: Sequence[str], what: str = "") -> None:
    """Say on stderr that ``paths`` held no gradguard event: the exit status alone would
    let a wrong log path pass a CI gate (``--fail-on empty`` makes it fail)."""
    why = summary.no_events()
    if why is None:
        return
    names = ", ".join(paths[:3]) + (", ..." if len(paths) > 3 else "")
    where = f"{what} ({names})" if what else names
    say(f"{_PROG} audit: warning: no gradguard events in {clean(where)}: {why}; check the "
        "path, and that logging was configured (gradguard.configure(log_file=...) or "
        "GRADGUARD_LOG_FILE)")  # fmt: skip


def _error(message: str) -> int:
    say(f"{_PROG} audit: error: {message}")
    return 2


def _run_demo(argv: list[str], parser: argparse.ArgumentParser) -> int:
    try:
        from gradguard._demo import main as demo_main  # type: ignore[import-not-found,unused-ignore]
    except ImportError as exc:
        if "-h" in argv or "--help" in argv:
            parser.parse_args(["demo", "--help"])  # prints this module's help; exits 0
        print(
            f"{_PROG} demo: error: the demo is not available ({exc}); it needs torch and a "
            "complete gradguard install: pip install gradguard",
            file=sys.stderr,
        )
        return 2
    code: int = demo_main(argv)
    return code


def _run_scan(argv: list[str], parser: argparse.ArgumentParser) -> int:
    try:
        from gradguard._scan._runner import main as scan_main
    except ImportError as exc:
        if "-h" in argv or "--help" in argv:
            parser.parse_args(["scan", "--help"])  # prints this module's help; exits 0
        print(f"{_PROG} scan: error: the scan is not available ({exc}); it needs torch: "
              "pip install gradguard", file=sys.stderr)  # fmt: skip
        return 2
    return scan_main(argv)


def _exit_status(exc: SystemExit) -> int:
    """The status ``exc`` would exit with; a message is printed as Python would."""
    if exc.code is None or isinstance(exc.code, int):
        return exc.code or 0
    say(str(exc.code))
    return 1


def main(argv: list[str] | None = None) -> int:
    """Run ``gradguard`` with ``argv`` (default: ``sys.argv[1:]``); return the exit status."""
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = _build_parser()
    try:
        if argv[:1] == ["demo"]:
            # The demo parses its own arguments: argparse here would reject its options.
            return _run_demo(argv[1:], parser)
        if argv[:1] == ["scan"]:  # the scanned program's own arguments follow
            return _run_scan(argv[1:], parser)
        args = parser.parse_args(argv)
        if getattr(args, "run", None) is not None:
            code: int = args.run(args)
            return code
        if args.command != "audit":  # no command given ("demo", "scan" handled above)
            parser.print_help(sys.stderr)
            return 2
        code = _run_audit(args)
    except SystemExit as exc:  # --help (0), usage errors (2), the demo's own exits
        return _exit_status(exc)
    except KeyboardInterrupt:  # Ctrl-C over a long audit: a line, not a traceback
        say(f"{_PROG}: interrupted")
        return 130
    return code
