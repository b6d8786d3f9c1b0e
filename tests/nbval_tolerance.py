"""pytest plugin: nbval compares trained numbers within their measured tolerance, everything else exactly.

Load it with ``-p nbval_tolerance`` (``tests/`` on ``PYTHONPATH``), as ``make test`` does. A notebook cell
tagged ``tolerance-<class>`` (a class of ``equinb/noise_measured.json``, for example ``tolerance-top1``) has
each number of its text outputs compared with the committed one within that class's tolerance; the text
between the numbers must still match (white space folded). A chapter's verdict rows as glued for the claim list
are compared in the class of their claim's unit where that unit has one (``equinb.noise.UNIT_CLASSES``: weights
beside shares of images in one table). Cells without such a tag are compared exactly by
nbval as usual, so symmetry checks, counts and frozen-model tables stay exact. Images are not compared, glued
ones included (``GLUED_IMAGES``).
"""

from __future__ import annotations

import copy

import pytest
from nbval.plugin import IPyNbCell

from equinb.noise import Tolerance, snap_rows, tagged_class, tolerance
# Figures glued for the book's captions are recorded under papermill's mime types. nbval never compares
# images (a trained figure's pixels move with the CPU), so these are skipped too; the glued text beside them
# is still compared.
GLUED_IMAGES = ("application/papermill.record/image/png", "application/papermill.record/image/jpeg")


def tolerance_class(cell) -> str | None:
    """The class named by a cell's ``tolerance-<class>`` tag (None: the cell is compared exactly)."""
    return tagged_class(cell.metadata.get("tags", []))


def cell_tolerance(cell) -> Tolerance | None:
    """The tolerance of a cell's class (None: compare exactly)."""
    name = tolerance_class(cell)
    return tolerance(name) if name else None


def snap_outputs(test: list, reference: list, tol: Tolerance) -> list:
    """Copies of the test outputs whose numbers within ``tol`` of the reference's are the reference's (a glued
    verdict row whose claim has a unit of its own: within that unit's class, ``equinb.noise.snap_rows``)."""
    snapped = copy.deepcopy(test)
    for out, ref in zip(snapped, reference):
        if out.get("output_type") != ref.get("output_type"):
            continue
        if isinstance(out.get("text"), str) and isinstance(ref.get("text"), str):
            out["text"] = snap_rows(out["text"], ref["text"], tol)
        for mime, value in out.get("data", {}).items():
            ref_value = ref.get("data", {}).get(mime)
            if isinstance(value, str) and isinstance(ref_value, str):
                out["data"][mime] = snap_rows(value, ref_value, tol)
    return snapped


_exact_compare = IPyNbCell.compare_outputs


def skipped_keys(skip_compare) -> tuple:
    """nbval's keys that are never compared, and the glued images."""
    return tuple(skip_compare) + GLUED_IMAGES


def _compare_within_tolerance(self, test, ref, skip_compare=None):
    tol = cell_tolerance(self.cell)
    if tol is not None:
        test = snap_outputs(test, ref, tol)
    return _exact_compare(self, test, ref, skipped_keys(skip_compare or self.parent.skip_compare))


@pytest.hookimpl
def pytest_configure(config) -> None:
    IPyNbCell.compare_outputs = _compare_within_tolerance
