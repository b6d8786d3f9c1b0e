"""The chapters' prose states no result that the chapter does not compute or the article does not report.

Every number written in a chapter's markdown (a decimal or a percentage) must be among the chapter's own committed
outputs or the article's reference numbers (``equinb/article_numbers.csv``, at the precision printed), or be
listed below with the article sentence it quotes. Section numbers, durations and interval levels are not results.
"""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import pytest

from test_notebooks import chapter_ids

ROOT = Path(__file__).resolve().parents[1]
NUMBER = re.compile(r"(?<![\w.§])(\d+\.\d+|\d+)(%?)")
NOT_RESULTS = re.compile(  # section numbers, durations, interval levels, bin edges, sizes and counts of settings
    r"(§|section |sec\. |Appendix |Table |Figure |A\.|B\.|bin \[[\d., ]*)$|^\s*(minutes?|s\b|px|pp per|GB|MB|bits?)")
# Numbers of the article's text that its reference table does not hold, with the claim they come from.
QUOTED = {
    "tab1_original_vs_updated": {"11.12", "9.28"},  # the article's text: relative gains of 11.12% and 9.28%
}


def _reference_values() -> set[str]:
    values = set()
    with (ROOT / "equinb" / "article_numbers.csv").open(newline="") as handle:
        for row in csv.DictReader(handle):
            v = float(row["value"])
            values |= {f"{v:.0f}", f"{v:.1f}", f"{v:.2f}", f"{v:.3f}", f"{100 * v:.0f}", f"{100 * v:.1f}",
                       f"{100 * v:.2f}", row["value"]}
    return values


def _output_values(nb: dict) -> set[str]:
    text = ""
    for cell in nb["cells"]:
        for out in cell.get("outputs", []):
            text += "".join(out.get("text", "")) + "".join(out.get("data", {}).get("text/plain", ""))
            text += "".join(out.get("data", {}).get("text/html", ""))
    values = set()
    for match in re.finditer(r"\d+(?:\.\d+)?", text):  # as printed, and rounded to fewer decimals (prose rounds)
        printed = match.group()
        decimals = len(printed.partition(".")[2])
        values |= {printed, *(f"{float(printed):.{d}f}" for d in range(decimals))}
    return values


def unbacked_numbers(nb: dict, allowed: set[str]) -> list[str]:
    """The numbers in a notebook's markdown cells that neither its outputs nor ``allowed`` hold, in context."""
    known = _output_values(nb) | allowed
    found = []
    for cell in nb["cells"]:
        if cell["cell_type"] != "markdown":
            continue
        text = "".join(cell["source"])
        for match in NUMBER.finditer(text):
            number, percent = match.groups()
            before, after = text[max(0, match.start() - 12):match.start()], text[match.end():match.end() + 12]
            if "." not in number and not percent:
                continue  # integers without % are counts and settings (20 rounds, 4 views), not results
            if NOT_RESULTS.search(before) or NOT_RESULTS.search(after) or after.startswith((" interval", " CI")):
                continue
            if number not in known:
                found.append(f"...{before}{match.group()}{after}...")
    return found


@pytest.mark.parametrize("nb_id", chapter_ids())
def test_every_number_in_a_chapters_notes_is_computed_or_quoted(nb_id: str) -> None:
    nb = json.loads((ROOT / "notebooks" / f"{nb_id}.ipynb").read_text())
    found = unbacked_numbers(nb, _reference_values() | QUOTED.get(nb_id, set()))
    assert not found, f"notebooks/{nb_id}: numbers in the notes that no output or reference holds: {found}"


def test_the_check_flags_a_typed_number() -> None:
    nb = json.loads((ROOT / "notebooks" / "tab1_original_vs_updated.ipynb").read_text())
    nb["cells"].append({"cell_type": "markdown", "metadata": {}, "source": ["The updated code wins by 87.65 pp."]})
    assert any("87.65" in f for f in unbacked_numbers(nb, _reference_values()))


def test_a_number_counts_only_as_printed_or_rounded_from_a_printed_one() -> None:
    """A prose number more precise than the output it would round to is not backed by it (0.987 is not 0.99
    printed, nor 1.0); one rounded from a printed number is."""
    nb = {"cells": [{"cell_type": "code", "outputs": [{"text": "mean weight 0.99, error 12.345\n"}]},
                    {"cell_type": "markdown", "source": ["Its mean weight is 0.987 and its error 12.35 (or 12.3)."]}]}
    assert [f.split("is ")[-1][:5] if "0.987" in f else f for f in unbacked_numbers(nb, set())] == ["0.987"]


def test_the_deviations_index_lists_every_deviation_once() -> None:
    text = (ROOT / "book" / "deviations.md").read_text()
    labels = re.findall(r"^\((dev-[a-z0-9]+)\)=$", text, flags=re.M)
    index = text.split("## Index", 1)[1].split("\n## ", 1)[0]
    assert sorted(re.findall(r"<(dev-[a-z0-9]+)>`", index)) == sorted(labels) and len(set(labels)) == len(labels)
