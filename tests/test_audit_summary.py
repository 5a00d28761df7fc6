"""Aggregation per group, skipped lines, compare and fail-on, on generated logs."""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings, strategies as st

from gradguard._audit import _reader
from gradguard._audit._summary import (
    Collector,
    Summary,
    check_fail_on,
    compare,
    summarize,
)
from tests._audit_helpers import call, leak, lines, random_calls, timestamp, write_log

ALPHA = 0.01


def exact(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[math.floor(q * (len(ordered) - 1))]


def close(estimate: float | None, true: float) -> bool:
    assert estimate is not None
    return abs(estimate - true) <= ALPHA * true * (1 + 1e-9)


def collect(events: list[Any], by: str = "target", **kwargs: Any) -> Summary:
    c = Collector(by, **kwargs)  # type: ignore[arg-type]
    c.feed(lines(events).split(b"\n"))
    return c.summary()


# --- known answers -----------------------------------------------------------------------------


def test_counts_per_target_match_the_events() -> None:
    events = [
        call(target="a", wall_ms=1.0),
        call(target="a", wall_ms=2.0, status="error"),
        call(target="a", wall_ms=3.0, mode="no_grad", fallback=True),
        call(target="b", wall_ms=4.0, grad_recorded=True),
        call(target="b", wall_ms=5.0, training_modules=2),
        leak("a"),
        leak("c"),
    ]
    s = collect(events)
    a, b, c = s.groups
    assert (a.key, a.calls, a.errors, a.inference, a.no_grad, a.fallbacks, a.leaks) == (
        "a", 3, 1, 2, 1, 1, 1,
    )  # fmt: skip
    assert (b.key, b.calls, b.grad_calls, b.leaks) == ("b", 2, 2, 0)
    assert (c.key, c.calls, c.leaks, c.wall_ms) == ("c", 0, 1, None)
    t = s.totals
    assert (t.key, t.calls, t.errors, t.no_grad, t.fallbacks, t.grad_calls, t.leaks) == (
        None, 5, 1, 1, 1, 2, 2,
    )  # fmt: skip
    assert s.skipped == 0


def test_percentiles_of_generated_logs_are_within_the_bound() -> None:
    events = list(random_calls(5000, seed=3))
    s = collect(events)
    for g in s.groups:
        mine = [e for e in events if e["target"] == g.key]
        walls = [e["wall_ms"] for e in mine]
        gpus = [e["gpu_ms"] for e in mine if e["gpu_ms"] is not None]
        mems = [e["mem_peak_bytes"] for e in mine]
        assert g.calls == len(mine)
        assert g.wall_ms is not None and g.gpu_ms is not None and g.mem_peak_bytes is not None
        for q, got in ((0.5, g.wall_ms.p50), (0.95, g.wall_ms.p95), (0.99, g.wall_ms.p99)):
            assert close(got, exact(walls, q))
        assert g.wall_ms.max == max(walls)
        assert g.wall_ms.min == min(walls)
        assert close(g.gpu_ms.p95, exact(gpus, 0.95))
        assert g.gpu_ms.count == len(gpus)
        assert close(g.mem_peak_bytes.p95, exact(mems, 0.95))
        assert g.mem_peak_bytes.max == max(mems)
        assert g.devices == ("cuda:0", "cuda:1")
        assert g.ranks == (0, 1)


def test_the_span_runs_from_the_first_to_the_last_timestamp() -> None:
    events = [call(timestamp=timestamp(s)) for s in (50, 10, 3700, 20)]
    events.append(leak(timestamp=timestamp(5)))
    s = collect(events)
    assert s.first == timestamp(5)
    assert s.last == timestamp(3700)
    assert s.span_seconds == 3695.0


def test_malformed_timestamps_do_not_stretch_the_span() -> None:
    events = [call(timestamp=timestamp(10)), call(timestamp="zzz"), call(timestamp="0")]
    s = collect(events)
    assert (s.first, s.last) == (timestamp(10), timestamp(10))
    assert s.totals.calls == 3


def test_a_log_without_timestamps_has_no_span() -> None:
    event = call()
    del event["timestamp"]
    s = collect([event])
    assert (s.first, s.last, s.span_seconds) == (None, None, None)


@pytest.mark.parametrize(
    ("by", "expected"),
    [
        ("target", {"a": 2, "b": 1}),
        ("rank", {0: 1, 1: 1, None: 1}),
        ("host", {"h0": 2, None: 1}),
        ("device", {"cuda:0": 1, "cpu": 2}),
    ],
)
def test_grouping_by_each_key(by: str, expected: dict[Any, int]) -> None:
    events = [
        call(target="a", rank=0, host="h0", device="cuda:0"),
        call(target="a", rank=1, host="h0", device="cpu"),
        call(target="b", rank=None, host=None, device="cpu"),
    ]
    s = collect(events, by=by)
    assert s.by == by
    assert {g.key: g.calls for g in s.groups} == expected


def test_groups_are_sorted_ints_then_strings_then_none() -> None:
    events = [call(rank=r) for r in (None, 10, 2)]
    assert [g.key for g in collect(events, by="rank").groups] == [2, 10, None]


def test_leaks_without_the_grouping_field_land_in_the_none_group() -> None:
    s = collect([call(rank=0), leak()], by="rank")
    assert [(g.key, g.calls, g.leaks) for g in s.groups] == [(0, 1, 0), (None, 0, 1)]


# --- what is skipped, and why ------------------------------------------------------------------


def test_each_kind_of_unusable_line_is_counted_by_reason() -> None:
    events = [
        call(),
        "not json at all",
        '{"event": "gradguard.call", "wall_ms": 1',  # truncated
        "[1, 2, 3]",
        '"a string"',
        "null",
        b"\xff\xfe\x00garbage",
        {"event": "http.request", "path": "/"},
        {"message": "no event key"},
        call(wall_ms="fast"),
        "",
        "   ",
    ]
    s = collect(events)
    assert s.totals.calls == 1
    assert s.skipped_by_reason == {"not_json": 6, "other_event": 2, "invalid": 1}
    assert s.skipped == 9


@pytest.mark.parametrize(
    "change",
    [
        {"wall_ms": "1.0"},
        {"wall_ms": -1.0},
        {"wall_ms": True},
        {"wall_ms": None},
        {"wall_ms": 1e301},
        {"status": "weird"},
        {"mode": "train"},
        {"fallback": "no"},
        {"fallback": 0},
        {"grad_recorded": "yes"},
        {"training_modules": -1},
        {"training_modules": 1.5},
        {"gpu_ms": "x"},
        {"gpu_ms": -0.5},
        {"mem_peak_bytes": 1.5},
        {"mem_peak_bytes": -1},
        {"device": 3},
        {"device": ["cpu"]},
        {"rank": "0"},
        {"rank": [0]},
        {"schema": 2},
        {"target": 5},
        {"target": None},
        {"timestamp": 5},
    ],
    ids=lambda change: ",".join(f"{k}={v!r}" for k, v in change.items()),
)
def test_a_call_with_a_wrong_field_is_skipped_as_invalid(change: dict[str, Any]) -> None:
    s = collect([call(**change)])
    assert s.totals.calls == 0
    assert s.skipped_by_reason["invalid"] == 1


@pytest.mark.parametrize("field", ["target", "wall_ms", "status", "mode", "fallback", "schema"])
def test_a_call_missing_a_required_field_is_invalid(field: str) -> None:
    event = call()
    del event[field]
    s = collect([event])
    assert (s.totals.calls, s.skipped_by_reason["invalid"]) == (0, 1)


def test_a_leak_without_a_target_is_invalid() -> None:
    event = leak()
    del event["target"]
    s = collect([event])
    assert (s.totals.leaks, s.skipped_by_reason["invalid"]) == (0, 1)


@pytest.mark.parametrize(
    "field",
    ["gpu_ms", "mem_peak_bytes", "device", "rank", "timestamp", "grad_recorded",
     "training_modules", "host"],
)  # fmt: skip
def test_optional_fields_may_be_missing(field: str) -> None:
    full = call(gpu_ms=2.0, rank=1, grad_recorded=False)
    partial = dict(full)
    del partial[field]
    s = collect([partial])
    assert s.totals.calls == 1
    assert s.skipped == 0


def test_unknown_fields_are_ignored() -> None:
    s = collect([call(request_id="r-1", user={"id": 3}, tags=["x"])])
    assert (s.totals.calls, s.skipped) == (1, 0)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=200), max_size=30))
