"""The articles' reported numbers, with their source (a copy of the project's reference table).

Columns: artifact, source, dataset, backbone, transform, method, variant, metric, value, note.
``transform`` uses the article's names: ``flip`` is the article's 180-degree rotation.
"""

from __future__ import annotations

import csv
from pathlib import Path

import pandas as pd

from .validation import check_choice

__all__ = ["REFERENCE_CSV", "FIG6_LABELS", "reference_rows", "reference_table", "display_numbers",
           "beside_article", "article_fig4", "compare_fig4", "article_tab1", "article_tab2", "article_tab3",
           "article_tab4", "ARTICLE_ROW_NAMES", "article_shown", "count_behind", "article_fig2_3", "article_fig6",
           "article_fig6_lines"]

REFERENCE_CSV = Path(__file__).with_name("article_numbers.csv")
# Label categories of the article's Figure 6(a), bottom to top of a bar.
FIG6_LABELS: tuple[str, ...] = ("other", "positive", "neutral", "negative")


def reference_rows(artifact: str | None = None) -> list[dict[str, object]]:
    """Rows of the reference table (``value`` as float), optionally only those of one artifact."""
    with REFERENCE_CSV.open(newline="") as handle:
        rows = [dict(row, value=float(row["value"])) for row in csv.DictReader(handle)]
    if artifact is None:
        return rows
    known = sorted({str(r["artifact"]) for r in rows})
    check_choice(artifact, known, "artifact")
    return [r for r in rows if r["artifact"] == artifact]


def reference_table(artifact: str | None = None) -> pd.DataFrame:
    """The reference rows as a pandas DataFrame."""
    return pd.DataFrame(reference_rows(artifact))


def display_numbers(table: pd.DataFrame, decimals: int = 2) -> pd.DataFrame:
    """``table`` for display: float columns as text with ``decimals`` decimals, a missing value as "—" (a
    reader should never meet "NaN"). Other columns are unchanged."""
    out = table.copy()
    for column in out.columns:
        if out[column].dtype.kind == "f":
            out[column] = ["—" if v != v else f"{v:.{decimals}f}" for v in out[column]]
    return out


def beside_article(ours: pd.DataFrame, article: pd.DataFrame, on: str | list[str],
                   article_on: str | list[str] | None = None, show: tuple[str, ...] = (),
                   stages: tuple[str, ...] = ("prefinetune", "finetune"), with_delta: bool = True) -> pd.DataFrame:
    """Our runs beside the article's numbers, one row per run, for display (``display_numbers``).

    ``ours``: columns ``on``, ``show`` and ``<stage>_top1``. ``article``: the article's values, one column per
    metric (``<stage>_top1``), indexed by ``article_on`` (default ``on``). A run whose key is missing (NaN)
    in ``on`` gets no article value ("—"). Returns the ``show`` columns, then per stage "(ours)", "(article)"
    and, with ``with_delta`` (only meaningful when the run is the article's setting), "delta".
    """
    merged = ours.merge(article.reset_index(), left_on=on, right_on=article_on or on, how="left",
                        suffixes=("", "_article"))
    table = merged[list(show)].copy()
    for stage in stages:
        table[f"{stage} (ours)"] = merged[f"{stage}_top1"]
        table[f"{stage} (article)"] = merged[f"{stage}_top1_article"]
        if with_delta:
            table[f"{stage} delta"] = table[f"{stage} (ours)"] - table[f"{stage} (article)"]
    return display_numbers(table)


