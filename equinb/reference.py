"""The articles' reported numbers, with their source (a copy of the project's reference table).

Columns: artifact, source, dataset, backbone, transform, method, variant, metric, value, note.
``transform`` uses the article's names: ``flip`` is the article's 180-degree rotation.
"""

from __future__ import annotations

import csv
from pathlib import Path

__all__ = ["REFERENCE_CSV", "reference_rows", "reference_table", "beside_article"]

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


def beside_article(ours, article, on: str | list[str], article_on: str | list[str] | None = None,
                   show: tuple[str, ...] = (), stages: tuple[str, ...] = ("prefinetune", "finetune")):
    """Our runs beside the article's numbers, one row per run, with the differences.

    ``ours``: columns ``on``, ``show`` and ``<stage>_top1``. ``article``: the article's values, one column per
    metric (``<stage>_top1``), indexed by ``article_on`` (default ``on``). A run whose key is missing (NaN)
    in ``on`` gets no article value. Returns the ``show`` columns, then per stage "(ours)", "(article)" and
    "delta".
    """
    merged = ours.merge(article.reset_index(), left_on=on, right_on=article_on or on, how="left",
                        suffixes=("", "_article"))
    table = merged[list(show)].copy()
    for stage in stages:
        table[f"{stage} (ours)"] = merged[f"{stage}_top1"]
        table[f"{stage} (article)"] = merged[f"{stage}_top1_article"]
        table[f"{stage} delta"] = table[f"{stage} (ours)"] - table[f"{stage} (article)"]
    return table