def test_random_bytes_never_crash_and_every_line_is_accounted_for(chunks: list[bytes]) -> None:
    raw = [c.replace(b"\n", b"") for c in chunks]
    c = Collector()
    c.feed(raw)
    s = c.summary()
    nonblank = sum(1 for line in raw if line.strip())
    assert s.totals.calls + s.totals.leaks + s.skipped == nonblank


json_value = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner),
    max_leaves=5,
)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.fixed_dictionaries(
            {},
            optional={
                "event": st.sampled_from(["gradguard.call", "gradguard.leak", "other"]),
                **{k: json_value | st.just(v) for k, v in call().items() if k != "event"},
            },
        ),
        max_size=20,
    )
)
def test_events_with_random_field_values_never_crash(events: list[dict[str, Any]]) -> None:
    s = collect(events)
    assert s.totals.calls + s.totals.leaks + s.skipped == len(events)


# --- the fast path and the slow path agree with a simple model -----------------------------------

OPTIONAL = ("gpu_ms", "mem_peak_bytes", "device", "rank", "timestamp", "grad_recorded",
            "training_modules")  # fmt: skip


@st.composite
def call_events(draw: st.DrawFn) -> dict[str, Any]:
    event = call(
        target=draw(st.sampled_from(["a", "b"])),
        wall_ms=draw(st.floats(min_value=0.001, max_value=1e4)),
        status=draw(st.sampled_from(["ok", "error"])),
        mode=draw(st.sampled_from(["inference", "no_grad"])),
        fallback=draw(st.booleans()),
        gpu_ms=draw(st.none() | st.floats(min_value=0.001, max_value=1e4)),
        mem_peak_bytes=draw(st.none() | st.integers(min_value=0, max_value=10**12)),
        device=draw(st.sampled_from(["cpu", "cuda:0", None])),
        rank=draw(st.sampled_from([0, 1, None])),
        grad_recorded=draw(st.booleans()),
        training_modules=draw(st.integers(min_value=0, max_value=3)),
    )
    for name in draw(st.sets(st.sampled_from(OPTIONAL))):
        del event[name]
    return event


@settings(max_examples=200, deadline=None)
@given(st.lists(call_events(), min_size=1, max_size=60))
def test_summaries_match_a_direct_computation(events: list[dict[str, Any]]) -> None:
    s = collect(events)
    for g in s.groups:
        mine = [e for e in events if e["target"] == g.key]
        assert g.calls == len(mine)
        assert g.errors == sum(e["status"] == "error" for e in mine)
        assert g.no_grad == sum(e["mode"] == "no_grad" for e in mine)
        assert g.fallbacks == sum(e["fallback"] for e in mine)
        assert g.grad_calls == sum(
            bool(e.get("grad_recorded") or e.get("training_modules")) for e in mine
        )
        assert set(g.devices) == {e["device"] for e in mine if e.get("device") is not None}
        assert set(g.ranks) == {e["rank"] for e in mine if e.get("rank") is not None}
        gpus = [e["gpu_ms"] for e in mine if e.get("gpu_ms") is not None]
        assert (g.gpu_ms.count if g.gpu_ms else 0) == len(gpus)
        assert g.wall_ms is not None
        assert close(g.wall_ms.p95, exact([e["wall_ms"] for e in mine], 0.95))
    assert sum(g.calls for g in s.groups) == len(events)


def test_the_stdlib_json_backend_gives_the_same_summary() -> None:
    events: list[Any] = [*random_calls(300, seed=5), "NaN", '{"wall_ms": Infinity}', leak("a")]
    data = lines(events).split(b"\n")
    fast, slow = Collector(), Collector()
    fast.feed(data)
    slow.feed(data, loads=lambda b: json.loads(b, parse_constant=_reader._reject_constant))
    assert fast.summary() == slow.summary()


def test_flushing_mid_stream_does_not_change_the_result(monkeypatch: pytest.MonkeyPatch) -> None:
    events = list(random_calls(2000, seed=9))
    data = lines(events).split(b"\n")
    once = Collector()
    once.feed(data)
    from gradguard._audit import _summary

    monkeypatch.setattr(_summary, "_FLUSH_EVERY", 50)
    often = Collector()
    for i in range(0, len(data), 37):
        often.feed(data[i : i + 37])
    a, b = once.summary(), often.summary()
    assert [(g.key, g.calls, g.wall_ms) for g in a.groups] == [
        (g.key, g.calls, g.wall_ms) for g in b.groups
    ]


def test_summarize_merges_many_files(tmp_path: Path) -> None:
    write_log(tmp_path / "a.jsonl", [call(target="x")] * 3)
    write_log(tmp_path / "b.jsonl.gz", [call(target="x"), call(target="y")])
    s = summarize([str(tmp_path / "a.jsonl"), str(tmp_path / "b.jsonl.gz")])
    assert {g.key: g.calls for g in s.groups} == {"x": 4, "y": 1}
    assert s.files == (str(tmp_path / "a.jsonl"), str(tmp_path / "b.jsonl.gz"))


# --- compare -----------------------------------------------------------------------------------


def _run(target_walls: dict[str, float], mem: int = 1000) -> Summary:
    return collect([call(target=t, wall_ms=w, mem_peak_bytes=mem) for t, w in target_walls.items()])


def test_compare_flags_regressed_new_and_vanished_groups() -> None:
    base = _run({"same": 10.0, "slower": 10.0, "gone": 1.0})
    cur = _run({"same": 10.5, "slower": 12.0, "fresh": 1.0})
    cmp = compare(base, cur, threshold=0.10)
    status = {c.key: c.status for c in cmp.changes}
    assert status == {"same": "unchanged", "slower": "regressed", "gone": "vanished",
                      "fresh": "new"}  # fmt: skip
    slower = next(c for c in cmp.changes if c.key == "slower")
    assert slower.flags == ("wall_ms.p95",)
    assert slower.wall_p95_change is not None
    assert slower.wall_p95_change == pytest.approx(0.2, abs=0.03)
    assert cmp.keys("regressed") == ("slower",)


def test_compare_flags_peak_memory_growth() -> None:
    cmp = compare(_run({"m": 1.0}, mem=1000), _run({"m": 1.0}, mem=1200), threshold=0.1)
    (change,) = cmp.changes
    assert change.flags == ("mem_peak_bytes.max",)
    assert change.mem_max_change == pytest.approx(0.2)


def test_growth_at_the_threshold_is_not_a_regression() -> None:
    cmp = compare(_run({"m": 1.0}, mem=1000), _run({"m": 1.0}, mem=1100), threshold=0.1)
    assert cmp.changes[0].status == "unchanged"


def test_growth_from_zero_memory_is_a_regression() -> None:
    cmp = compare(_run({"m": 1.0}, mem=0), _run({"m": 1.0}, mem=10), threshold=0.5)
    assert cmp.changes[0].status == "regressed"
    assert cmp.changes[0].mem_max_change == math.inf


def test_a_negative_threshold_is_refused() -> None:
    with pytest.raises(ValueError, match="threshold must be a non-negative fraction"):
        compare(_run({"a": 1.0}), _run({"a": 1.0}), threshold=-0.1)


# --- fail-on -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("condition", "bad_event"),
    [
        ("errors", call(status="error")),
        ("leaks", leak()),
        ("fallbacks", call(fallback=True, mode="no_grad")),
        ("grad", call(grad_recorded=True)),
        ("grad", call(training_modules=1)),
    ],
)
def test_each_fail_on_condition_fails_only_when_found(condition: str, bad_event: Any) -> None:
    clean = check_fail_on([condition], collect([call()]))
    assert (clean.failed, clean.exit_code) == ((), 0)
    found = check_fail_on([condition], collect([call(), bad_event]))
    assert (found.failed, found.exit_code) == ((condition,), 1)
    assert found.details[condition][0].isdigit()


def test_fail_on_regression_uses_the_comparison() -> None:
    base, cur = _run({"a": 1.0}), _run({"a": 2.0})
    result = check_fail_on(["regression"], cur, compare(base, cur))
    assert result.failed == ("regression",)
    assert "1 group(s) regressed: a" in result.details["regression"]
    assert check_fail_on(["regression"], base, compare(base, base)).failed == ()


def test_fail_on_only_reports_the_conditions_asked_for() -> None:
    s = collect([call(status="error"), leak()])
    assert check_fail_on(["leaks"], s).failed == ("leaks",)
    assert Counter(check_fail_on(["errors", "leaks", "grad"], s).failed) == Counter(
        ["errors", "leaks"]
    )


def test_fail_on_regression_without_a_baseline_is_refused() -> None:
    with pytest.raises(ValueError, match="needs a baseline; add --compare"):
        check_fail_on(["regression"], collect([call()]))


def test_an_unknown_fail_on_condition_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown fail-on condition 'slow'"):
        check_fail_on(["slow"], collect([call()]))


