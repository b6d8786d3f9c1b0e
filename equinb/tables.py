"""Tables of the book: a DataFrame shown without its row index, with a caption, and glued for other pages.

``Table`` carries both renderings a notebook stores: text (``frame.to_string``, compared by the notebook
regression) and HTML (a ``<table>`` inside a box that scrolls sideways on a narrow screen, headers that wrap only
between words, numbers that never wrap, running text that keeps a readable width). ``show`` displays one;
``publish_verdicts`` shows a chapter's verdict table and glues it, and its rows as JSON, for the summary page and
the claim list.

After ``start_chapter(<id>)``, ``show`` numbers the tables as the book numbers the chapter ("Table 2.3"), and
when ``$EQUINB_DATA_OUT`` names a folder (``make book`` sets it) it writes each table's numbers there as
``<chapter>/table-<k>.csv`` and links the file from the caption; ``save_data`` does the same for a figure's data.
"""

from __future__ import annotations

import copy
import html
import json
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .cache import atomic_write_text
from .chapter import changed_parameters
from .verdicts import MARGINS_KEY, NEEDS_OTHER_SETTING, NOT_TESTED, VERDICT_COLUMN

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["Table", "Link", "show", "publish_verdicts", "glued_json", "glued_cell_tags", "start_chapter", "save_data",
           "VERDICTS_KEY", "CLAIMS_KEY", "RUNNABLE_KEY", "DATA_ENV"]

VERDICTS_KEY = "verdicts"  # the glued verdict table of a chapter
CLAIMS_KEY = "verdicts_json"  # the same rows as JSON, read by the claim list
RUNNABLE_KEY = "verdicts_runnable"  # the rows of claims this profile runs, for the summary page
_NEEDS_OTHER_SETTING = f"{NOT_TESTED}: {NEEDS_OTHER_SETTING}"  # a verdict from equinb.verdicts.not_in_this_run
DATA_ENV = "EQUINB_DATA_OUT"  # folder for the numbers behind each table and figure (unset: none written)
TOC = Path(__file__).resolve().parents[1] / "_toc.yml"  # the book's table of contents, in a source checkout
_chapter: dict = {"id": None, "prefix": "", "count": 0, "changed": ""}  # the running chapter: numbering, parameters
# A cell that holds only numbers (and their signs, brackets, units): it never wraps inside a number.
_NUMERIC = re.compile(r"^[\s\d.,+\-−—%±×()\[\]en=/:]*$")
# A cell of running text (a claim, a reason): it keeps a readable width when its table is wider than the column.
PROSE_WORDS = 8  # tools/check_book.py checks the same cells in the rendered book


class Link(str):
    """A table cell that links to ``href`` in HTML (its text alone elsewhere)."""

    href: str

    def __new__(cls, text: str, href: str) -> "Link":
        link = super().__new__(cls, text)
        link.href = href
        return link


def _cell(value: Any, decimals: int) -> str:
    if isinstance(value, float):
        return "—" if value != value else f"{value:.{decimals}f}"
    if isinstance(value, Link):
        return value
    return "—" if value is None else str(value)


def _header(name: Any) -> str:
    """A column name as a reader sees it: ``prefinetune_top1`` -> ``prefinetune top-1`` (the data keep theirs)."""
    return re.sub(r"\bf1\b", "F1", re.sub(r"\btop(\d)\b", r"top-\1", str(name).replace("_", " ")))


