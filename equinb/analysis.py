"""What trained view-weighting models do: per-view weights, their statistics, and measured symmetries.

Everything works on cached per-view trunk outputs ``feats`` [N, G, ...] of a test set: the views of a
transformed input ``g x`` are the views of ``x`` permuted, so every input transformation is a column
permutation and no backbone pass is needed.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

import torch
from torch import nn

from .cache import cache_key, load_or_compute, package_code_fingerprint
from .checks import evaluation_mode, format_error, largest_error, seeded
from .engine import ViewData, extract_view_features, model_device
from .groups import Group
from .heads import fit_linear_head
from .setups import TrainingSetup
from .precision import full_precision  # the wrappers' own rule for half-precision views
from .wrappers import OrbitWrapper
from .zeroshot import orbit_predictions

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["ONE_VIEW_ALL_WEIGHT", "view_weights", "weight_summary", "rotation_labels", "combined_map_symmetry",
           "plain_head_top1", "positional_head", "symmetry_tables", "group_changes", "frozen_test_logits",
           "no_training_predictions", "no_training_scores"]

Tensor = torch.Tensor
ONE_VIEW_ALL_WEIGHT = 0.995  # the lower edge of the article's top histogram bin, [0.995, 1.005]


def rotation_labels(group: Group) -> list[str]:
    """Column names of the views: degrees ("0", "90", ...) for rotation groups, else the (r, s) elements (a group
    with mirrors)."""
    if all(s == 0 for _, s in group.elements):
        return [str(90 * r) for r, _ in group.elements]
    return [str(e) for e in group.elements]


@torch.no_grad()
def view_weights(model: OrbitWrapper, feats: Tensor, batch_size: int = 256, seed: int = 0) -> Tensor:
    """The weight of every view of every image, in evaluation mode (seeded, for an active dropout).

    lambda-equitune: its combination weights (softmax- or sum-normalised lambda; under ``normalisation="none"``,
    the article's invariant code, the raw lambda, each view's scale in a plain mean); equiattention: the column
    means of the attention matrix (the effective weight of each view, article sec. 4.4). Shapes: feats [N, G, ...]
    -> [N, G].
    """
    out = []
    with evaluation_mode(model), seeded(seed):
        for start in range(0, feats.shape[0], batch_size):
            chunk = feats[start:start + batch_size].to(model_device(model))
            out.append(model.view_weights(chunk).float().cpu())
    return torch.cat(out)


def weight_summary(weights: Tensor, labels: Sequence[str], original: Tensor | None = None) -> dict[str, float]:
    """Mean weight per view and the two "not upright" statistics of the article's Figure 2 discussion.

    - ``share_argmax_not_upright``: the share of images whose largest weight is not on view 0, the image as
      given (ties go to view 0: ``argmax`` returns the first maximum). This is what the text describes.
    - ``share_upright_smallest``: the share whose view 0 has a strictly smaller weight than every other
      view: the definition in the article's surviving notebook.
    - ``share_argmax_on_original``: the share whose largest weight is on view ``original[i]``, the view
      that shows image i as it was before a known random turn (default: view 0).
    - ``share_one_view_all_weight``: the share whose largest weight is at least ``ONE_VIEW_ALL_WEIGHT``, what
      the article's histogram counts in its bin [0.995, 1.005].

    Shapes: weights [N, G], original [N] -> ``{"mean_<label>": ..., "share_...": ...}`` (fractions).
    """
    if weights.ndim != 2 or weights.shape[1] != len(labels):
        raise ValueError(f"weights must be [N, {len(labels)}], got {tuple(weights.shape)}")
    original = torch.zeros(len(weights), dtype=torch.long) if original is None else original
    out = {f"mean_{label}": float(weights[:, k].mean()) for k, label in enumerate(labels)}
    out["share_argmax_not_upright"] = float((weights.argmax(dim=1) != 0).double().mean())
    out["share_upright_smallest"] = float((weights[:, 0] < weights[:, 1:].amin(dim=1)).double().mean())
    out["share_argmax_on_original"] = float((weights.argmax(dim=1) == original).double().mean())
    out["share_one_view_all_weight"] = float((weights.amax(dim=1) >= ONE_VIEW_ALL_WEIGHT).double().mean())
    return out


@torch.no_grad()
def combined_map_symmetry(model: OrbitWrapper, feats: Tensor, labels: Tensor, heads: dict[str, nn.Module],
                          batch_size: int = 256) -> tuple[list[dict], dict[str, Tensor]]:
    """Measure, for each group element g, what turning every input by g does to the combined map and logits.

    ``Z(x) = sum_k w_k U_k`` is the head's input (``U_k = g_k^-1 V_k`` when the model aligns its views).
    Per element: ``invariance`` = max |Z(gx) - Z(x)|, ``equivariance`` = max |Z(gx) - g Z(x)|, then for
    each head its largest logit change max |head(Z(gx)) - head(Z(x))| and its top-1 (%) on the turned
    inputs; ``scale_*`` are the magnitudes to judge float rounding by. Also, per image, the same two errors
    as a share of that image's map scale (max over the non-identity elements): ``{"invariance": [N],
    "equivariance": [N]}``, for intervals over images. Shapes: feats [N, G, C, h, w].
    """
    group = model.group
    with evaluation_mode(model):
        rows = [dict(element=e, invariance=0.0, equivariance=0.0, scale_map=0.0,
                     **{f"{n}_{k}": 0.0 for n in heads for k in ("logit_change", "scale", "top1")})
                for e in range(group.order)]
        per_image = {"invariance": torch.zeros(feats.shape[0], dtype=torch.float64),
                     "equivariance": torch.zeros(feats.shape[0], dtype=torch.float64)}
        for start in range(0, feats.shape[0], batch_size):
            # in float32 as forward_views computes: the maps are cached in fp16 on a GPU, and Z summed in fp16
            # would show fp16 rounding as a symmetry error
            chunk = full_precision(feats[start:start + batch_size].to(model_device(model)))
            truth = labels[start:start + batch_size]
            base = model.combined_views(chunk, model.view_weights(chunk))
            base_logits = {name: head(base) for name, head in heads.items()}
            for element, row in enumerate(rows):
                if element == 0:  # the identity: its views are the chunk itself, whose Z is ``base``
                    z = base
                else:
                    moved = chunk[:, group.view_permutation(element)]
                    z = model.combined_views(moved, model.view_weights(moved))
                invariance, equivariance = (z - base).abs(), (z - group.act(base, element)).abs()
                # largest_error keeps a NaN, which max() drops when it comes second
                row["invariance"] = largest_error([row["invariance"], invariance.max().item()])
                row["equivariance"] = largest_error([row["equivariance"], equivariance.max().item()])
                row["scale_map"] = max(row["scale_map"], base.abs().max().item())
                if element:
                    scale = base.flatten(1).abs().amax(1).clamp_min(1e-30).double().cpu()
                    for key, error in (("invariance", invariance), ("equivariance", equivariance)):
                        part = per_image[key][start:start + len(chunk)]
                        torch.maximum(part, error.flatten(1).amax(1).double().cpu() / scale, out=part)
                for name, head in heads.items():
                    logits = head(z)
                    row[f"{name}_logit_change"] = largest_error([row[f"{name}_logit_change"],
                                                                 (logits - base_logits[name]).abs().max().item()])
                    row[f"{name}_scale"] = max(row[f"{name}_scale"], base_logits[name].abs().max().item())
                    row[f"{name}_top1"] += 100.0 * float((logits.argmax(-1).cpu() == truth).sum()) / len(labels)
    return rows, per_image


@torch.no_grad()
def plain_head_top1(head: nn.Module, feats: Tensor, labels: Tensor, batch_size: int = 256) -> dict[str, float]:
    """Reference points without any weighting network, from cached per-view outputs [N, G, ...].

    ``upright``: the head on view 0 (the images as given); ``rotated``: the head on one view, averaged
    over the views (a test set turned by a uniformly random element); ``mean_of_views``: the head on the
    mean of the views (equitune of unaligned views, what a constant weighting gives). Top-1 in %.

    Shapes: feats [N, G, ...], labels [N] -> {"upright", "rotated", "mean_of_views": top-1}.
    """
    device = model_device(head)
    hits = {"upright": 0, "rotated": 0.0, "mean_of_views": 0}
    for start in range(0, feats.shape[0], batch_size):
        chunk = full_precision(feats[start:start + batch_size].to(device))  # the mean of fp16 views in float32
        truth = labels[start:start + batch_size]
        per_view = torch.stack([head(chunk[:, k]).argmax(-1).cpu() == truth for k in range(chunk.shape[1])], 1)
        hits["upright"] += int(per_view[:, 0].sum())
        hits["rotated"] += float(per_view.double().mean(1).sum())
        hits["mean_of_views"] += int((head(chunk.mean(1)).argmax(-1).cpu() == truth).sum())
    return {k: 100.0 * v / len(labels) for k, v in hits.items()}


def positional_head(setup: TrainingSetup, cache_dir: str | Path | None = None) -> nn.Module:
    """A head that sees *where* a feature is: a linear classifier on the flattened map [C*h*w], fitted on
    the upright training maps (a stand-in for attnpool's absolute positional embedding).

    ``cache_dir``: keep the fitted head there, keyed by the setup (two chapters use the same head).
    """
    def fit() -> dict:
        return fit_linear_head(setup.train_feats[:, 0].flatten(1), setup.train.labels).state_dict()

    if cache_dir is None or not setup.key:
        state = fit()
    else:
        key = cache_key(setup=setup.key, code=package_code_fingerprint("heads", "analysis"))
        state = load_or_compute(Path(cache_dir) / f"positional_head_{key}.pt", fit)
    linear = nn.Linear(state["weight"].shape[1], state["weight"].shape[0])
    linear.load_state_dict(state)
    return nn.Sequential(nn.Flatten(), linear.requires_grad_(False))


def symmetry_tables(models: dict[str, OrbitWrapper], setup: TrainingSetup, heads: dict[str, nn.Module]
                    ) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, dict[str, Tensor]]]:
    """``combined_map_symmetry`` of several trained models on the test set.

    Returns ``(errors, top1, per_image)``: per model the largest change over the non-identity elements, printed
    with ``format_error`` (float rounding shows as a bound), each head's top-1 (%) per input element (two
    DataFrames), and per model the per-image relative errors of ``combined_map_symmetry``.
    """
    import pandas as pd

    measured = {name: combined_map_symmetry(model, setup.test_feats, setup.test.labels, heads)
                for name, model in models.items()}
    records = [dict(model=name, **r) for name, (rows, _) in measured.items() for r in rows]
    frame = pd.DataFrame(records)
    worst = frame[frame.element > 0].groupby("model", sort=False).agg("max")
    show = lambda col, scale: [format_error(e, s) for e, s in zip(worst[col], worst[scale])]  # noqa: E731
    errors = pd.DataFrame({"Z invariance error": show("invariance", "scale_map"),
                           "Z equivariance error": show("equivariance", "scale_map"),
                           **{f"{h} logit change": show(f"{h}_logit_change", f"{h}_scale") for h in heads}},
                          index=worst.index)
    top1 = frame.pivot_table(index="model", columns="element", values=[f"{h}_top1" for h in heads], sort=False)
    return errors, top1, {name: per_image for name, (_, per_image) in measured.items()}


@torch.no_grad()
def group_changes(functions: dict[str, Callable[[Tensor], Tensor]], data: ViewData, group: Group,
                  n_images: int = 8) -> dict[str, str]:
    """How much each function's output moves when the first ``n_images`` images are transformed by every
    non-identity element of ``group`` (their views permuted), printed with ``format_error`` (float
    rounding for an invariant function). Shapes: each function maps per-view inputs [B, G, ...] -> [B, K]."""
    index = torch.arange(min(n_images, len(data)))
    views = data.batch(index)[0]
    changes = {}
    for name, fn in functions.items():
        reference = fn(views)
        error = largest_error((fn(data.batch(index, k, group)[0]) - reference).abs().max().item()
                              for k in range(1, group.order))
        changes[name] = format_error(error, reference.abs().max().item())
    return changes


@torch.no_grad()
def frozen_test_logits(setup: TrainingSetup, batch_size: int = 256) -> Tensor:
    """The frozen head on every view of every test image. Shapes: -> [N, G, K]."""
    return extract_view_features(setup.head, ViewData(setup.test_feats, setup.test.labels), batch_size,
                                 device=model_device(setup.head), label="frozen head on the test views")


def no_training_predictions(setup: TrainingSetup) -> dict[str, Tensor]:
    """What the frozen model and its head predict on the test set with no training at all: vanilla (the image as
    given), equitune and equizero over the setup's group (``equinb.zeroshot.orbit_predictions``). Shapes: ->
    {method: [N]} (long)."""
    return orbit_predictions(frozen_test_logits(setup), setup.group)


def no_training_scores(setup: TrainingSetup) -> dict[str, Tensor]:
    """Per test image, how often the frozen model is right with no training, in the article's test condition (every
    image turned by a random element of the group): vanilla's expected score over the turns (the share of views
    it gets right), and equitune's and equizero's 1/0 (their views do not depend on the turn). The baselines a
    trained run must beat before its comparisons mean anything. Shapes: -> {method: [N]} (float)."""
    logits, labels = frozen_test_logits(setup), setup.test.labels
    scores = {name: (p == labels).double() for name, p in orbit_predictions(logits, setup.group).items()}
    scores["vanilla"] = (logits.argmax(-1) == labels[:, None]).double().mean(1)
    return scores
