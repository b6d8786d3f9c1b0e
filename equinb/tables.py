"""Tables of the book: a DataFrame shown without its row index, with a caption, and glued for other pages.

``Table`` carries both renderings a notebook stores: text (``frame.to_string``, compared by the notebook
regression) and HTML (a ``<table>`` inside a box that scrolls sideways on a narrow screen, headers that wrap only
between words, numbers that never wrap). ``show`` displays one; ``publish_verdicts`` shows a chapter's verdict
table and glues it, and its rows as JSON, for the summary page and the claim list.
"""

from __future__ import annotations

import html
import json
import re
from pathlib import Path
from typing import Any

__all__ = ["Table", "Link", "show", "publish_verdicts", "glued_json", "VERDICTS_KEY", "CLAIMS_KEY"]

VERDICTS_KEY = "verdicts"  # the glued verdict table of a chapter
CLAIMS_KEY = "verdicts_json"  # the same rows as JSON, read by the claim list
# A cell that holds only numbers (and their signs, brackets, units): it never wraps inside a number.
_NUMERIC = re.compile(r"^[\s\d.,+\-−—%±×()\[\]en=/:]*$")


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


class Table:
    """A DataFrame for display: no row index, a caption, floats with ``decimals`` decimals, "—" for a missing
    value. ``hidden`` columns are kept in ``frame`` (and glued JSON) but not shown."""

    def __init__(self, frame, caption: str = "", decimals: int = 2, hidden: tuple[str, ...] = ()) -> None:
        self.frame = frame.reset_index(drop=True)
        self.caption = caption
        self.decimals = decimals
        self.hidden = tuple(hidden)

    def _shown(self):
        shown = self.frame.drop(columns=[c for c in self.hidden if c in self.frame.columns])
        return shown.apply(lambda column: column.map(lambda v: _cell(v, self.decimals)))

    @staticmethod
    def _html_cell(value: str) -> str:
        if isinstance(value, Link):
            return f'<td><a href="{html.escape(value.href)}">{html.escape(value)}</a></td>'
        cls = ' class="num"' if _NUMERIC.match(value) else ""
        return f"<td{cls}>{html.escape(value)}</td>"

    def __repr__(self) -> str:
        text = self._shown().to_string(index=False)
        return f"{self.caption}\n{text}" if self.caption else text

    def _repr_html_(self) -> str:
        shown = self._shown()
        head = "".join(f"<th>{html.escape(str(c))}</th>" for c in shown.columns)
        rows = "".join("<tr>" + "".join(self._html_cell(v) for v in row) + "</tr>"
                       for row in shown.itertuples(index=False))
        caption = f"<caption>{html.escape(self.caption)}</caption>" if self.caption else ""
        return (f'<div class="equinb-table"><table class="equinb">{caption}<thead><tr>{head}</tr></thead>'
                f"<tbody>{rows}</tbody></table></div>")


def show(frame, caption: str = "", decimals: int = 2, hidden: tuple[str, ...] = ()) -> None:
    """Display ``frame`` as a ``Table`` in a notebook (returns nothing, so a cell does not show it twice)."""
    from IPython.display import display

    display(Table(frame, caption, decimals, hidden))


def publish_verdicts(rows: list[dict], profile: str, chapter: str, caption: str) -> None:
    """Show a chapter's verdict rows (``equinb.verdicts.verdict_row``), and glue them: the table under
    ``VERDICTS_KEY`` and the rows with the profile and the chapter under ``CLAIMS_KEY`` (JSON)."""
    import pandas as pd
    from myst_nb import glue

    from IPython.display import display

    table = Table(pd.DataFrame(rows), f"{caption} (profile: {profile})", hidden=("id", "changed"))
    display(table)
    glue(VERDICTS_KEY, table, display=False)
    glue(CLAIMS_KEY, json.dumps([{**row, "profile": profile, "chapter": chapter} for row in rows],
                                ensure_ascii=False), display=False)


def glued_json(notebook: str | Path, key: str = CLAIMS_KEY) -> Any:
    """The value glued under ``key`` as JSON text in an executed notebook (``publish_verdicts``' rows), or None
    when the notebook has no such output."""
    import ast

    cells = json.loads(Path(notebook).read_text()).get("cells", [])
    for cell in cells:
        for output in cell.get("outputs", []):
            if output.get("metadata", {}).get("scrapbook", {}).get("name") == key:
                text = output["data"]["application/papermill.record/text/plain"]
                return json.loads(ast.literal_eval("".join(text) if isinstance(text, list) else text))
    return None