class Table:
    """A DataFrame for display: no row index, a caption, floats with ``decimals`` decimals, "—" for a missing
    value. ``hidden`` columns are kept in ``frame`` (and glued JSON) but not shown. ``beneath``: columns shown in
    HTML as a small second line of another column's cell (``{"noise": "95% interval"}``: each row's noise under
    its interval, as "noise: ..."), so that a table of seven columns fits the book's column; the text form and
    the data keep them as columns of their own."""

    def __init__(self, frame: pd.DataFrame, caption: str = "", decimals: int = 2, hidden: tuple[str, ...] = (),
                 beneath: dict[str, str] | None = None) -> None:
        self.frame = frame.reset_index(drop=True)
        self.caption = caption
        self.decimals = decimals
        self.hidden = tuple(hidden)
        self.beneath = {guest: host for guest, host in (beneath or {}).items()
                        if guest in self.frame.columns and host in self.frame.columns}
        self.data_href = ""  # a CSV of the numbers, linked from the HTML caption when set

    def _shown(self) -> pd.DataFrame:
        shown = self.frame.drop(columns=[c for c in self.hidden if c in self.frame.columns])
        shown = shown.apply(lambda column: column.map(lambda v: _cell(v, self.decimals)))
        headers = [_header(c) for c in shown.columns]
        if len(set(headers)) < len(headers):
            raise ValueError(f"columns {list(shown.columns)} would be shown with repeated names {headers}")
        return shown.set_axis(headers, axis=1)

    @staticmethod
    def _html_cell(value: str, notes: tuple[tuple[str, str], ...] = ()) -> str:
        """One cell; ``notes``: (header, value) pairs of the columns shown beneath it ("—" ones left out)."""
        below = "".join(f'<div class="equinb-beneath">{html.escape(name)}: {html.escape(note)}</div>'
                        for name, note in notes if note != "—")
        if isinstance(value, Link):
            return f'<td><a href="{html.escape(value.href)}">{html.escape(value)}</a>{below}</td>'
        cls = ' class="num"' if _NUMERIC.match(value) else ' class="text"' if len(value.split()) >= PROSE_WORDS else ""
        return f"<td{cls}>{html.escape(value)}{below}</td>"

    def __repr__(self) -> str:
        text = self._shown().to_string(index=False)
        return f"{self.caption}\n{text}" if self.caption else text

    def _repr_html_(self) -> str:
        shown = self._shown()
        guests = {_header(guest): _header(host) for guest, host in self.beneath.items()
                  if _header(guest) in shown and _header(host) in shown}
        columns = [c for c in shown.columns if c not in guests]
        # a hyphenated word (top-1) is one word: browsers may break a header after its hyphen
        head = "".join("<th>" + re.sub(r"(\S*\w-\w\S*)", r'<span class="equinb-nowrap">\1</span>',
                                       html.escape(str(c))) + "</th>" for c in columns)
        rows = "".join("<tr>" + "".join(self._html_cell(row[c], tuple((g, row[g]) for g, h in guests.items()
                                                                        if h == c)) for c in columns) + "</tr>"
                       for _, row in shown.iterrows())
        link = f' <a class="equinb-data" href="{html.escape(self.data_href)}">data (CSV)</a>' if self.data_href else ""
        caption = f"<caption>{html.escape(self.caption)}{link}</caption>" if self.caption or link else ""
        return (f'<div class="equinb-table"><table class="equinb">{caption}<thead><tr>{head}</tr></thead>'
                f"<tbody>{rows}</tbody></table></div>")


class Collapsed:
    """A ``Table`` shown folded in HTML (a ``<details>`` box that opens on a click, its caption as the summary), for
    long lists a reader rarely needs; its text form is the table's."""

    def __init__(self, table: Table) -> None:
        self.table = table

    def __repr__(self) -> str:
        return repr(self.table)

    def _repr_html_(self) -> str:
        inner = copy.copy(self.table)
        inner.caption = ""  # the summary line is the caption: an open box would show it twice (its CSV link stays)
        return (f'<details class="equinb-collapsed"><summary>{html.escape(self.table.caption)} (click to show)'
                f"</summary>{inner._repr_html_()}</details>")


def chapter_number(chapter_id: str, toc: Path = TOC) -> int | None:
    """The number the book gives chapter ``chapter_id`` (its place among the numbered parts of ``_toc.yml``), or
    None (an unnumbered page, or no table of contents next to the package)."""
    import yaml

    if not toc.is_file():
        return None
    numbered = [entry["file"].rsplit("/", 1)[-1] for part in yaml.safe_load(toc.read_text()).get("parts", [])
                if part.get("numbered") for entry in part.get("chapters", [])]
    return numbered.index(chapter_id) + 1 if chapter_id in numbered else None


def start_chapter(chapter_id: str) -> None:
    """Number the tables that follow as the book numbers ``chapter_id`` ("Table 2.1", "Table 2.2", ...; "Table 1",
    ... on an unnumbered page), and file their data under ``$EQUINB_DATA_OUT/<chapter_id>/``. A run with changed
    parameters (``equinb.chapter.changed_parameters``) says so here and in every table's caption."""
    number = chapter_number(chapter_id)
    changed = changed_parameters(chapter_id)
    _chapter.update(id=chapter_id, prefix=f"{number}." if number else "", count=0, changed=changed)
    if changed:
        print(f"this run changed the chapter's parameters: {changed} (the book's numbers are the profile's own run)")


def save_data(frame: pd.DataFrame, name: str) -> str:
    """Write ``frame``'s numbers to ``$EQUINB_DATA_OUT/<chapter>/<name>.csv`` when that folder is set (a book build)
    and a chapter was started; returns the link to it from the chapter's page ("" when nothing was written)."""
    folder = os.environ.get(DATA_ENV)
    if not folder or not _chapter["id"]:
        return ""
    path = Path(folder) / _chapter["id"] / f"{name}.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, frame.to_csv(index=False))
    return f"../data/{_chapter['id']}/{name}.csv"


