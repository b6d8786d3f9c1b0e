"""Noise of trained results: tolerances and tolerance-aware text comparison.

Trained numbers move with the machine (vector kernels, thread counts) and with the seed, while exact outputs
(symmetry checks, counts, frozen-model tables, the article's numbers) do not. Each class of trained number gets
one tolerance, derived from spreads measured by ``tools/measure_noise.py`` and stored beside this module in
``noise_measured.json``:

    tolerance = max(floor, factor * largest |difference| seen across seeds and numerical modes)

The same file serves two readers: the notebook regression (``tests/nbval_tolerance.py`` compares the numbers
of cells tagged with a tolerance class within that tolerance, and everything else exactly) and the chapters
(which print the tolerance next to the numbers). A tolerance never enters a verdict (``equinb.verdicts`` uses
seed repeats), and it holds only for the profile it was measured on: asking for it under another profile (the
paper profile's numbers move by other amounts) is refused.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

__all__ = ["Tolerance", "tolerance", "tolerances", "chapter_tolerances", "measured_profile", "noise_note",
           "loss_label", "split_numbers", "snap_numbers", "snap_rows", "row_pieces", "same_text", "NUMBER",
           "UNIT_CLASSES", "TAG_PREFIX", "tagged_class", "verdict_class", "cpu_turns"]

MEASURED = Path(__file__).with_name("noise_measured.json")
TAG_PREFIX = "tolerance-"  # a cell tagged ``tolerance-<class>`` has its numbers compared within that class
NOTE_MARKER = "between CPUs"  # in every ``noise_note`` line: the measurement leaves those lines out

# A number as printed by Python, pandas and f-strings: sign, digits, optional decimals, optional exponent.
# A sign glued to a word is a hyphen ("top-1" holds the number 1, not -1). Thousands separators are not part
# of a number ("1,328,073" is three numbers, each compared).
NUMBER = re.compile(r"(?:(?<![\w.])[-+])?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][-+]?\d+)?")

# Verdict words that numbers moving within their tolerance may turn into one another (an interval that touches
# zero on one machine may just exclude it on another; never "agrees" vs "reversed"). "non-zero" is the verdict of
# the book's own comparisons, which have no article sign. Table 4's chapter reads its interval against chance
# in words of its own (ORIENTATION_READINGS), adjacent in the same way.
ORIENTATION_READINGS = {"reversed": "differs from chance",
                        "inconclusive": "inconclusive (the interval holds chance)"}
_ADJACENT_VERDICTS = {("agrees", "inconclusive"), ("reversed", "inconclusive"), ("non-zero", "inconclusive"),
                      (ORIENTATION_READINGS["reversed"], ORIENTATION_READINGS["inconclusive"])}


# A verdict row's result (ours and its interval) is in its claim's unit (``equinb.claims``). Where that unit has a
# tolerance class of its own, the result as glued for the claim list (JSON, one object per claim, in the key order
# of ``equinb.verdicts.verdict_row``) is compared in that class, whatever the cell's: Figures 2-3's verdict table
# holds mean weights (fractions) beside shares of images (pp), and Table 2's a relative error beside top-1
# differences. The rest of the row (a reason may quote a share) keeps the cell's class.
UNIT_CLASSES = {"weight": "weight", "relative": "logit"}
_ROW_START = re.compile(r'\{"claim": ')
_RESULT = re.compile(r'"ours": .*?(?=, "verdict vs the article": )')
_ROW_ID = re.compile(r'"id": "([^"]+)"')


@dataclass(frozen=True)
class Tolerance:
    """How far a class of trained numbers may move between machines and seeds.

    ``absolute`` is in the printed unit (percentage points for top-1, weight units for view weights);
    ``relative`` adds a share of the reference value (for scale-free quantities such as logit changes).
    """

    name: str
    absolute: float
    relative: float
    unit: str
    basis: str  # how it was derived, for the reader

    def allows(self, reference: float, value: float) -> bool:
        """Whether ``value`` is within this tolerance of ``reference`` (non-finite values must match)."""
        if not (math.isfinite(reference) and math.isfinite(value)):
            return reference == value or (math.isnan(reference) and math.isnan(value))
        return abs(value - reference) <= self.absolute + self.relative * abs(reference) + 1e-12

    def used(self, reference: float, value: float) -> float:
        """The share of this tolerance that the change from ``reference`` to ``value`` uses: 0 for none, above 1
        where ``allows`` refuses it (infinite where a non-finite value does not match or the tolerance is 0)."""
        if not (math.isfinite(reference) and math.isfinite(value)):
            return 0.0 if self.allows(reference, value) else math.inf
        change, allowed = abs(value - reference), self.absolute + self.relative * abs(reference)
        if change == 0:
            return 0.0
        return change / allowed if allowed > 0 else math.inf

    def describe(self) -> str:
        """'±2.5 pp' or '±0.05 + 10%', for printing beside the numbers it covers."""
        parts = [f"±{self.absolute:g}{(' ' + self.unit) if self.unit else ''}"] if self.absolute else []
        if self.relative:
            parts.append(f"{100 * self.relative:g}% of the value")
        return " + ".join(parts) if parts else "exact"


def tolerances(path: Path = MEASURED) -> dict[str, Tolerance]:
    """Every tolerance class of ``noise_measured.json`` (written by ``tools/measure_noise.py``)."""
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing; run `.venv/bin/python tools/measure_noise.py` to measure it")
    data = json.loads(path.read_text())
    return {name: Tolerance(name, float(t["absolute"]), float(t.get("relative", 0.0)), t.get("unit", ""),
                            t["basis"]) for name, t in data["classes"].items()}


def measured_profile(path: Path = MEASURED) -> str:
    """The profile whose numbers ``noise_measured.json`` measured (``small``)."""
    return json.loads(path.read_text()).get("profile", "small") if path.is_file() else "small"


def tolerance(name: str, profile: str = "small") -> Tolerance:
    """The tolerance class ``name`` (for example ``"top1"``) of ``profile``; unknown names list the valid ones, and
    a profile other than the measured one is refused (its numbers move by amounts nobody measured)."""
    if profile != measured_profile():
        raise ValueError(f"the regression tolerances were measured on the {measured_profile()!r} profile, not "
                         f"{profile!r}; measure that profile with tools/measure_noise.py, or compare its runs "
                         "by seed repeats (noise_seeds) as the verdicts do")
    known = tolerances()
    if name not in known:
        raise KeyError(f"unknown tolerance class {name!r}; known: {', '.join(sorted(known))}")
    return known[name]


def chapter_tolerances(profile: str, *names: str) -> dict[str, Tolerance | None]:
    """The classes a chapter prints beside its numbers: each ``Tolerance`` on the measured profile, ``None`` on
    any other (``noise_note`` then says that no tolerance was measured for it)."""
    if profile != measured_profile():
        return dict.fromkeys(names)
    return {name: tolerance(name, profile) for name in names}


def tagged_class(tags: Sequence[str]) -> str | None:
    """The class a cell's tags name (``["hide-input", "tolerance-top1"]`` -> ``"top1"``; None: compared exactly)."""
    names = [t[len(TAG_PREFIX):] for t in tags if t.startswith(TAG_PREFIX)]
    if len(names) > 1:
        raise ValueError(f"a cell has several tolerance tags: {names}")
    return names[0] if names else None


def verdict_class(unit: str, cell_class: str | None) -> str | None:
    """The class a glued verdict row's result is compared in: its claim's unit's (``UNIT_CLASSES``) where that
    unit has one, else the class of the cell that published it."""
    return UNIT_CLASSES.get(unit, cell_class)


def cpu_turns(interval: tuple[float, float], tol: Tolerance) -> tuple[int, ...]:
    """Where ``interval`` could lie on another CPU, if each of its ends moved within ``tol``, other than where it
    lies: 0 (holding 0), +1 (above 0), -1 (below 0). It can lie above 0 where its lower end is above 0 or within
    ``tol`` of it, below 0 likewise by its upper end, and hold 0 where each end is on its side of 0 or within
    ``tol`` of it: an interval above 0 whose upper end is within ``tol`` of 0 too could lie below it. Empty: its
    verdict stays. Conservative: ``tol`` is a factor (1.5) times the largest move of any printed number of its class
    between the measured CPUs (``tools/measure_noise.py``), an interval's printed ends included."""
    low, high = interval
    near = lambda end: tol.allows(end, 0.0)  # noqa: E731  (an end another CPU could carry to 0)
    where = 1 if low > 0 else -1 if high < 0 else 0
    could = {1: low > 0 or near(low), -1: high < 0 or near(high),
             0: (low <= 0 or near(low)) and (high >= 0 or near(high))}
    return tuple(side for side in (0, 1, -1) if side != where and could[side])


def split_numbers(text: str) -> tuple[list[str], list[str]]:
    """``text`` -> (the text between numbers, the numbers as printed); ``len(texts) == len(numbers) + 1``.

    Runs of white space in the texts are folded to one space, so that a number printed one character wider
    (which shifts a pandas column) does not count as a change of text.
    """
    texts, numbers, last = [], [], 0
    for match in NUMBER.finditer(text):
        texts.append(text[last:match.start()])
        numbers.append(match.group())
        last = match.end()
    texts.append(text[last:])
    return [re.sub(r"\s+", " ", t) for t in texts], numbers


