"""Render every page of the built book in headless Chromium and fail on what a reader would stumble on.

    .venv/bin/python tools/check_book.py [--html _build/html] [--screenshots _build/screenshots] [PAGE ...]

Each page is served from a local HTTP server and loaded at 1280 px (and the pages named in PHONE_PAGES also at
390 px). A page fails on:

- horizontal overflow of the main column: an element that reaches past the column's right edge, or a
  scrolling box in the column whose content is wider than the box (a table or output the reader must scroll);
  a table's own box may scroll, by design (``div.equinb-table`` at any width, a Markdown table on a phone), but
  not a table of verdicts at 1280 px;
- a word or number broken across lines in a table header or a numeric cell, or (at 1280 px) a cell of running
  text (8 words or more) squeezed narrower than 10 em;
- an image that is missing or did not decode, or (at 1280 px) a figure drawn more than 15% wider than it is
  shown (its text shrinks with it);
- a link to a file of the book (a page, a CSV) that does not load;
- a MathJax error (an ``mjx-merror`` element, or TeX source left unrendered);
- ``NaN`` in a rendered table cell;
- a request for anything outside the local server (the book must render offline).

One screenshot per page and width is saved under ``--screenshots``. Needs Chromium (Debian: ``apt install
chromium``) and the ``playwright`` package (``pip install -e .[browser]``); ``make check-book`` runs this.
Exit status 0 when every page passes, 1 otherwise, 2 when the browser or the book is missing.
"""

from __future__ import annotations

import argparse
import functools
import http.server
import shutil
import sys
import threading
from pathlib import Path
from urllib.parse import urlparse

from equinb.tables import PROSE_WORDS

ROOT = Path(__file__).resolve().parents[1]
WIDTHS = {"desktop": 1280, "phone": 390}
# the pages read on a phone: the key tables, the longest prose (paths, URLs) and a chapter with wide outputs
PHONE_PAGES = ("index.html", "book/summary.html", "book/deviations.html", "book/bibliography.html",
               "notebooks/fig6_nlg_fairness.html", "notebooks/own_model.html")
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]
SKIP = ("genindex.html", "search.html", "_static/", "_sources/", "_images/")

# Runs in the page: every link to a file of the book (same server, fragment dropped) must load.
LINK_CHECKS = r"""
async () => {
  const targets = new Set();
  for (const a of document.querySelectorAll('a[href]')) {
    const url = new URL(a.getAttribute('href'), document.baseURI);
    if (url.origin !== location.origin) continue;
    url.hash = '';
    targets.add(url.href);
  }
  const problems = [];
  for (const target of targets) {
    try {
      const response = await fetch(target, {method: 'HEAD'});
      if (!response.ok) problems.push(`broken link: ${target.replace(location.origin, '')} (${response.status})`);
    } catch (error) {
      problems.push(`broken link: ${target.replace(location.origin, '')} (${error})`);
    }
  }
  return problems;
}
"""