def article_fig4() -> pd.DataFrame:
    """The article's Figure-4 numbers as a DataFrame in ``equinb.zeroshot``'s names.

    Columns: backbone, dataset (``cifar100`` | ``imagenetv2``), transform (``none`` | ``rot180`` | ``rot90``;
    the article's ``flip`` is ``rot180``), method, seed_top1, seed_top5 (the reproduction's result files),
    paper_top1 (Basu et al.'s plotted values). The article lists "none" once, for vanilla; equitune and
    equizero over the trivial group are vanilla by construction, so their "none" rows repeat vanilla's numbers
    (no empty cells).
    """
    ref = reference_table("orig_fig4_zeroshot")
    ref = ref.assign(dataset=ref.dataset.str.lower(), transform=ref["transform"].replace({"flip": "rot180"}),
                     column=ref.variant + "_" + ref.metric)
    wide = ref.pivot_table(index=["backbone", "dataset", "transform", "method"], columns="column", values="value")
    wide = wide.reset_index().rename_axis(columns=None)
    none = wide[(wide["transform"] == "none") & (wide.method == "vanilla")]
    missing = [none.assign(method=m) for m in ("equitune", "equizero")
               if not ((wide["transform"] == "none") & (wide.method == m)).any()]
    wide = pd.concat([wide, *missing], ignore_index=True)
    order = {name: i for i, name in enumerate(("RN50", "RN101", "ViT-B/32", "ViT-B/16"))}  # the article's order
    return wide.sort_values(["backbone", "dataset", "transform", "method"], key=lambda col: col.map(order)
                            if col.name == "backbone" else col, ignore_index=True)


def compare_fig4(ours: pd.DataFrame, article: pd.DataFrame,
                 stand_in: dict[tuple[str, str], tuple[str, str]] | None = None) -> pd.DataFrame:
    """Our top-1 (both readings) beside the article's, one row per (backbone, dataset, transform, method).

    ``ours``: tidy rows from ``run_zeroshot``; ``article``: ``article_fig4()``. Without ``stand_in`` a row meets
    the article's row of the same backbone and dataset, and ``delta = ours (as published) - article (result files)``.
    ``stand_in`` maps this run's (backbone, dataset) to the article's (backbone, dataset) it stands in for (the
    small profile: a different model and data; unmapped cells meet their own), so the article's numbers sit beside
    ours with an ``article cell`` column naming them and no ``delta``: a difference of two different experiments is
    no deviation. A mapping of a cell this run does not have, or to one the article does not have, is refused.
    """
    wide = ours.pivot_table(index=["backbone", "dataset", "transform", "method"], columns="reading",
                            values="top1").reset_index().rename_axis(columns=None)
    reference = article[["backbone", "dataset", "transform", "method", "seed_top1", "paper_top1"]]
    if stand_in is None:
        table = wide.merge(reference, on=["backbone", "dataset", "transform", "method"], how="left")
        table["delta"] = table["as_published"] - table["seed_top1"]
    else:
        unknown = sorted(set(stand_in.values()) - set(zip(article.backbone, article.dataset)))
        if unknown:
            raise ValueError(f"compare_fig4: stand_in names cells the article does not have: {unknown}")
        ran = set(zip(wide.backbone, wide.dataset))
        if not set(stand_in) <= ran:
            raise ValueError(f"compare_fig4: stand_in maps cells this run does not have: "
                             f"{sorted(set(stand_in) - ran)}; it ran {sorted(ran)}")
        cells = [stand_in.get(key, key) for key in zip(wide.backbone, wide.dataset)]  # unmapped: its own cell
        wide["article cell"] = [f"{backbone} / {dataset}" for backbone, dataset in cells]
        wide["_backbone"], wide["_dataset"] = [cell[0] for cell in cells], [cell[1] for cell in cells]
        table = wide.merge(reference.rename(columns={"backbone": "_backbone", "dataset": "_dataset"}),
                           on=["_backbone", "_dataset", "transform", "method"], how="left")
        table = table.drop(columns=["_backbone", "_dataset"])
    return table.rename(columns={"as_published": "ours (as published)", "as_described": "ours (as described)",
                                 "seed_top1": "article (result files)", "paper_top1": "article (Basu et al.)"})


def article_fig6() -> pd.DataFrame:
    """Figure 6(a)'s label shares (recomputed from the article's prediction files), one row per model and
    demographic, columns other, positive, neutral, negative (``equinb.reference``, artifact ``fig6_nlg_regard``)."""
    ref = reference_table("fig6_nlg_regard")
    ref = ref.assign(label=ref["metric"].str.replace("ratio_", "", regex=False))
    table = ref.pivot_table(index=["backbone", "transform"], columns="label", values="value")
    table = table.reindex(columns=list(FIG6_LABELS))
    table.index = table.index.set_names(["model", "demographic"])
    return table


def article_fig6_lines() -> pd.Series:
    """Lines of each of Figure 6(a)'s prediction files, the denominators of its shares (500 samples plus the blank
    lines of ``\\n\\n`` tokens): share x lines is the count of that label. Indexed like ``article_fig6``."""
    ref = reference_table("fig6_nlg_regard").query("metric == 'lines'")
    return ref.set_index(["backbone", "transform"])["value"].astype(int).rename_axis(["model", "demographic"])


def article_tab1() -> pd.DataFrame:
    """Table 1: top-1 (%) per (group, code), in the article's order, with columns ``prefinetune_top1``,
    ``finetune_top1``; groups in this library's names (the article's ``flip`` is ``rot180``), code ``original`` |
    ``updated``."""
    ref = reference_table("tab1_original_vs_updated")
    ref = ref.assign(group=ref["transform"].replace({"flip": "rot180"}), code=ref.variant.str.replace("_invariant", ""))
    return ref.pivot_table(index=["group", "code"], columns="metric", values="value", sort=False)


def article_tab2() -> pd.DataFrame:
    """Table 2: top-1 (%) per variant (``updated_invariant``, ``feature_map``, the article's order), one column per
    metric."""
    return reference_table("tab2_invariant_vs_featuremap").pivot_table(index="variant", columns="metric",
                                                                       values="value", sort=False)


def article_tab3() -> pd.DataFrame:
    """Table 3: top-1 (%) per method (``lambda_equitune``, ``equiattention``, the article's order), one column per
    metric."""
    return reference_table("tab3_equitune_vs_equiattention").pivot_table(index="method", columns="metric",
                                                                          values="value", sort=False)


def article_tab4() -> pd.DataFrame:
    """Table 4 (ISIC 2018, CLIP RN50, rot90): top-1 (%) per variant (``original_invariant``,
    ``updated_invariant``, ``feature_map``), columns ``prefinetune_top1``, ``finetune_top1``."""
    return reference_table("tab4_isic2018").pivot_table(index="variant", columns="metric", values="value",
                                                        sort=False)


# The article code's keys for the rows of its Tables 2-4, as the chapters name the same rows of their own runs.
ARTICLE_ROW_NAMES = {"original_invariant": "original invariant", "updated_invariant": "updated invariant",
                     "feature_map": "feature map", "lambda_equitune": "feature-map λ-equitune",
                     "equiattention": "equiattention"}


def article_shown(table: pd.DataFrame) -> pd.DataFrame:
    """One of the article's top-1 tables (``article_tab1`` to ``article_tab4``) as a chapter prints it: the index as
    leading columns, its row keys under the chapters' names (``ARTICLE_ROW_NAMES``), prefinetune before finetune
    (the order of training)."""
    stages = [c for c in ("prefinetune_top1", "finetune_top1") if c in table.columns]
    ordered = table[stages + [c for c in table.columns if c not in stages]]
    return ordered.rename(index=ARTICLE_ROW_NAMES).reset_index()


def count_behind(percent: float, n: int, decimals: int = 2) -> int | None:
    """The number of correct images k such that ``100 k / n``, rounded to ``decimals``, prints as ``percent``
    (None if no k does): a printed accuracy names its test-set size. ``count_behind(63.73, 193)`` -> 123."""
    k = round(percent * n / 100)
    return k if 0 <= k <= n and round(100 * k / n, decimals) == round(percent, decimals) else None


def article_fig2_3() -> pd.DataFrame:
    """Figures 2 and 3: the long reference rows with ``figure`` (``natural orientation`` for CIFAR100,
    ``orientation-free`` for ISIC2018) and the chapter's method labels (``λ-equitune``, ``equiattention``)."""
    ref = reference_table("fig2_3_lambda_weights")
    return ref.assign(method=ref.method.replace({"lambda_equitune": "λ-equitune"}),
                      figure=ref.dataset.map({"CIFAR100": "natural orientation", "ISIC2018": "orientation-free"}))