def same_text(a: str, b: str) -> bool:
    """Whether two texts between numbers count as the same for the regression: equal, or equal once an adjacent
    pair of verdict words (``agrees`` / ``inconclusive``, ...) is read as one."""
    if a == b:
        return True
    for x, y in _ADJACENT_VERDICTS:
        if a.replace(x, y) == b.replace(x, y):
            return True
    return False


def snap_numbers(test: str, reference: str, tol: Tolerance) -> str:
    """``test`` with every number that is within ``tol`` of the reference's replaced by the reference's.

    The text between numbers must match (white space folded; adjacent verdict words allowed). If it does,
    the result is the reference's text with the test's numbers where they are outside the tolerance, so an
    exact comparison afterwards fails exactly on those. If the texts or the count of numbers differ, ``test``
    comes back unchanged (and fails an exact comparison with its own diff).
    """
    t_texts, t_nums = split_numbers(test)
    r_texts, r_nums = split_numbers(reference)
    if len(t_nums) != len(r_nums) or not all(same_text(a, b) for a, b in zip(t_texts, r_texts)):
        return test
    out, last, i = [], 0, 0
    for match in NUMBER.finditer(reference):
        out.append(reference[last:match.start()])
        ours = t_nums[i]
        out.append(match.group() if tol.allows(float(match.group()), float(ours)) else ours)
        last, i = match.end(), i + 1
    out.append(reference[last:])
    return "".join(out)


def row_pieces(text: str) -> list[tuple[str, str | None]]:
    """``text`` in pieces, each with the tolerance class its numbers are compared in: a glued verdict row's result
    (``"ours"`` and ``"95% interval"``) in the class of its claim's unit where the unit has one
    (``UNIT_CLASSES``); everything else None (the cell's class). The pieces joined are ``text``."""
    from .claims import claims

    units = {c.id: c.unit for c in claims()}
    starts = [m.start() for m in _ROW_START.finditer(text)]
    pieces: list[tuple[str, str | None]] = []
    for begin, end in zip([0, *starts], [*starts, len(text)]):
        row = text[begin:end]
        found, result = _ROW_ID.search(row), _RESULT.search(row)
        name = verdict_class(units.get(found.group(1), ""), None) if begin in starts and found and result else None
        if name is None:
            pieces.append((row, None))
        else:
            pieces += [(row[:result.start()], None), (result.group(), name), (row[result.end():], None)]
    return [(piece, name) for piece, name in pieces if piece]


def snap_rows(test: str, reference: str, tol: Tolerance) -> str:
    """``snap_numbers`` with ``tol``, except that each glued verdict row whose claim has a unit of its own
    (``row_pieces``) is snapped within that unit's class. Rows added, removed or reordered: the whole text with
    ``tol`` (the exact comparison afterwards fails on them)."""
    ref_pieces, test_pieces = row_pieces(reference), row_pieces(test)
    if [name for _, name in ref_pieces] != [name for _, name in test_pieces]:
        return snap_numbers(test, reference, tol)
    return "".join(snap_numbers(t, r, tolerance(name) if name else tol)
                   for (t, _), (r, name) in zip(test_pieces, ref_pieces))


def noise_note(tol: Tolerance | None, what: str = "trained numbers") -> str:
    """One line for the reader, printed above the numbers a tolerance covers (``None``: a profile without one)."""
    if tol is None:
        return (f"{what} below: how far they move {NOTE_MARKER} was measured on the {measured_profile()} profile "
                "only, not on this one; the verdicts rest on seed repeats")
    # the basis (modes, largest change) stays in noise_measured.json and the README: above every table it buried
    # the one thing a reader needs, that this is no uncertainty of the result
    return (f"{what} below move within {tol.describe()} {NOTE_MARKER} (the regression tests' tolerance, not an "
            "uncertainty of the result)")


def loss_label(loss: float, limit: float = 1e6) -> str:
    """A training loss for printing: ``diverged (> 1e+06)`` past ``limit``, where its size is chaotic.

    A runaway loss (an unbounded λ multiplying the logits) reaches 1e16 or 1e28 depending on the last bits of
    every earlier step, so its value differs between CPUs; that it ran away does not.
    """
    return f"diverged (> {limit:.0e})" if not math.isfinite(loss) or loss > limit else f"{loss:.3g}"