# Runs in the page; returns the problems it finds as strings.
PAGE_CHECKS = r"""
() => {
  const problems = [];
  const main = document.querySelector('main#main-content article') || document.querySelector('main') || document.body;
  const right = main.getBoundingClientRect().right + 1;
  const describe = (el) => {
    const text = (el.innerText || el.textContent || '').trim().replace(/\s+/g, ' ').slice(0, 60);
    return `<${el.tagName.toLowerCase()}${el.className ? ' class="' + el.className + '"' : ''}> "${text}"`;
  };
  const reported = new Set();
  for (const el of main.querySelectorAll('*')) {
    // inside a MathJax box only the box itself is checked
    if (el.parentElement && el.parentElement.closest('mjx-container')) continue;
    const style = getComputedStyle(el);
    if (style.display === 'none' || style.visibility === 'hidden') continue;
    const box = el.getBoundingClientRect();
    if (box.width === 0 || box.height === 0) continue;
    const scrolls = ['auto', 'scroll'].includes(style.overflowX);
    // a table's own box scrolls, by design (a wide table at any width, a Markdown table on a phone)
    const tableBox = el.classList.contains('equinb-table') ||
                     (el.classList.contains('pst-scrollable-table-container') && window.innerWidth < 600);
    if (scrolls && el.scrollWidth > el.clientWidth + 1) {
      reported.add(el);  // what it holds is scrolled, not overflowing: its descendants are not checked
      // a verdict table is what a reader came for: on a desktop column its verdicts are never scrolled out of view
      const verdicts = [...el.querySelectorAll('th')].some((th) => th.textContent.trim().startsWith('verdict'));
      if (tableBox && verdicts && window.innerWidth >= 1000) {
        problems.push(`verdict table scrolls sideways: ${describe(el)} ` +
                      `(${el.scrollWidth} px of content in ${el.clientWidth} px)`);
        continue;
      }
      if (tableBox) continue;
      problems.push(`overflow: ${describe(el)} scrolls sideways ` +
                    `(${el.scrollWidth} px of content in ${el.clientWidth} px)`);
      continue;
    }
    if (box.right > right && ![...reported].some((r) => r.contains(el))) {
      let clipped = false;  // inside a box that clips it without scrolling: not visible, not an overflow
      for (let p = el.parentElement; p && p !== main; p = p.parentElement) {
        if (reported.has(p)) { clipped = true; break; }
      }
      if (!clipped) {
        problems.push(`overflow: ${describe(el)} ends at ${Math.round(box.right)} px, ` +
                      `past the column's ${Math.round(right)} px`);
        reported.add(el);
      }
    }
  }
  for (const img of document.querySelectorAll('img')) {
    if (!img.complete || img.naturalWidth === 0) problems.push(`broken image: ${img.getAttribute('src')}`);
    else if (!img.getAttribute('alt')) problems.push(`image without alt text: ${img.getAttribute('src')}`);
    // on a desktop column (a phone scales every figure down, by necessity)
    else if (window.innerWidth >= 1000 && img.clientWidth > 0 && img.naturalWidth > 1.15 * img.clientWidth + 10) {
      const scale = Math.round(100 * img.clientWidth / img.naturalWidth);
      problems.push(`figure drawn ${img.naturalWidth} px wide, shown at ${img.clientWidth} px ` +
                    `(its text at ${scale}%): ${img.getAttribute('src')}`);
    }
  }
  const numeric = /^[\s\d.,+\-−—%±×()\[\]en=/:]*\d[\s\d.,+\-−—%±×()\[\]en=/:]*$/;
  for (const cell of main.querySelectorAll('table th, table td')) {
    if (cell.tagName === 'TD' && !cell.classList.contains('num') && !numeric.test(cell.textContent)) continue;
    const walker = document.createTreeWalker(cell, NodeFilter.SHOW_TEXT);
    for (let node = walker.nextNode(); node; node = walker.nextNode()) {
      for (const match of node.textContent.matchAll(/\S+/g)) {
        const range = document.createRange();
        range.setStart(node, match.index);
        range.setEnd(node, match.index + match[0].length);
        const lines = new Set([...range.getClientRects()].map((r) => Math.round(r.top)));
        if (lines.size > 1) problems.push(`"${match[0]}" broken across lines in ${describe(cell)}`);
      }
    }
  }
  // running text in a table cell (a claim, a reason) keeps a readable width instead of a column of single words
  // (on a desktop column; on a phone every table is a compromise between scrolling and wrapping)
  for (const cell of window.innerWidth >= 1000 ? main.querySelectorAll('table td') : []) {
    const width = cell.getBoundingClientRect().width;
    const em = parseFloat(getComputedStyle(cell).fontSize);
    if (cell.textContent.trim().split(/\s+/).length >= PROSE_WORDS && width > 0 && width < 10 * em) {
      problems.push(`text squeezed to ${Math.round(width)} px (${(width / em).toFixed(1)} em) in ${describe(cell)}`);
    }
  }
  for (const err of document.querySelectorAll('mjx-merror, .MathJax_Error')) {
    problems.push(`MathJax error: ${err.textContent.trim().slice(0, 80)}`);
  }
  for (const el of main.querySelectorAll('p, li, td')) {
    if (/\$[^$]*\\[a-zA-Z]+[^$]*\$/.test(el.textContent) && !el.closest('pre, code, .highlight')) {
      problems.push(`unrendered TeX: ${describe(el)}`);
    }
  }
  for (const cell of main.querySelectorAll('table td, table th')) {
    if (/^\s*(NaN|nan)\s*$/.test(cell.textContent)) problems.push(`NaN in a table: ${describe(cell.closest('table'))}`);
  }
  return [...new Set(problems)];
}
""".replace("PROSE_WORDS", str(PROSE_WORDS))  # running text, as equinb.tables marks it


def pages(html: Path, only: list[str]) -> list[str]:
    """The book's pages, relative to ``html``, in a stable order (or the ones named)."""
    found = sorted(str(p.relative_to(html)) for p in html.rglob("*.html"))
    found = [p for p in found if not any(p.startswith(s) or p == s for s in SKIP)]
    return [p for p in found if not only or p in only]


def serve(html: Path) -> tuple[http.server.ThreadingHTTPServer, str]:
    handler = functools.partial(_QuietHandler, directory=str(html))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}/"


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:  # one line per request would bury the report
        pass


def check(html: Path, screenshots: Path, only: list[str], chromium: str) -> dict[str, list[str]]:
    """Problems per "page @ width"; an empty list means the page passed at that width."""
    from playwright.sync_api import sync_playwright

    server, base = serve(html)
    screenshots.mkdir(parents=True, exist_ok=True)
    report: dict[str, list[str]] = {}
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=chromium, args=CHROMIUM_FLAGS)
            for name, width in WIDTHS.items():
                page = browser.new_page(viewport={"width": width, "height": 900})
                external: list[str] = []
                page.on("request", lambda r: external.append(r.url) if _is_external(r.url, base) else None)
                # the link checks' own requests report their failures themselves
                page.on("requestfailed", lambda r: external.append(f"failed: {r.url}")
                        if r.resource_type != "fetch" else None)
                for rel in pages(html, only):
                    if name == "phone" and rel not in PHONE_PAGES:
                        continue
                    external.clear()
                    page.goto(base + rel, wait_until="networkidle")
                    page.wait_for_function("() => !window.MathJax || !window.MathJax.startup || "
                                           "window.MathJax.startup.promise !== undefined", timeout=10_000)
                    page.evaluate("() => window.MathJax && MathJax.startup ? MathJax.startup.promise : null")
                    problems = page.evaluate(PAGE_CHECKS)
                    if name == "desktop":  # the links are the same at every width
                        problems += page.evaluate(LINK_CHECKS)
                    problems += [f"request outside the book: {url}" for url in external]
                    report[f"{rel} @ {width}px"] = problems
                    shot = screenshots / f"{rel.replace('/', '__').removesuffix('.html')}.{name}.png"
                    page.screenshot(path=str(shot), full_page=True)
                page.close()
            browser.close()
    finally:
        server.shutdown()
        server.server_close()  # the listening socket, which shutdown() leaves open
    return report


def _is_external(url: str, base: str) -> bool:
    parsed = urlparse(url)
    return parsed.scheme not in ("data", "blob", "about") and not url.startswith(base)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("pages", nargs="*", help="pages relative to --html (default: all)")
    parser.add_argument("--html", type=Path, default=ROOT / "_build" / "html",
                        help="the built book (default: _build/html)")
    parser.add_argument("--screenshots", type=Path, default=ROOT / "_build" / "screenshots",
                        help="where the screenshots go (default: _build/screenshots)")
    parser.add_argument("--chromium", default=shutil.which("chromium") or "/usr/bin/chromium",
                        help="the browser (default: chromium on PATH)")
    args = parser.parse_args(argv)
    if not (args.html / "index.html").is_file():
        print(f"check-book: no built book at {args.html}; run `make book` first", file=sys.stderr)
        return 2
    if not Path(args.chromium).is_file():
        print(f"check-book: Chromium not found at {args.chromium}; install it (Debian: `sudo apt install "
              "chromium`) or pass --chromium PATH", file=sys.stderr)
        return 2
    try:
        import playwright  # noqa: F401
    except ImportError:
        print("check-book: the playwright package is missing; run `.venv/bin/pip install -e .[browser]`",
              file=sys.stderr)
        return 2
    report = check(args.html, args.screenshots, args.pages, args.chromium)
    failed = {page: problems for page, problems in report.items() if problems}
    for page, problems in report.items():
        print(f"{'FAIL' if problems else 'ok  '} {page}")
        for problem in problems[:20]:
            print(f"       {problem}")
        if len(problems) > 20:
            print(f"       ... and {len(problems) - 20} more")
    print(f"check-book: {len(report) - len(failed)} of {len(report)} page views pass; "
          f"screenshots in {args.screenshots}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
