"""Every number a committed notebook prints has a class: exact by design, or a measured tolerance class.

The notebook regression compares a cell's numbers exactly unless the cell is tagged ``tolerance-<class>``; a cell
that prints numbers must say which it is (``exact``: settings, counts by design, the article's numbers, errors
printed as bounds; or a class of ``equinb/noise_measured.json``), so that no number is compared exactly by accident.
Cells whose output is not compared at all (``nbval-ignore-output``, timings) are exempt.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from equinb.noise import NOTE_MARKER, split_numbers, tolerances

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))
EXEMPT = {"nbval-ignore-output", "nbval-skip"}


def cell_numbers(cell: dict) -> list[str]:
    """The numbers of a code cell's text outputs (streams and every text mime type, glued values included)."""
    text = ""
    for out in cell.get("outputs", []):
        text += "".join(out.get("text", ""))
        text += "".join("".join(v) for k, v in out.get("data", {}).items() if k.endswith("text/plain"))
    text = "".join(line for line in text.splitlines(True) if NOTE_MARKER not in line)
    return split_numbers(text)[1]


def class_problem(cell: dict, known: set[str]) -> str | None:
    """Why a cell's numbers have no class (None: they have one)."""
    tags = set(cell.get("metadata", {}).get("tags", []))
    if tags & EXEMPT or not cell_numbers(cell):
        return None
    classes = [t for t in tags if t == "exact" or t.startswith("tolerance-")]
    if len(classes) != 1:
        return (f"prints {len(cell_numbers(cell))} numbers with classes {classes or 'none'}: tag it exact or "
                "tolerance-<class>")
    if classes[0].startswith("tolerance-") and classes[0][len("tolerance-"):] not in known:
        return f"unknown tolerance class {classes[0]}; known: {sorted(known)}"
    return None


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.stem)
def test_every_printed_number_has_a_class(notebook: Path) -> None:
    known = set(tolerances())
    cells = json.loads(notebook.read_text())["cells"]
    problems = [f"cell {i} ({''.join(c['source'])[:50]!r}): {p}" for i, c in enumerate(cells)
                if c["cell_type"] == "code" and (p := class_problem(c, known))]
    assert not problems, "\n".join(problems)


def test_the_check_catches_an_untagged_number() -> None:
    cell = {"metadata": {"tags": []}, "outputs": [{"output_type": "stream", "text": "top-1 93.18\n"}]}
    assert "classes none" in class_problem(cell, {"top1"})
    assert class_problem({**cell, "metadata": {"tags": ["tolerance-top1"]}}, {"top1"}) is None
    assert "unknown tolerance class" in class_problem({**cell, "metadata": {"tags": ["tolerance-x"]}}, {"top1"})
    assert class_problem({**cell, "metadata": {"tags": ["exact"]}}, set()) is None
    glued = {"metadata": {"tags": []}, "outputs": [{"output_type": "display_data", "data": {
        "application/papermill.record/text/plain": "1.4e-05"}}]}
    assert class_problem(glued, set()) is not None  # a glued value is compared too
