"""Pair the text outputs of two executions of a chapter and list what differs: numbers, or text.

    .venv/bin/python tools/notebook_numbers.py REFERENCE.ipynb OTHER.ipynb [...]   # pairs of notebooks

Prints, per code cell whose outputs differ, the tolerance class it is tagged with (or "exact"; a glued verdict row
whose claim has a unit of its own counts in that unit's class, as the regression compares it), the largest
absolute difference of its numbers, and whether any text between the numbers differs beyond what the
regression allows (adjacent verdict words, such as agrees and inconclusive, may swap: their numbers are paired as
usual). `tools/measure_noise.py` uses the same pairing to derive the tolerances.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass, field
from pathlib import Path

import nbformat

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from nbval_tolerance import GLUED_IMAGES, tolerance_class  # noqa: E402

from equinb.noise import NOTE_MARKER, row_pieces, same_text, split_numbers  # noqa: E402


# cells the regression never compares (timings): a change there is neither noise to measure nor a failure
NOT_COMPARED = {"nbval-ignore-output", "nbval-skip"}


@dataclass
class CellDiff:
    """How one code cell's text outputs differ between two executions."""

    index: int
    tolerance_class: str  # the cell's tolerance tag, "exact", or the class of its glued verdict rows' unit
    pairs: list[tuple[float, float]] = field(default_factory=list)  # (reference, other) numbers that differ
    text_differs: bool = False
    first_line: str = ""

    @property
    def max_abs(self) -> float:
        return max((abs(b - a) for a, b in self.pairs if math.isfinite(a) and math.isfinite(b)), default=0.0)

    @property
    def max_rel(self) -> float:
        return max((abs(b - a) / abs(a) for a, b in self.pairs if math.isfinite(a) and math.isfinite(b) and a),
                   default=0.0)


def _texts(cell) -> list[str]:
    """The text outputs of a code cell that nbval compares (streams joined by name; images, glued ones included,
    left out)."""
    streams: dict[str, str] = {}
    texts: list[str] = []
    for out in cell.get("outputs", []):
        if out.output_type == "stream":
            streams[out.name] = streams.get(out.name, "") + out.text
        elif "data" in out:
            texts += [v for k, v in sorted(out.data.items()) if isinstance(v, str) and not k.startswith("image/")
                      and k not in GLUED_IMAGES and k != "text/html"]
    # the printed tolerances are the measurement's output, not a result: comparing them would feed it back
    texts = [streams[k] for k in sorted(streams)] + texts
    return ["".join(ln for ln in t.splitlines(True) if NOTE_MARKER not in ln) for t in texts]


def diff_notebooks(reference: Path, other: Path) -> list[CellDiff]:
    """Cell-by-cell differences of two executions of the same chapter (cells paired by position)."""
    ref_nb, other_nb = nbformat.read(reference, as_version=4), nbformat.read(other, as_version=4)
    ref_cells = [c for c in ref_nb.cells if "injected-parameters" not in c.metadata.get("tags", [])]
    other_cells = [c for c in other_nb.cells if "injected-parameters" not in c.metadata.get("tags", [])]
    if [c.source for c in ref_cells] != [c.source for c in other_cells]:
        raise ValueError(f"{reference} and {other} are not executions of the same source")
    diffs = []
    for i, (a, b) in enumerate(zip(ref_cells, other_cells)):
        if a.cell_type != "code" or NOT_COMPARED & set(a.metadata.get("tags", [])):
            continue
        cell_class = tolerance_class(a) or "exact"
        by_class = {cell_class: CellDiff(i, cell_class, first_line=a.source.splitlines()[0] if a.source else "")}
        ta, tb = _texts(a), _texts(b)
        if len(ta) != len(tb):
            by_class[cell_class].text_differs = True
        for x, y in zip(ta, tb):
            # a glued verdict row in a unit of its own counts in that unit's class (equinb.noise.snap_rows); an
            # exact cell stays exact
            xp, yp = row_pieces(x), row_pieces(y)
            if [n for _, n in xp] != [n for _, n in yp] or cell_class == "exact":
                xp, yp = [(x, None)], [(y, None)]
            for (xs, name), (ys, _) in zip(xp, yp):
                d = by_class.setdefault(name or cell_class, CellDiff(i, name or cell_class,
                                                                     first_line=by_class[cell_class].first_line))
                xt, xn = split_numbers(xs)
                yt, yn = split_numbers(ys)
                # the regression's own rule (equinb.noise.snap_numbers): verdict words that numbers within
                # tolerance may swap (agrees / inconclusive) do not stop the comparison, so their numbers are
                # measured too: the numbers of a verdict that swapped are the ones that moved most
                if len(xn) != len(yn) or not all(same_text(p, q) for p, q in zip(xt, yt)):
                    d.text_differs = True
                    continue
                d.pairs += [(float(p), float(q)) for p, q in zip(xn, yn) if p != q]
        diffs += [d for d in by_class.values() if d.pairs or d.text_differs]
    return diffs


def main(argv: list[str]) -> int:
    if argv in (["-h"], ["--help"]):
        print(__doc__)
        return 0
    if len(argv) % 2 or not argv:
        print(__doc__, file=sys.stderr)
        return 2
    for ref, other in zip(argv[::2], argv[1::2]):
        print(f"== {ref} vs {other}")
        for d in diff_notebooks(Path(ref), Path(other)):
            print(f"  cell {d.index:2d} [{d.tolerance_class}] {len(d.pairs)} numbers differ, max |diff| "
                  f"{d.max_abs:.4g} (rel {d.max_rel:.3g}){'; TEXT DIFFERS' if d.text_differs else ''}  "
                  f"| {d.first_line[:60]}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