def _numbered(table: Table, computed: bool = True) -> Table:
    """``table`` with the next number of the running chapter in its caption and its data filed, if one started.
    ``computed``: the table holds this run's results, so a run with changed parameters says so in its caption (the
    article's own numbers do not change with them)."""
    if not _chapter["id"]:
        return table
    _chapter["count"] += 1
    label = f"Table {_chapter['prefix']}{_chapter['count']}"
    table.caption = f"{label}. {table.caption}" if table.caption else label
    if computed and _chapter.get("changed"):
        table.caption += f" [changed parameters: {_chapter['changed']}]"
    table.data_href = save_data(table.frame, f"table-{_chapter['count']}")
    return table


def show(frame: pd.DataFrame, caption: str = "", decimals: int = 2, hidden: tuple[str, ...] = (),
         beneath: dict[str, str] | None = None, computed: bool = True) -> None:
    """Display ``frame`` as a ``Table`` in a notebook (returns nothing, so a cell does not show it twice);
    ``computed=False`` for a table of the article's numbers alone (``_numbered``)."""
    from IPython.display import display

    display(_numbered(Table(frame, caption, decimals, hidden, beneath), computed))


# a verdict table's columns shown under another's cell in HTML (``Table``'s ``beneath``): five columns fit the page
VERDICT_BENEATH = {"tested as": "claim", "noise": "95% interval"}


def publish_verdicts(rows: list[dict], profile: str, chapter: str, caption: str) -> None:
    """Show a chapter's verdict rows (``equinb.verdicts.verdict_row``), and glue them: the table under
    ``VERDICTS_KEY`` and the rows with the profile and the chapter under ``CLAIMS_KEY`` (JSON).

    The claims this profile can run come first, in full; those that need settings it does not run follow in a
    short table of their own (claim, article, reason), so that the verdicts are not lost among them. The summary
    page gets the first table (``RUNNABLE_KEY``)."""
    import pandas as pd
    from myst_nb import glue

    from IPython.display import display

    hidden = ("id", "changed", MARGINS_KEY)
    everything = Table(pd.DataFrame(rows), f"{caption} (profile: {profile})", hidden=hidden, beneath=VERDICT_BENEATH)
    elsewhere = [str(row.get(VERDICT_COLUMN, "")).startswith(_NEEDS_OTHER_SETTING) for row in rows]
    runnable = [row for row, other in zip(rows, elsewhere) if not other]
    others = [row for row, other in zip(rows, elsewhere) if other]
    note = f"; {len(others)} more need settings this profile does not run" if others else ""
    first = _numbered(Table(pd.DataFrame(runnable, columns=everything.frame.columns), everything.caption + note,
                            hidden=hidden, beneath=VERDICT_BENEATH))
    display(first)
    if others:
        short = pd.DataFrame(others)[[c for c in ("claim", "article", VERDICT_COLUMN) if c in others[0]]]
        display(Collapsed(_numbered(Table(short, f"{caption}: the {len(others)} claims that need settings this "
                                                 f"profile does not run (profile: {profile}; the claim list has them "
                                                 "all)"))))
    glue(VERDICTS_KEY, everything, display=False)
    glue(RUNNABLE_KEY, Table(first.frame, first.caption + (" (the claim list has them)" if others else ""),
                             hidden=hidden, beneath=VERDICT_BENEATH), display=False)
    label = f"{profile} ({_chapter['changed']})" if _chapter.get("changed") else profile
    glue(CLAIMS_KEY, json.dumps([{**row, "profile": label, "chapter": chapter} for row in rows],
                                ensure_ascii=False), display=False)


def _glued(notebook: str | Path, key: str) -> tuple[dict, dict] | None:
    """(the cell, its output) that glued ``key`` in an executed notebook, or None."""
    for cell in json.loads(Path(notebook).read_text()).get("cells", []):
        for output in cell.get("outputs", []):
            if output.get("metadata", {}).get("scrapbook", {}).get("name") == key:
                return cell, output
    return None


def glued_json(notebook: str | Path, key: str = CLAIMS_KEY) -> Any:
    """The value glued under ``key`` as JSON text in an executed notebook (``publish_verdicts``' rows), or None
    when the notebook has no such output."""
    import ast

    found = _glued(notebook, key)
    if found is None:
        return None
    text = found[1]["data"]["application/papermill.record/text/plain"]
    return json.loads(ast.literal_eval("".join(text) if isinstance(text, list) else text))


def glued_cell_tags(notebook: str | Path, key: str = CLAIMS_KEY) -> list[str] | None:
    """The tags of the cell that glued ``key`` in an executed notebook (its ``tolerance-<class>`` says how far
    its numbers may move between CPUs), or None when no cell did."""
    found = _glued(notebook, key)
    return None if found is None else list(found[0].get("metadata", {}).get("tags", []))
