"""``gradguard audit --format html``: one self-contained file, checked in headless Chromium."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from gradguard._cli import main
from tests._audit_helpers import call, leak, random_calls, write_log

ROOT = Path(__file__).resolve().parents[1]
SCREENSHOT = ROOT / "docs" / "images" / "audit-report.png"
TARGETS = ("encoder.forward", "decoder.generate")
EVIL = "<script>alert(1)</script>\x1b[2J"


def make_logs(tmp_path: Path, *, evil: bool) -> tuple[Path, Path]:
    events = list(random_calls(3000, seed=3, targets=TARGETS))
    events += [call(target="encoder.forward", status="error", fallback=True,
                    timestamp="2026-11-27T10:20:00Z") for _ in range(5)]  # fmt: skip
    events += [leak("decoder.generate", timestamp="2026-11-27T10:30:00Z")]
    if evil:
        events += [call(target=EVIL, timestamp="2026-13-45T25:61:61Z")]  # a false date too
    current = write_log(tmp_path / "current.jsonl", events)
    baseline = write_log(tmp_path / "baseline.jsonl", random_calls(2000, seed=4, targets=TARGETS))
    return current, baseline


@pytest.fixture
def logs(tmp_path: Path) -> tuple[Path, Path]:
    return make_logs(tmp_path, evil=True)


def report(tmp_path: Path, logs: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> str:
    pytest.importorskip("matplotlib", reason="the report's charts: pip install -e '.[report]'")
    current, baseline = logs
    out = tmp_path / "report.html"
    argv = ["audit", str(current), "--compare", str(baseline), "--format", "html", "-o", str(out)]
    assert main([*argv, "--fail-on", "errors"]) == 1  # --fail-on works with html too
    assert "failing (--fail-on): errors" in capsys.readouterr().err
    return out.read_text(encoding="utf-8")


def test_the_report_is_one_self_contained_file(
    tmp_path: Path, logs: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    text = report(tmp_path, logs, capsys)
    assert text.startswith("<!DOCTYPE html>")
    # Nothing to fetch: no script, no stylesheet or font link, no external reference.
    assert "<script" not in text.replace("&lt;script&gt;", "")
    for pattern in (r"<link\b", r"<img\b", r"@import", r"@font-face", r"url\(\s*['\"]?http",
                    r"(src|href)\s*=\s*['\"]?(https?:)?//"):  # fmt: skip
        assert not re.search(pattern, text, re.I), pattern
    assert set(re.findall(r"https?://[^\"' ]+", text)) <= {
        "http://www.w3.org/2000/svg",  # XML namespaces, never fetched
        "http://www.w3.org/1999/xlink",
    }
    # Per target: four charts; then the compare chart; the compare table; the table.
    assert text.count("<svg") == 4 * 3 + 1
    for title in ("latency distribution", "wall p50 and p95 over time",
                  "errors, fallbacks, grad calls and leaks over time", "peak memory over time",
                  "wall p95: baseline and current"):  # fmt: skip
        assert title in text
    for target in TARGETS:
        assert f"target: {target}</h2>" in text
    assert "Compare with the baseline" in text and "<h2>Table</h2>" in text
    assert re.search(r"<td>TOTAL</td><td>3,006</td>", text)
    assert "fail-on FAILED" in text
    # A hostile name is escaped for HTML and for the terminal alike.
    assert "&lt;script&gt;alert(1)&lt;/script&gt;\\x1b[2J" in text


def test_html_without_matplotlib_is_an_error_with_exit_2(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    log = write_log(tmp_path / "x.jsonl", [call()])
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # importing it raises ImportError
    out = tmp_path / "r.html"
    assert main(["audit", str(log), "--format", "html", "--output", str(out)]) == 2
    err = capsys.readouterr().err
    assert "pip install 'gradguard[report]'" in err
    assert not out.exists()


def test_the_core_audit_imports_neither_matplotlib_nor_torch(tmp_path: Path) -> None:
    log = write_log(tmp_path / "x.jsonl", [call()])
    code = (
        "import sys\n"
        "from gradguard._cli import main\n"
        f"for fmt in ('table', 'json', 'markdown'):\n"
        f"    assert main(['audit', '--format', fmt, {str(log)!r}]) == 0\n"
        "heavy = {'torch', 'matplotlib', 'numpy'} & set(sys.modules)\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        check=True,
        timeout=120,
    )


def _chromium() -> tuple[str, str]:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if browser is None or driver is None:
        pytest.skip("needs Debian's chromium and chromium-driver (.ci/run installs them)")
    return browser, driver


@pytest.mark.slow
def test_the_report_renders_in_headless_chromium_without_console_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    webdriver = pytest.importorskip("selenium.webdriver", reason="pip install -e '.[test]'")
    image = pytest.importorskip("PIL.Image", reason="pillow comes with matplotlib")
    browser, driver_path = _chromium()
    report(tmp_path, make_logs(tmp_path, evil=False), capsys)
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--window-size=1280,3300",
                 f"--user-data-dir={tmp_path / 'profile'}"):  # fmt: skip
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    service = webdriver.ChromeService(executable_path=driver_path)
    driver = webdriver.Chrome(options=options, service=service)
    try:
        driver.get((tmp_path / "report.html").as_uri())
        console = driver.get_log("browser")
        fetched = driver.execute_script("return performance.getEntriesByType('resource').length")
        sizes = driver.execute_script(
            "return [...document.querySelectorAll('svg')].map("
            "s => [s.getBoundingClientRect().width, s.getBoundingClientRect().height])"
        )
        shot = tmp_path / "report.png"
        driver.save_screenshot(str(shot))
    finally:
        driver.quit()
    assert [e for e in console if e["level"] in ("SEVERE", "WARNING")] == []
    assert fetched == 0  # nothing loaded but the file itself
    assert len(sizes) == 9 and all(w > 300 and h > 100 for w, h in sizes), sizes
    # The charts are drawn: matplotlib's first colour covers part of the screenshot.
    picture = image.open(shot).convert("RGB")
    pixels = (
        picture.get_flattened_data()
        if hasattr(picture, "get_flattened_data")
        else (picture.getdata())
    )
    blue = sum(1 for r, g, b in pixels if b > r + 60 and b > g + 20)
    assert blue > 20_000, blue
    if os.environ.get("GRADGUARD_UPDATE_SCREENSHOT"):
        SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shot, SCREENSHOT)


# --- the timeline the charts are drawn from -----------------------------------------------


def test_the_timeline_bins_by_time_and_widens_its_bins_to_stay_bounded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import json

    from gradguard._audit import _timeline

    monkeypatch.setattr(_timeline, "MAX_BINS", 10)
    events = [call(timestamp=f"2026-11-27T10:{m:02d}:{s:02d}Z") for m in range(30) for s in (0, 30)]
    events.append(call(timestamp="2026-13-45T25:61:61Z"))  # counted, on no time axis
    events.append(call(timestamp=None))
    timeline = _timeline.Timeline()
    timeline.feed([json.dumps(e).encode() for e in events])
    bins = timeline.bins(max_points=150)
    assert len(bins) <= 10
    assert [b.start.minute for b in bins] == [0, 10, 20]  # widened to ten minutes
    assert sum(b.summary.totals.calls for b in bins) == 60
    assert [b.summary.totals.calls for b in bins] == [20, 20, 20]
    assert len(timeline.bins(max_points=2)) == 1  # then to the hour
