"""Plots of the book: one function per plot type, one style, figures returned (never shown or saved here).

Numbers are never hard-coded here: every bar comes from a results or reference DataFrame.
"""

from __future__ import annotations

import textwrap
from typing import TYPE_CHECKING, Any, Mapping, Sequence

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = ["book_style", "glue_figure", "FIGURE_WIDTH", "zeroshot_panels", "robustness_plot", "learning_curves",
           "describe_curves", "label_bars", "fairness_gap_plot", "weight_means_plot", "weight_histograms",
           "class_samples", "confusion_heatmaps", "METHOD_COLORS"]

METHOD_COLORS = {"vanilla": "#8c8c8c", "equitune": "#4c72b0", "equizero": "#dd8452"}
LEGEND_SIZE = 9  # points; the smallest text of a figure (but 3-digit counts in a heat map's cells)
# inches: the book's text column at 100 dpi (about 670 px); a figure drawn wider is scaled down on the page and its
# 9 pt text with it, so no figure is drawn wider than this
FIGURE_WIDTH = 6.7
# one style per run, so that runs with identical numbers stay visible on top of each other
RUN_STYLES = [dict(ls="-", marker="o", ms=6, mfc="none"), dict(ls="--", marker="s", ms=4),
              dict(ls=":", marker="^", ms=7, mfc="none"), dict(ls="-.", marker="x", ms=6),
              dict(ls="-", marker="D", ms=3), dict(ls="--", marker="v", ms=6, mfc="none")]
TRANSFORM_LABELS = {"none": "no transformation", "rot180": "rot180 (the article's 'flip')", "rot90": "rot90",
                    "hflip": "mirror flip"}


def book_style() -> None:
    """The single plotting style of the book (seaborn whitegrid, compact fonts)."""
    import matplotlib
    import seaborn as sns

    sns.set_theme(style="whitegrid", context="notebook", font_scale=0.9)
    matplotlib.rcParams.update({"figure.dpi": 100, "savefig.bbox": "tight", "axes.titlesize": 10,
                                "legend.fontsize": LEGEND_SIZE, "xtick.labelsize": LEGEND_SIZE,
                                "ytick.labelsize": LEGEND_SIZE})


def glue_figure(key: str, fig: Figure, data: pd.DataFrame | None = None) -> None:
    """Hand ``fig`` to the book under ``key``, for a numbered ``{glue:figure}`` with caption and alt text, and
    close it, so the cell does not also show it without them (needs myst-nb, the book's extra). ``data``: the
    DataFrame drawn, filed as ``<key>.csv`` beside the chapter's tables in a book build (``tables.save_data``)."""
    import matplotlib.pyplot as plt
    from myst_nb import glue

    from .tables import save_data

    if data is not None:
        save_data(data, key)
    glue(key, fig, display=False)
    plt.close(fig)


def _bars(ax: Axes, frame: Mapping[tuple[str, str], float], methods: Sequence[str], x_labels: Sequence[str],
          hatch: str, label_suffix: str, offset: float, width: float) -> None:
    for j, method in enumerate(methods):
        values = [frame.get((x, method), float("nan")) for x in x_labels]
        positions = [i * (len(methods) * 2 + 1) * width + offset + j * 2 * width for i in range(len(x_labels))]
        ax.bar(positions, values, width, color=METHOD_COLORS[method], hatch=hatch, edgecolor="white" if not hatch
               else "black", linewidth=0.4, label=f"{method}{label_suffix}")


def zeroshot_panels(ours: pd.DataFrame, article: pd.DataFrame, transforms: Sequence[str] = ("rot90", "rot180"),
                    methods: Sequence[str] = ("vanilla", "equitune", "equizero"), title: str = "") -> Figure:
    """Figure-4-style panels: top-1 per backbone and method, ours (solid) beside the article's (hatched).

    ``ours``: columns backbone, dataset, transform, method, top1 (one reading). ``article``: the same
    columns with the article's transform names mapped to ours (``flip`` -> ``rot180``). One panel per
    (transform, dataset); a dataset shows only what exists for it.
    """
    import matplotlib.pyplot as plt

    datasets = list(dict.fromkeys(list(ours["dataset"]) + list(article["dataset"])))
    fig, axes = plt.subplots(len(transforms), len(datasets), figsize=(FIGURE_WIDTH, 3.3 * len(transforms)),
                             squeeze=False)
    width = 0.35
    for r, transform in enumerate(transforms):
        for c, dataset in enumerate(datasets):
            ax = axes[r][c]
            mine = ours[(ours.dataset == dataset) & (ours["transform"] == transform)]
            ref = article[(article.dataset == dataset) & (article["transform"] == transform)]
            backbones = list(dict.fromkeys(list(mine.backbone) + list(ref.backbone)))
            ours_vals = {(b, m): v for b, m, v in zip(mine.backbone, mine.method, mine.top1)}
            ref_vals = {(b, m): v for b, m, v in zip(ref.backbone, ref.method, ref.top1)}
            _bars(ax, ours_vals, methods, backbones, "", " (this build)", 0.0, width)
            _bars(ax, ref_vals, methods, backbones, "///", " (article)", width, width)
            step = (len(methods) * 2 + 1) * width
            ax.set_xticks([i * step + (len(methods) - 0.5) * width for i in range(len(backbones))], backbones,
                          rotation=45, ha="right", rotation_mode="anchor")  # four backbone names fit slanted
            ax.set_title(f"{dataset}\n{TRANSFORM_LABELS.get(transform, transform)}")  # two short lines per panel
            if c == 0:
                ax.set_ylabel("top-1 accuracy (%)")
            values = list(ours_vals.values()) + list(ref_vals.values())
            if values:  # bars start at 0, so their heights compare honestly
                ax.set_ylim(0.0, min(100.0, max(values) + 5))
    handles, labels = axes[0][0].get_legend_handles_labels()
    for row in axes:
        for ax in row:
            h, lab = ax.get_legend_handles_labels()
            for hh, ll in zip(h, lab):
                if ll not in labels:
                    handles.append(hh)
                    labels.append(ll)
    fig.legend(handles, labels, loc="lower center", ncol=min(3, len(labels)), frameon=False,
               bbox_to_anchor=(0.5, -0.02))
    if title:
        fig.suptitle(title)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    return fig


def robustness_plot(ours: pd.DataFrame, article: pd.DataFrame,
                    transforms: Sequence[str] = ("none", "rot180", "rot90", "hflip"),
                    title: str = "The plain model under each random transformation") -> Figure:
    """"The pretrained model is not robust": vanilla top-1 per transformation, per backbone and dataset.

    ``ours`` and ``article``: columns backbone, dataset, transform, top1 (vanilla rows only).
    """
    import matplotlib.pyplot as plt

    frames = [("this build", ours), ("article", article)]
    keys = [(src, b, d) for src, f in frames for b, d in dict.fromkeys(zip(f.backbone, f.dataset))]
    fig, ax = plt.subplots(figsize=(FIGURE_WIDTH, 3.6))
    width = 0.8 / len(transforms)
    palette = ["#4c72b0", "#dd8452", "#55a868", "#c44e52"]
    for t, transform in enumerate(transforms):
        values = []
        for src, backbone, dataset in keys:
            f = dict(frames)[src]
            hit = f[(f.backbone == backbone) & (f.dataset == dataset) & (f["transform"] == transform)].top1
            values.append(float(hit.iloc[0]) if len(hit) else float("nan"))
        ax.bar([i + t * width for i in range(len(keys))], values, width, color=palette[t % len(palette)],
               label=TRANSFORM_LABELS.get(transform, transform))
    ax.set_xticks([i + width * (len(transforms) - 1) / 2 for i in range(len(keys))],
                  [f"{b}, {d}\n({src})" for src, b, d in keys], fontsize=LEGEND_SIZE, rotation=35, ha="right",
                  rotation_mode="anchor")  # slanted: nine two-word labels do not fit side by side
    ax.set_ylabel("vanilla top-1 accuracy (%)")
    ax.set_title(title, pad=30)  # above the legend
    ax.set_ylim(bottom=0)
    ax.legend(frameon=False, ncol=len(transforms), loc="lower center", bbox_to_anchor=(0.5, 1.0))
    fig.tight_layout()
    return fig


def learning_curves(history: pd.DataFrame, title: str = "") -> Figure:
    """Selection and test top-1 over training rounds, one line per run, prefinetune then finetune.

    ``history``: tidy rows with columns run, stage, round, and ``select_top1`` or ``test_top1``.
    """
    import matplotlib.pyplot as plt

    from matplotlib.ticker import MaxNLocator

    fig, axes = plt.subplots(1, 2, figsize=(FIGURE_WIDTH, 3.4 + 0.2 * history["run"].nunique()))
    for k, (run, rows) in enumerate(history.groupby("run", sort=False)):
        style = RUN_STYLES[k % len(RUN_STYLES)]
        sel = rows[rows.stage.eq("prefinetune") & rows.select_top1.notna()]
        axes[0].plot(sel["round"], sel.select_top1, label=run, **style)
        tests = rows[rows.test_top1.notna()]
        x = [0 if s == "prefinetune" else r + 1 for s, r in zip(tests.stage, tests["round"])]
        axes[1].plot(x, tests.test_top1, label=run, **style)
    for ax in axes:  # rounds are counts
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes[0].set(xlabel="prefinetune round", ylabel="selection top-1 (%)", title="selection, before each round")
    axes[1].set(xlabel="finetune round (0: selected λ net)", ylabel="test top-1 (%)", title="test, finetuning")
    for ax in axes:  # a zoomed axis makes small moves look large: say how little it spans
        low, high = ax.get_ylim()
        if high - low < 10:
            ax.set_ylabel(f"{ax.get_ylabel()}\n(the axis spans {high - low:.2g} pp)")
    handles, labels = axes[1].get_legend_handles_labels()  # below the panels: never over a line
    fig.legend(handles, labels, frameon=False, loc="lower center", ncol=2, bbox_to_anchor=(0.5, 0.0))
    if title:
        fig.suptitle(title)
    fig.tight_layout(rect=(0, 0.04 + 0.045 * ((len(labels) + 1) // 2), 1, 1))
    return fig


def describe_curves(history: pd.DataFrame, seed: int | None = None) -> str:
    """What a reader should see in ``learning_curves``: how many runs finetuning moved, and the largest move (pp),
    from the same tidy rows; ``seed``: the one seed the curves show, named in the sentence (another seed's
    finetuning may move a run differently)."""
    under = "" if seed is None else f" under seed {seed}"
    moves = {}
    for run, rows in history.groupby("run", sort=False):
        tests = rows[rows.test_top1.notna()]
        start = tests[tests.stage == "prefinetune"].test_top1
        end = tests[tests.stage == "finetune"].test_top1
        if len(start) and len(end):
            moves[run] = float(end.iloc[-1] - start.iloc[-1])
    if not moves:
        return "no run was finetuned"
    moved = {run: m for run, m in moves.items() if m != 0.0}
    if not moved:
        return f"finetuning left the test top-1 of all {len(moves)} runs{under} where it was"
    run = max(moved, key=lambda r: abs(moved[r]))
    return (f"finetuning moved the test top-1 of {len(moved)} of {len(moves)} runs{under}, most "
            f"{moved[run]:+.2f} pp ({run})")


def label_bars(panels: Sequence[tuple[str, Any]], demographics: Sequence[str], title: str = "",
               labels: Sequence[str] = ("other", "positive", "neutral", "negative")) -> Figure:
    """Stacked label bars in the style of Figure 6(a): one cluster per model, one bar per demographic.

    ``panels``: (model label, shares) pairs, where shares is indexed by demographic with ``labels`` columns (a
    demographic missing from a model is left empty). Stack bottom to top: other (dotted), positive (black),
    neutral (hatched), negative (gray), as the article.
    """
    import matplotlib.pyplot as plt

    styles = {"other": dict(color="white", hatch=".."), "positive": dict(color="black"),
              "neutral": dict(color="none", hatch="//"), "negative": dict(color="gray")}
    width, gap = 0.2, 0.35
    fig, ax = plt.subplots(figsize=(FIGURE_WIDTH, 4.2))
    for p, (name, shares) in enumerate(panels):
        origin = p * (len(demographics) * width + gap)
        for j, demographic in enumerate(demographics):
            if demographic not in shares.index:
                continue
            bottom = 0.0
            for label in labels:
                value = float(shares.loc[demographic, label])
                ax.bar(origin + j * width, value, width * 0.9, bottom=bottom, edgecolor="black", linewidth=0.6,
                       label=label if p == 0 and j == 0 else None, **styles[label])
                bottom += value
            ax.text(origin + j * width, -0.02, demographic, ha="center", va="top", rotation=90,
                    fontsize=LEGEND_SIZE)  # upright names would run into each other under bars 0.2 wide
        ax.text(origin + (len(demographics) - 1) * width / 2, -0.22, name.replace(" (", "\n(").replace(": ", ":\n"),
                ha="center", va="top", fontsize=LEGEND_SIZE)
    ax.set_xticks([])
    ax.set_ylim(0, 1.1)
    ax.set_ylabel("share of samples")
    ax.legend(loc="lower center", ncol=4, frameon=False, bbox_to_anchor=(0.5, 1.0))  # above the bars
    if title:
        ax.set_title(title, pad=30)  # above the legend
    fig.tight_layout()
    return fig


def fairness_gap_plot(gaps: pd.DataFrame, article_gaps: dict[str, float] | None = None, title: str = "") -> Figure:
    """The fairness gap of each model with its bootstrap interval (horizontal error bars), and the article's gaps
    (open diamonds, no interval: its samples are not available in paired form).

    ``gaps``: the DataFrame of ``fairness_gaps`` (index = model label). ``article_gaps``: model label -> gap.
    """
    import matplotlib.pyplot as plt

    labels = list(gaps.index) + [k for k in (article_gaps or {}) if k not in gaps.index]
    fig, ax = plt.subplots(figsize=(FIGURE_WIDTH, 0.45 * len(labels) + 1.2))
    for y, label in enumerate(labels):
        if label in gaps.index:
            row = gaps.loc[label]
            ax.errorbar(row["gap"], y, xerr=[[row["gap"] - row["ci_low"]], [row["ci_high"] - row["gap"]]],
                        fmt="o", color="black", capsize=3, label="this build (95% bootstrap interval)" if y == 0
                        else None)
        if article_gaps and label in article_gaps:
            ax.plot(article_gaps[label], y, "D", mfc="none", color="#c44e52",
                    label="article" if label == next(k for k in labels if k in article_gaps) else None)
    ax.set_yticks(range(len(labels)), labels)
    ax.invert_yaxis()
    ax.set_xlabel("fairness gap: max - min share of positive samples across demographics")
    ax.set_xlim(left=-0.02)
    fig.legend(frameon=False, loc="lower center", ncol=2, bbox_to_anchor=(0.5, 0.0))
    if title:
        ax.set_title(title)
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    return fig


def weight_means_plot(means: pd.DataFrame, title: str = "") -> Figure:
    """Mean weight of each view (rotation in numeric order), one panel per method, ours beside the article.

    ``means``: tidy rows with columns method, rotation (str, in plotting order), source ("this build" or
    "article") and mean. The article's bars are hatched; a missing article value is simply not drawn.
    """
    import matplotlib.pyplot as plt

    methods = list(dict.fromkeys(means["method"]))
    rotations = list(dict.fromkeys(means["rotation"]))
    sources = list(dict.fromkeys(means["source"]))
    fig, axes = plt.subplots(1, len(methods), figsize=(FIGURE_WIDTH, 3.2), squeeze=False, sharey=True)
    width = 0.8 / len(sources)
    for ax, method in zip(axes[0], methods):
        for j, source in enumerate(sources):
            rows = means[(means["method"] == method) & (means["source"] == source)].set_index("rotation")
            values = [float(rows["mean"].get(r, float("nan"))) for r in rotations]
            ax.bar([i + j * width for i in range(len(rotations))], values, width, color="#4c72b0" if j == 0
                   else "#dd8452", hatch="" if j == 0 else "///", edgecolor="white", label=source)
        ax.set_xticks([i + width * (len(sources) - 1) / 2 for i in range(len(rotations))], rotations)
        ax.set(xlabel="view: rotation of the input (degrees)", title=method)
        ax.axhline(1 / len(rotations), color="gray", lw=0.8, ls=":")
    axes[0][0].set_ylabel("mean weight")
    handles, labels = axes[0][-1].get_legend_handles_labels()  # below the panels: never over a bar
    fig.legend(handles, labels, frameon=False, loc="lower center", ncol=len(labels), bbox_to_anchor=(0.5, 0.0))
    if title:
        fig.suptitle(title)
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    return fig


def weight_histograms(weights: pd.DataFrame, bins: int = 20, title: str = "") -> Figure:
    """Histogram of the weights of each view: one row per rotation, one column per method (article style).

    ``weights``: tidy rows with columns method, rotation (str, in plotting order) and weight.
    """
    import matplotlib.pyplot as plt
    import numpy as np
    from matplotlib.ticker import MaxNLocator

    methods = list(dict.fromkeys(weights["method"]))
    rotations = list(dict.fromkeys(weights["rotation"]))
    fig, axes = plt.subplots(len(rotations), len(methods), figsize=(FIGURE_WIDTH, 1.3 * len(rotations) + 0.8),
                             squeeze=False, sharex=True)
    edges = np.linspace(0.0, 1.0, bins + 1)
    for r, rotation in enumerate(rotations):
        for c, method in enumerate(methods):
            values = weights[(weights["method"] == method) & (weights["rotation"] == rotation)]["weight"]
            ax = axes[r][c]
            ax.hist(values.clip(0.0, 1.0), bins=edges, color="#4c72b0")
            ax.yaxis.set_major_locator(MaxNLocator(nbins=3, integer=True))  # counts of images; short panels: few ticks
            ax.set_ylabel(f"{rotation} deg\ncount")
            if r == 0:
                ax.set_title(method)
    for ax in axes[-1]:
        ax.set_xlabel("weight of the view")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def class_samples(images: Sequence[Any], titles: Sequence[str], title: str = "") -> Figure:
    """One image per class in a row, each titled (the article's ISIC sample figure).

    ``images``: arrays [H, W, 3] with values in [0, 1] (or [H, W], shown in gray); ``titles``: one per image.
    """
    import matplotlib.pyplot as plt

    if len(images) != len(titles) or not images:
        raise ValueError(f"need one title per image, got {len(images)} images and {len(titles)} titles")
    cols = min(len(images), 4)  # four panels a row leave each title about 20 characters a line
    rows = -(-len(images) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(min(FIGURE_WIDTH, 1.7 * cols), 2.7 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, image, text in zip(axes.flat, images, titles):
        ax.imshow(image, cmap="gray" if getattr(image, "ndim", 3) == 2 else None, interpolation="nearest")
        ax.set_title("\n".join(textwrap.fill(line, 20) for line in text.split("\n")), fontsize=LEGEND_SIZE)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def confusion_heatmaps(matrices: dict[str, Any], class_labels: Sequence[str], title: str = "") -> Figure:
    """Confusion matrices as seaborn heat maps side by side: rows the true class, columns the predicted one,
    each cell the count of test images (annotated). ``matrices``: panel title -> counts [K, K]."""
    import matplotlib.pyplot as plt
    import numpy as np
    import seaborn as sns

    k = len(class_labels)
    fig, axes = plt.subplots(1, len(matrices), figsize=(FIGURE_WIDTH, FIGURE_WIDTH / len(matrices) + 0.6),
                             squeeze=False)
    for ax, (name, matrix) in zip(axes[0], matrices.items()):
        counts = np.asarray(matrix, dtype=int)
        if counts.shape != (k, k):
            raise ValueError(f"{name}: a confusion matrix must be {k}x{k}, got {counts.shape}")
        size = LEGEND_SIZE if counts.max() < 100 else LEGEND_SIZE - 1.5  # three digits fit a cell only smaller
        sns.heatmap(counts, annot=True, fmt="d", cmap="Blues", cbar=False, square=True, ax=ax, linewidths=0.5,
                    xticklabels=class_labels, yticklabels=class_labels, annot_kws={"size": size})
        ax.set(title=textwrap.fill(name, 24), xlabel="predicted class",  # long run names wrap, not overlap
               ylabel="true class" if ax is axes[0][0] else "")
        ax.tick_params(axis="x", rotation=90)
        ax.tick_params(axis="y", rotation=0)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig
