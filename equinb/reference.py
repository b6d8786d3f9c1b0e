"""The articles' reported numbers, with their source (a copy of the project's reference table).

Columns: artifact, source, dataset, backbone, transform, method, variant, metric, value, note.
``transform`` uses the article's names: ``flip`` is the article's 180-degree rotation.
"""

from __future__ import annotations

import csv
from pathlib import Path

__all__ = ["REFERENCE_CSV", "reference_rows", "reference_table"]

REFERENCE_CSV = Path(__file__).with_name("article_numbers.csv")


def reference_rows(artifact: str | None = None) -> list[dict[str, object]]:
    """Rows of the reference table (``value`` as float), optionally only those of one artifact."""
    with REFERENCE_CSV.open(newline="") as handle:
        rows = [dict(row, value=float(row["value"])) for row in csv.DictReader(handle)]
    if artifact is None:
        return rows
    known = sorted({str(r["artifact"]) for r in rows})
    if artifact not in known:
        raise ValueError(f"unknown artifact {artifact!r}; valid: {', '.join(known)}")
    return [r for r in rows if r["artifact"] == artifact]


def reference_table(artifact: str | None = None):
    """The reference rows as a pandas DataFrame (pandas is imported only here)."""
    import pandas as pd

    return pd.DataFrame(reference_rows(artifact))
