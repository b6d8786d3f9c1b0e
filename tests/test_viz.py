"""Figures are drawn at the size the book shows them (so their 9 pt text stays 9 pt), with legends off the data,
and tables carry numbered captions and their data."""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from equinb import tables, viz

DPI = 100  # the book's figure.dpi (viz.book_style)


def _png_width(fig) -> int:
    """Pixel width of ``fig`` as the book saves it (tight bounding box, 100 dpi)."""
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI, bbox_inches="tight")
    plt.close(fig)
    return Image.open(io.BytesIO(buffer.getvalue())).size[0]


def _zeroshot_rows() -> pd.DataFrame:
    rows = [dict(backbone=b, dataset=d, transform=t, method=m, top1=50.0 + i)
            for i, (b, d, t, m) in enumerate((b, d, t, m) for b in ("RN50", "RN101", "ViT-B/32", "ViT-B/16")
                                              for d in ("cifar100", "imagenetv2") for t in ("none", "rot90", "rot180")
                                              for m in ("vanilla", "equitune", "equizero"))]
    return pd.DataFrame(rows)


def _curves() -> pd.DataFrame:
    rows = []
    for run in ("original, rot90", "updated, rot90", "original, rot180", "updated, rot180"):
        rows += [dict(run=run, stage="prefinetune", round=r, select_top1=40.0 + r, test_top1=np.nan) for r in range(5)]
        rows += [dict(run=run, stage="prefinetune", round=0, select_top1=np.nan, test_top1=44.0)]
        rows += [dict(run=run, stage="finetune", round=r, select_top1=np.nan, test_top1=45.0 + r) for r in range(3)]
    return pd.DataFrame(rows)


def _figures() -> dict:
    viz.book_style()
    ours = _zeroshot_rows()
    means = pd.DataFrame([dict(method=m, rotation=str(r), source=s, mean=0.25)
                          for m in ("λ-equitune", "equiattention") for r in (0, 90, 180, 270)
                          for s in ("this build", "article")])
    shares = pd.DataFrame(0.25, index=["White", "Black", "Asian"], columns=["other", "positive", "neutral", "negative"])
    weights = pd.DataFrame([dict(method=m, rotation=str(r), weight=w) for m in ("λ-equitune", "equiattention")
                            for r in (0, 90, 180, 270) for w in np.linspace(0, 1, 20)])
    return {  # each drawn only when asked for
        "zeroshot_panels": lambda: viz.zeroshot_panels(ours, ours),
        "robustness_plot": lambda: viz.robustness_plot(ours[ours.method == "vanilla"], ours[ours.method == "vanilla"]),
        "learning_curves": lambda: viz.learning_curves(_curves(), title="Table 1 runs (profile: small)"),
        "label_bars": lambda: viz.label_bars([(f"model {i}", shares) for i in range(4)], ["White", "Black", "Asian"]),
        "weight_means_plot": lambda: viz.weight_means_plot(means, title="CIFAR100"),
        "weight_histograms": lambda: viz.weight_histograms(weights),
        "class_samples": lambda: viz.class_samples([np.zeros((28, 28))] * 7,
                                                   [f"C{k}\nname\ntrain 9" for k in range(7)]),
        "confusion_heatmaps": lambda: viz.confusion_heatmaps({f"panel {i}": np.full((7, 7), 123) for i in range(3)},
                                                             [f"C{k}" for k in range(7)]),
    }


@pytest.mark.parametrize("name", ["zeroshot_panels", "robustness_plot", "learning_curves", "label_bars",
                                  "weight_means_plot", "weight_histograms", "class_samples", "confusion_heatmaps"])
def test_figures_are_drawn_no_wider_than_the_text_column(name: str) -> None:
    fig = _figures()[name]()
    # a few pixels of tight-box padding; a figure drawn for a 10-inch canvas would be 1000 px
    assert _png_width(fig) <= viz.FIGURE_WIDTH * DPI + 30


def test_a_zoomed_axis_of_the_learning_curves_says_how_little_it_spans() -> None:
    import matplotlib.pyplot as plt

    rows = [dict(run="a", stage="prefinetune", round=r, select_top1=10.0 + 20 * r, test_top1=None) for r in range(3)]
    rows += [dict(run="a", stage="finetune", round=r, select_top1=None, test_top1=92.0 + 0.1 * r) for r in range(3)]
    fig = viz.learning_curves(pd.DataFrame(rows))
    wide, zoomed = (ax.get_ylabel() for ax in fig.axes[:2])
    assert "spans" not in wide and zoomed.startswith("test top-1 (%)\n(the axis spans 0.") and " pp)" in zoomed
    plt.close(fig)


def test_legends_of_line_and_bar_panels_sit_outside_the_axes() -> None:
    import matplotlib.pyplot as plt

    for name in ("learning_curves", "weight_means_plot"):
        fig = _figures()[name]()
        assert fig.legends and not any(ax.get_legend() for ax in fig.axes), name
        plt.close(fig)


def test_tables_are_numbered_as_the_book_numbers_the_chapter_and_file_their_data(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv(tables.DATA_ENV, str(tmp_path))
    assert tables.chapter_number("tab1_original_vs_updated") == 2  # the second numbered chapter of _toc.yml
    assert tables.chapter_number("own_model") is None  # in the unnumbered method part
    tables.start_chapter("tab1_original_vs_updated")
    first = tables._numbered(tables.Table(pd.DataFrame({"a": [1.5]}), "first"))
    second = tables._numbered(tables.Table(pd.DataFrame({"b": [2.5]}), "second"))
    assert first.caption == "Table 2.1. first" and second.caption == "Table 2.2. second"
    assert pd.read_csv(tmp_path / "tab1_original_vs_updated" / "table-2.csv").b.tolist() == [2.5]
    assert 'href="../data/tab1_original_vs_updated/table-2.csv"' in second._repr_html_()
    assert "data (CSV)" not in repr(second)  # the text rendering (compared by the notebook regression) has no link
    monkeypatch.delenv(tables.DATA_ENV)
    tables.start_chapter("tab1_original_vs_updated")
    assert "data (CSV)" not in tables._numbered(tables.Table(pd.DataFrame({"a": [1]}), "x"))._repr_html_()
    tables._chapter.update(id=None, prefix="", count=0)


def test_describe_curves_counts_the_runs_finetuning_moved_and_names_the_seed_shown() -> None:
    moves = {"a": (50.0, 52.5), "b": (40.0, 40.0)}
    history = pd.DataFrame([dict(run=run, stage=stage, test_top1=top1) for run, pair in moves.items()
                            for stage, top1 in zip(("prefinetune", "finetune"), pair)])
    assert viz.describe_curves(history, seed=3) == ("finetuning moved the test top-1 of 1 of 2 runs under seed 3, "
                                                    "most +2.50 pp (a)")
    assert viz.describe_curves(history[history.run == "b"]) == (
        "finetuning left the test top-1 of all 1 runs where it was")
    assert viz.describe_curves(history[history.stage == "prefinetune"]) == "no run was finetuned"
