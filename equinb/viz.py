"""Plots of the book: one function per plot type, one style, figures returned (never shown or saved here).

Numbers are never hard-coded here: every bar comes from a results or reference DataFrame.
"""

from __future__ import annotations

from typing import Sequence

__all__ = ["book_style", "zeroshot_panels", "robustness_plot", "learning_curves", "METHOD_COLORS"]

METHOD_COLORS = {"vanilla": "#8c8c8c", "equitune": "#4c72b0", "equizero": "#dd8452"}
TRANSFORM_LABELS = {"none": "no transformation", "rot180": "rot180 (the article's 'flip')", "rot90": "rot90",
                    "hflip": "mirror flip"}


def book_style() -> None:
    """The single plotting style of the book (seaborn whitegrid, compact fonts)."""
    import matplotlib
    import seaborn as sns

    sns.set_theme(style="whitegrid", context="notebook", font_scale=0.9)
    matplotlib.rcParams.update({"figure.dpi": 100, "savefig.bbox": "tight", "axes.titlesize": 10})


def _bars(ax, frame, methods: Sequence[str], x_labels: Sequence[str], hatch: str, label_suffix: str,
          offset: float, width: float) -> None:
    for j, method in enumerate(methods):
        values = [frame.get((x, method), float("nan")) for x in x_labels]
        positions = [i * (len(methods) * 2 + 1) * width + offset + j * 2 * width for i in range(len(x_labels))]
        ax.bar(positions, values, width, color=METHOD_COLORS[method], hatch=hatch, edgecolor="white" if not hatch
               else "black", linewidth=0.4, label=f"{method}{label_suffix}")


def zeroshot_panels(ours, article, transforms: Sequence[str] = ("rot90", "rot180"),
                    methods: Sequence[str] = ("vanilla", "equitune", "equizero"), title: str = ""):
    """Figure-4-style panels: top-1 per backbone and method, ours (solid) beside the article's (hatched).

    ``ours``: columns backbone, dataset, transform, method, top1 (one reading). ``article``: the same
    columns with the article's transform names mapped to ours (``flip`` -> ``rot180``). One panel per
    (transform, dataset); a dataset shows only what exists for it.
    """
    import matplotlib.pyplot as plt

    datasets = list(dict.fromkeys(list(ours["dataset"]) + list(article["dataset"])))
    fig, axes = plt.subplots(len(transforms), len(datasets), figsize=(4.2 * len(datasets), 3.2 * len(transforms)),
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
            ax.set_xticks([i * step + (len(methods) - 0.5) * width for i in range(len(backbones))], backbones)
            ax.set_title(f"{TRANSFORM_LABELS.get(transform, transform)} - {dataset}")
            ax.set_ylabel("top-1 accuracy (%)")
            values = list(ours_vals.values()) + list(ref_vals.values())
            if values:
                ax.set_ylim(max(0.0, min(values) - 10), min(100.0, max(values) + 5))
    handles, labels = axes[0][0].get_legend_handles_labels()
    for row in axes:
        for ax in row:
            h, lab = ax.get_legend_handles_labels()
            for hh, ll in zip(h, lab):
                if ll not in labels:
                    handles.append(hh)
                    labels.append(ll)
    fig.legend(handles, labels, loc="lower center", ncol=min(6, len(labels)), frameon=False,
               bbox_to_anchor=(0.5, -0.02))
    if title:
        fig.suptitle(title)
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    return fig


def robustness_plot(ours, article, transforms: Sequence[str] = ("none", "rot180", "rot90", "hflip")):
    """"The pretrained model is not robust": vanilla top-1 per transformation, per backbone and dataset.

    ``ours`` and ``article``: columns backbone, dataset, transform, top1 (vanilla rows only).
    """
    import matplotlib.pyplot as plt

    frames = [("this build", ours), ("article", article)]
    keys = [(src, b, d) for src, f in frames for b, d in dict.fromkeys(zip(f.backbone, f.dataset))]
    fig, ax = plt.subplots(figsize=(max(6.0, 0.9 * len(keys) + 2), 3.4))
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
                  [f"{b}\n{d}\n({src})" for src, b, d in keys], fontsize=7)
    ax.set_ylabel("vanilla top-1 accuracy (%)")
    ax.set_title("The pretrained model is not robust to rotations")
    ax.legend(frameon=False, fontsize=8, ncol=len(transforms), loc="upper center", bbox_to_anchor=(0.5, -0.35))
    fig.tight_layout()
    return fig


def learning_curves(history, title: str = ""):
    """Selection and test top-1 over training rounds, one line per run, prefinetune then finetune.

    ``history``: tidy rows with columns run, stage, round, and ``select_top1`` or ``test_top1``.
    """
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.4))
    for run, rows in history.groupby("run", sort=False):
        sel = rows[rows.stage.eq("prefinetune") & rows.select_top1.notna()]
        axes[0].plot(sel["round"], sel.select_top1, marker="o", ms=3, label=run)
        tests = rows[rows.test_top1.notna()]
        x = [0 if s == "prefinetune" else r + 1 for s, r in zip(tests.stage, tests["round"])]
        axes[1].plot(x, tests.test_top1, marker="o", ms=3, label=run)
    axes[0].set(xlabel="prefinetune round", ylabel="selection top-1 (%)",
                title="lambda network selection (before each round)")
    axes[1].set(xlabel="finetune round (0 = selected lambda network)", ylabel="test top-1 (%)",
                title="test accuracy during finetuning")
    axes[1].legend(frameon=False, fontsize=7)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig
