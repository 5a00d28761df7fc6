"""Finding inputs, opening plain/gzip/stdin, splitting lines, decoding JSON, progress."""

from __future__ import annotations

import gzip
import io
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings, strategies as st

from gradguard._audit import _reader
from gradguard._audit._reader import (
    OVERSIZED_LINE,
    InputError,
    Progress,
    expand_inputs,
    iter_line_batches,
)


def read_all(paths: list[str], chunk_bytes: int = _reader.CHUNK_BYTES) -> list[bytes]:
    return [line for batch in iter_line_batches(paths, chunk_bytes=chunk_bytes) for line in batch]


# --- expand_inputs -----------------------------------------------------------------------------


def test_globs_expand_sorted_and_files_keep_their_order(tmp_path: Path) -> None:
    for name in ("b.jsonl", "a.jsonl", "c.log"):
        (tmp_path / name).write_text("")
    pattern = str(tmp_path / "*.jsonl")
    single = str(tmp_path / "c.log")
    assert expand_inputs([single, pattern]) == [
        single,
        str(tmp_path / "a.jsonl"),
        str(tmp_path / "b.jsonl"),
    ]


def test_recursive_globs_reach_subfolders(tmp_path: Path) -> None:
    (tmp_path / "x" / "y").mkdir(parents=True)
    (tmp_path / "x" / "y" / "deep.jsonl").write_text("")
    assert expand_inputs([str(tmp_path / "**" / "*.jsonl")]) == [
        str(tmp_path / "x" / "y" / "deep.jsonl")
    ]


def test_a_file_named_like_a_glob_is_taken_literally(tmp_path: Path) -> None:
    odd = tmp_path / "run[1].jsonl"
    odd.write_text("")
    assert expand_inputs([str(odd)]) == [str(odd)]


def test_repeated_inputs_are_read_once(tmp_path: Path) -> None:
    f = tmp_path / "a.jsonl"
    f.write_text("")
    assert expand_inputs([str(f), str(tmp_path / "*.jsonl")]) == [str(f)]


def test_dash_means_standard_input() -> None:
    assert expand_inputs(["-"]) == ["-"]


def test_a_missing_file_is_an_input_error(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"no such file: .*nope\.jsonl.*check the path"):
        expand_inputs([str(tmp_path / "nope.jsonl")])


def test_a_glob_matching_nothing_is_an_input_error(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"no file matches the pattern .*\*\.gz"):
        expand_inputs([str(tmp_path / "*.gz")])


def test_a_directory_is_an_input_error_that_suggests_a_glob(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"is a directory; .*\*\.jsonl"):
        expand_inputs([str(tmp_path)])


# --- reading -----------------------------------------------------------------------------------


def test_plain_files_yield_their_lines(tmp_path: Path) -> None:
    f = tmp_path / "a.jsonl"
    f.write_bytes(b'{"a": 1}\n{"b": 2}\n')
    assert read_all([str(f)]) == [b'{"a": 1}', b'{"b": 2}']


def test_gzip_is_recognised_by_content_whatever_the_name(tmp_path: Path) -> None:
    f = tmp_path / "compressed.jsonl"  # no .gz suffix
    f.write_bytes(gzip.compress(b"one\ntwo\n"))
    assert read_all([str(f)]) == [b"one", b"two"]


def test_an_empty_gz_file_reads_as_empty(tmp_path: Path) -> None:
    f = tmp_path / "empty.jsonl.gz"
    f.write_bytes(b"")
    assert read_all([str(f)]) == []


def test_a_truncated_last_line_is_still_yielded(tmp_path: Path) -> None:
    f = tmp_path / "a.jsonl"
    f.write_bytes(b'{"a": 1}\n{"b": 2')
    assert read_all([str(f)]) == [b'{"a": 1}', b'{"b": 2']


def test_files_are_read_in_the_order_given(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    a.write_bytes(b"1\n2\n")
    b.write_bytes(gzip.compress(b"3\n"))
    assert read_all([str(b), str(a)]) == [b"3", b"1", b"2"]


@settings(max_examples=150, deadline=None)
@given(
    data=st.binary(max_size=3000).filter(lambda b: not b.startswith(b"\x1f\x8b")),  # not gzip
    chunk=st.integers(min_value=1, max_value=700),
)
def test_lines_come_out_whole_whatever_the_chunk_size(
    tmp_path_factory: pytest.TempPathFactory, data: bytes, chunk: int
) -> None:
    f = tmp_path_factory.mktemp("chunks") / "data"
    f.write_bytes(data)
    expected = data.split(b"\n")
    if expected[-1] == b"":
        expected.pop()
    assert read_all([str(f)], chunk_bytes=chunk) == expected


def test_an_oversized_line_is_replaced_by_a_placeholder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_reader, "MAX_LINE_BYTES", 100)
    f = tmp_path / "a"
    f.write_bytes(b"ok\n" + b"x" * 1000 + b"\nafter\n" + b"y" * 500)
    lines = read_all([str(f)], chunk_bytes=64)
    assert lines == [b"ok", OVERSIZED_LINE, b"after", OVERSIZED_LINE]


@pytest.mark.parametrize(
    ("content", "what"),
    [
        (b"\x1f\x8b" + b"\x00" * 30, "corrupt"),
        (gzip.compress(b'{"a": 1}\n' * 1000)[:-30], "cut short"),
    ],
)
def test_a_bad_gzip_stream_is_an_input_error(tmp_path: Path, content: bytes, what: str) -> None:
    f = tmp_path / "bad.jsonl.gz"
    f.write_bytes(content)
    with pytest.raises(InputError, match=r"cannot read .*bad\.jsonl\.gz.*corrupt or cut short"):
        read_all([str(f)])


def test_a_file_that_cannot_be_opened_is_an_input_error(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="cannot open"):
        read_all([str(tmp_path / "gone.jsonl")])


@pytest.mark.parametrize("compress", [False, True], ids=["plain", "gzip"])
def test_standard_input_is_read_plain_or_gzip(
    monkeypatch: pytest.MonkeyPatch, compress: bool
) -> None:
    data = b"one\ntwo\n"
    raw = io.BufferedReader(io.BytesIO(gzip.compress(data) if compress else data))
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(raw))
    assert read_all(["-"]) == [b"one", b"two"]


# --- JSON decoding -----------------------------------------------------------------------------


def test_the_stdlib_fallback_rejects_what_orjson_rejects(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "orjson", None)  # import orjson now raises ImportError
    loads, backend = _reader._make_loads()
    assert backend == "json"
    assert loads(b'{"a": [1, 2.5, "x"]}') == {"a": [1, 2.5, "x"]}
    for bad in (b"NaN", b'{"x": Infinity}', b'{"x": -Infinity}', b"\xff\xfe", b'{"a": 1'):
        with pytest.raises(ValueError):
            loads(bad)


def test_orjson_is_used_when_it_is_installed() -> None:
    pytest.importorskip("orjson")
    assert _reader.JSON_BACKEND == "orjson"


# --- progress ----------------------------------------------------------------------------------


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_draws_on_a_terminal_for_large_inputs_and_erases_itself() -> None:
    tty = _Terminal()
    p = Progress(10 << 20, tty, min_bytes=1 << 20)
    p.update(5 << 20, 1000)
    assert "50%" in tty.getvalue()
    p.close()
    assert tty.getvalue().endswith("\r\x1b[K")


def test_progress_waits_for_small_inputs() -> None:
    tty = _Terminal()
    p = Progress(100, tty, min_bytes=1 << 20, min_seconds=3600)
    p.update(50, 1)
    p.close()
    assert tty.getvalue() == ""


def test_progress_stays_silent_off_a_terminal() -> None:
    pipe = io.StringIO()
    p = Progress(10 << 20, pipe, min_bytes=0, min_seconds=0)
    p.update(5 << 20, 1000)
    p.close()
    assert pipe.getvalue() == ""
