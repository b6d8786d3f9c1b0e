"""Pair the text outputs of two executions of a chapter and list what differs: numbers, or text.

    .venv/bin/python tools/notebook_numbers.py REFERENCE.ipynb OTHER.ipynb [...]   # pairs of notebooks
    .venv/bin/python tools/notebook_numbers.py --against _build/executed/notebooks      # after `make book`

Prints, per code cell whose outputs differ, the tolerance class it is tagged with (or "exact"; a glued verdict row
whose claim has a unit of its own counts in that unit's class, as the regression compares it), the largest
absolute difference of its numbers, and whether any text between the numbers differs beyond what the
regression allows (adjacent verdict words, such as agrees and inconclusive, may swap: their numbers are paired as
usual). `tools/measure_noise.py` uses the same pairing to derive the tolerances.

`--against DIR` pairs every committed chapter `notebooks/<id>.ipynb` that DIR holds an execution of (not the claim
list, which the regression runs on the committed chapters), and ends with one row per tolerance class: how many
numbers moved, the largest change, the tolerance and the largest share of it that one number used. Run after `make
book` on another CPU, it says how close that CPU came to failing `make test`; the exit status is 1 when a number
went past its tolerance, an exact cell moved or text differs.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass, field
from pathlib import Path

import nbformat

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from build_book import AGGREGATES  # noqa: E402
from nbval_tolerance import GLUED_IMAGES, tolerance_class  # noqa: E402

from equinb.noise import NOTE_MARKER, Tolerance, row_pieces, same_text, split_numbers, tolerances  # noqa: E402


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


@dataclass
class ClassHeadroom:
    """How far one tolerance class's numbers moved between two sets of executions, against its tolerance."""

    name: str
    tolerance: Tolerance | None  # None: the class is compared exactly
    numbers: int = 0  # numbers that moved
    max_abs: float = 0.0
    max_used: float = 0.0  # the largest share of the tolerance one number used (inf: an exact number moved)
    text_cells: int = 0  # cells whose text, not only numbers, differs

    @property
    def passes(self) -> bool:
        return self.max_used <= 1.0 and not self.text_cells


def headroom(diffs: list[CellDiff], known: dict[str, Tolerance]) -> dict[str, ClassHeadroom]:
    """Per tolerance class (``exact`` included), the numbers that moved in ``diffs`` and the share of the class's
    tolerance the largest change used."""
    rows: dict[str, ClassHeadroom] = {}
    for d in diffs:
        tol = known.get(d.tolerance_class)
        if d.tolerance_class != "exact" and tol is None:
            raise ValueError(f"cell {d.index}: unknown tolerance class {d.tolerance_class!r}")
        row = rows.setdefault(d.tolerance_class, ClassHeadroom(d.tolerance_class, tol))
        row.numbers += len(d.pairs)
        row.max_abs = max(row.max_abs, d.max_abs)
        row.text_cells += d.text_differs
        for a, b in d.pairs:
            row.max_used = max(row.max_used, math.inf if tol is None else tol.used(a, b))
    return rows


def print_headroom(rows: dict[str, ClassHeadroom]) -> None:
    print("| class | numbers moved | largest change | tolerance | largest share used | text differs |")
    print("|---|---|---|---|---|---|")
    for r in sorted(rows.values(), key=lambda r: r.name):
        used = "moved" if r.tolerance is None else f"{100 * r.max_used:.0f}%"
        tol = "exact" if r.tolerance is None else r.tolerance.describe()
        print(f"| {r.name} | {r.numbers} | {r.max_abs:.4g} | {tol} | {used} | {r.text_cells or ''} |")
    if not rows:
        print("| (none) | 0 | | | | |")


def print_diffs(reference: Path, other: Path) -> list[CellDiff]:
    print(f"== {reference} vs {other}")
    diffs = diff_notebooks(reference, other)
    for d in diffs:
        print(f"  cell {d.index:2d} [{d.tolerance_class}] {len(d.pairs)} numbers differ, max |diff| "
              f"{d.max_abs:.4g} (rel {d.max_rel:.3g}){'; TEXT DIFFERS' if d.text_differs else ''}  "
              f"| {d.first_line[:60]}")
    return diffs


def main(argv: list[str]) -> int:
    if argv in (["-h"], ["--help"]):
        print(__doc__)
        return 0
    if argv and argv[0] == "--against":
        if len(argv) != 2 or not Path(argv[1]).is_dir():
            print("notebook_numbers: --against takes one folder of executed chapters, e.g. _build/executed/notebooks",
                  file=sys.stderr)
            return 2
        committed = Path(__file__).resolve().parent.parent / "notebooks"
        # an aggregate page reads the chapters it is given: the regression runs it on the committed ones, so an
        # execution beside other chapters' executions is not comparable with its committed outputs
        pairs = [(ref, Path(argv[1]) / ref.name) for ref in sorted(committed.glob("*.ipynb"))
                 if (Path(argv[1]) / ref.name).is_file() and ref.stem not in AGGREGATES]
        if not pairs:
            print(f"notebook_numbers: {argv[1]} holds no execution of a chapter in {committed}", file=sys.stderr)
            return 2
        rows = headroom([d for ref, other in pairs for d in print_diffs(ref, other)], tolerances())
        print(f"\n{len(pairs)} chapters against the committed outputs:")
        print_headroom(rows)
        return 0 if all(r.passes for r in rows.values()) else 1
    if len(argv) % 2 or not argv:
        print(__doc__, file=sys.stderr)
        return 2
    for ref, other in zip(argv[::2], argv[1::2]):
        print_diffs(Path(ref), Path(other))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
