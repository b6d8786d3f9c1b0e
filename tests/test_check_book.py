"""tools/check_book.py in a real browser: a clean page passes, each kind of defect fails (skipped without Chromium)."""

from __future__ import annotations

import importlib.util
import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
pytestmark = pytest.mark.skipif(
    not Path(CHROMIUM).is_file() or importlib.util.find_spec("playwright") is None,
    reason="needs Chromium (apt install chromium) and playwright (pip install -e .[browser])")
sys.path.insert(0, str(ROOT / "tools"))
import check_book  # noqa: E402

PAGE = """<!doctype html><html><head><meta charset="utf-8"><title>t</title></head><body>
<main id="main-content"><article style="width: 600px">{body}</article></main></body></html>"""
PIXEL = ("data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9aw"
         "AAAABJRU5ErkJggg==")
WIDE = ("data:image/svg+xml;utf8,<svg xmlns='http://www.w3.org/2000/svg' width='1200' height='20'>"
        "<rect width='1200' height='20'/></svg>")
TABLE = "<table><tr><th>a</th><th>b</th></tr><tr><td>1.00</td><td>{cell}</td></tr></table>"


def _report(tmp_path: Path, body: str) -> list[str]:
    html = tmp_path / "html"
    html.mkdir()
    (html / "index.html").write_text(PAGE.format(body=body))
    report = check_book.check(html, tmp_path / "shots", [], CHROMIUM)
    assert (tmp_path / "shots" / "index.desktop.png").is_file()
    return report["index.html @ 1280px"] + report.get("index.html @ 390px", [])


def test_a_clean_page_passes(tmp_path: Path) -> None:
    body = f'<p>fine</p>{TABLE.format(cell="2.00")}<img src="{PIXEL}" alt="one pixel">'
    assert _report(tmp_path, body) == []


@pytest.mark.parametrize("body, problem", [
    (f'<div style="overflow-x: auto">{TABLE.format(cell="x" * 400)}</div>', "scrolls sideways"),
    (f'<div style="width: 1500px">{TABLE.format(cell="2.00")}</div>', "past the column"),
    (TABLE.format(cell="NaN"), "NaN in a table"),
    ('<img src="missing.png" alt="gone">', "broken image"),
    (f'<img src="{PIXEL}">', "image without alt text"),
    ('<img src="http://198.51.100.1/x.png" alt="remote">', "request outside the book"),
    (f'<img src="{WIDE}" alt="wide" style="width: 300px">', "figure drawn 1200 px wide, shown at 300 px"),
    ('<table><tr><th style="width: 30px; word-break: break-all">artifact</th></tr></table>', "broken across lines"),
    ('<table><tr><td class="num" style="width: 20px; word-break: break-all">+36.72</td></tr></table>',
     "broken across lines"),
    ('<table><tr><td style="width: 20px; word-break: break-all">[+3.67, +9.12]</td></tr></table>',
     "broken across lines"),  # a Markdown table's numeric cell, no class
    ('<a href="data/missing.csv">data (CSV)</a>', "broken link: /data/missing.csv (404)"),
    ('<table><tr><td style="width: 40px">on the small profile the claim reads as a column of words</td></tr></table>',
     "text squeezed"),
    ('<div class="equinb-table" style="overflow-x: auto"><table><tr><th>claim</th><th>verdict vs the article</th>'
     f'</tr><tr><td>{"x" * 400}</td><td>agrees</td></tr></table></div>', "verdict table scrolls sideways"),
])
def test_each_defect_fails(tmp_path: Path, body: str, problem: str) -> None:
    problems = _report(tmp_path, body)
    assert any(problem in p for p in problems), problems


def test_another_wide_table_may_scroll_in_its_own_box(tmp_path: Path) -> None:
    body = (f'<div class="equinb-table" style="overflow-x: auto">{TABLE.format(cell="x" * 400)}</div>')
    assert _report(tmp_path, body) == []