def test_an_unknown_grouping_is_refused() -> None:
    with pytest.raises(ValueError, match="by must be one of target, rank, host, device"):
        Collector("pid")  # type: ignore[arg-type]


def test_typed_batch_decoding_gives_the_line_by_line_summary() -> None:
    # With msgspec installed, batches are decoded whole into typed records; the summary
    # must be the one the exact line-by-line path gives, odd lines included.
    pytest.importorskip("msgspec", reason="the typed fast path needs msgspec")
    from gradguard._audit._summary import Collector
    from tests._audit_helpers import call, leak, lines, random_calls

    batch = lines(random_calls(3000, seed=5)).splitlines()
    # Lines only the exact path may judge, among the well-formed ones.
    odd = [leak("a"), {"event": "other"}, call(wall_ms=-1.0), {**call(), "schema": 2}]
    for i, extra in enumerate(lines(odd).splitlines()):
        batch.insert(100 + 700 * i, extra)
    typed, plain = Collector(), Collector()
    plain._decode_batch = None
    assert typed._decode_batch is not None
    taken: list[int] = []
    feed_typed = typed._feed_typed

    def counting(records: list[Any], chunk: Any) -> None:
        taken.append(len(records))
        feed_typed(records, chunk)

    typed._feed_typed = counting  # type: ignore[method-assign]
    for collector in (typed, plain):
        for start in range(0, len(batch), 500):
            collector.feed(batch[start : start + 500])
    summary = typed.summary()
    assert summary == plain.summary()
    assert sum(taken) == len(batch)  # every batch went through the fast path
    assert summary.totals.leaks == 1 and summary.skipped == 3


@pytest.mark.parametrize("by", ["target", "rank", "host", "device"])
def test_blocks_read_whole_are_decoded_without_splitting_them(by: str) -> None:
    # The reader hands msgspec each chunk as one block (_reader.Lines); it is split
    # into lines only when a line needs the exact path, and the summary is the same.
    pytest.importorskip("msgspec", reason="the typed fast path needs msgspec")
    from gradguard._audit._reader import Lines
    from gradguard._audit._summary import Collector
    from tests._audit_helpers import call, leak, lines, random_calls

    clean = lines([*random_calls(800, seed=9), leak("a"), {"event": "http.request"}])
    odd = lines([leak(None), call(wall_ms=-1.0)])  # only the exact path says why
    typed, plain = Collector(by), Collector(by)  # type: ignore[arg-type]
    plain._decode_batch = None
    data = [clean.rstrip(b"\n"), odd.rstrip(b"\n")]
    blocks = [Lines(d) for d in data]
    for block, d in zip(blocks, data, strict=True):
        typed.feed(block)
        plain.feed(d.split(b"\n"))
    assert blocks[0]._lines is None  # never split: every line was taken typed
    assert blocks[1]._lines is not None
    summary = typed.summary()
    assert summary == plain.summary()
    assert summary.totals.calls == 800
    assert summary.totals.leaks == 1
    assert summary.skipped_by_reason == {"not_json": 0, "other_event": 1, "invalid": 2}


@pytest.mark.parametrize(
    "odd",
    [
        b"",  # a blank line, with two objects on another: msgspec would count both
        b"   ",
        b'{"event": "x", "y": "\xff"}',  # not UTF-8 in a field msgspec skips
        b'{"event": "gradguard.leak", "target": "f", "rank": 1180591620717411303424}',
        b'  {"event": "gradguard.leak", "target": "f"}',
    ],
)
@pytest.mark.parametrize("by", ["target", "rank"])
def test_what_msgspec_would_read_more_laxly_is_left_to_the_exact_path(odd: bytes, by: str) -> None:
    pytest.importorskip("msgspec", reason="the typed fast path needs msgspec")
    import json

    from gradguard._audit._reader import Lines
    from gradguard._audit._summary import Collector
    from tests._audit_helpers import call, leak

    two = json.dumps(call()).encode() + b" " + json.dumps(leak("g", rank=2**70)).encode()
    block = b"\n".join(
        [json.dumps(call()).encode(), odd, two, json.dumps(call(rank=2**64)).encode()]
    )
    typed, plain = Collector(by), Collector(by)  # type: ignore[arg-type]
    plain._decode_batch = None
    typed.feed(Lines(block))
    plain.feed(block.split(b"\n"))
    assert typed.summary() == plain.summary()
