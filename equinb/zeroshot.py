"""Zero-shot robustness (Basu et al. Figure 4): one orbit pass, every method and setting derived from it.

The article's code runs a separate evaluation for every (method, input transformation) pair. Here the
frozen encoder sees every image once per needed *view* (the union of the group elements of all
transformations), giving per-view logits ``[N, E, C]`` that are cached on disk. Vanilla, equitune and
equizero under every transformation, in both readings, are then cheap tensor operations:

- *as published* (the article's code): per-view probabilities ``softmax(1 * cos)``, then the mean over
  the group (equitune) or the element-wise max over the group (equizero); the test images get a random
  group element drawn once per batch of 32 (``numpy.random.RandomState(seed)``).
- *as described*: a random element per image, reported as its exact expectation (the mean accuracy of
  vanilla over all views, deterministic); equizero keeps the single view chosen by the ``max_prob``
  proxy (same top-1 as the element-wise max; top-5 can differ).

Because every method's group equals the transformation group, a transformed image has the same set of
views as the original (permuted), so equitune and equizero do not depend on the random draw at all.
"""

from __future__ import annotations

from collections.abc import Sized
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Sequence

import numpy as np
import torch
from torch import nn

from .backbones import cpu_chunks
from .cache import cache_key, load_or_compute, module_fingerprint, package_code_fingerprint
from .data import group_transform_indices, image_batches
from .groups import Group, d4_act, get_group
from .heads import load_frozen_model
from .kernels import tuned_kernels
from .progress import counted
from .validation import check_choice
from .wrappers import EquiZero, Equitune

if TYPE_CHECKING:
    import pandas as pd

__all__ = [
    "TRANSFORMS",
    "ZEROSHOT_METHODS",
    "transform_group",
    "view_elements",
    "per_view_logits",
    "cached_per_view_logits",
    "topk_hits",
    "topk_accuracy",
    "evaluate_views",
    "per_image_correct",
    "orbit_predictions",
    "orbit_logits",
    "run_zeroshot",
    "method_ordering",
    "ORDERING_COLUMN",
]

# Input transformations of the test set. "rot180" is the article's "flip"; "hflip" is a true mirror.
TRANSFORMS = ("none", "rot180", "rot90", "hflip")
ZEROSHOT_METHODS = ("vanilla", "equitune", "equizero")


def transform_group(name: str) -> Group:
    """The group of a test transformation (``none`` -> trivial; ``flip`` -> the article's rot180)."""
    check_choice(name, (*TRANSFORMS, "flip"), "transformation", note=" ('flip' = 'rot180')")
    return get_group("trivial" if name == "none" else name)


def view_elements(transforms: Sequence[str]) -> list[tuple[int, int]]:
    """The D4 elements needed to evaluate every transformation, in first-seen order.

    rot90 contains none and rot180, so {none, rot180, rot90} needs 4 views, and adding hflip needs 5.
    """
    if isinstance(transforms, str) or not transforms:  # a bare string would be read one letter at a time
        raise ValueError(f"transforms must be a non-empty list of names (valid: {', '.join(TRANSFORMS)}), got "
                         f"{transforms!r}")
    elements: list[tuple[int, int]] = []
    for name in transforms:
        for e in transform_group(name).elements:
            if e not in elements:
                elements.append(e)
    return elements


@torch.no_grad()
def per_view_logits(encoder: nn.Module, head: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
                    elements: Sequence[tuple[int, int]], device: str | torch.device = "cpu",
                    progress: bool = False, label: str = "zero-shot views") -> tuple[torch.Tensor, torch.Tensor]:
    """Logits of every view of every image, one encoder pass per (image, view).

    ``progress`` draws a bar on standard error; ``label`` names the pass in the progress file's lines
    (``equinb.progress.counted``).

    Shapes: batches of (images [B, 3, S, S], labels [B]) -> logits [N, E, C] (float32, CPU), labels [N].
    """
    from tqdm import tqdm

    dtype = next(encoder.parameters()).dtype
    outs, ys = [], []
    with tuned_kernels(encoder, device):  # CUDA: cuDNN autotuning and channels-last (equinb.kernels)
        total = len(batches) if isinstance(batches, Sized) else None
        for images, labels in tqdm(counted(batches, label, total), total=total, disable=not progress, desc="views",
                                   ascii=True):
            for part in cpu_chunks(images.to(device, non_blocking=True)):
                views = torch.cat([d4_act(part, e) for e in elements])  # [E*b, 3, S, S], element-major
                logits = head(encoder(views.to(dtype)))
                outs.append(logits.float().reshape(len(elements), part.shape[0], -1).transpose(0, 1).cpu())
            ys.append(labels.cpu())
    return torch.cat(outs), torch.cat(ys)


def cached_per_view_logits(cache_dir: str | Path, encoder: nn.Module, head: nn.Module,
                           batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
                           elements: Sequence[tuple[int, int]], dataset_id: dict, device: str | torch.device = "cpu",
                           progress: bool = False, label: str = "zero-shot views") -> tuple[torch.Tensor, torch.Tensor]:
    """``per_view_logits`` cached under a key hashing the encoder and head weights, the dataset, views, device and
    the code that loads and prepares the images and runs the pass.

    The file is written atomically; a changed weight, dataset, view list or device type gives a new key.
    """
    # the images' loading and preparation, the encoder, the head and the pass (cuDNN autotuned on a GPU)
    code = package_code_fingerprint("data", "backbones", "heads", "zeroshot", "groups", "kernels", "validation")
    key = cache_key(kind="per_view_logits", encoder=module_fingerprint(encoder), head=module_fingerprint(head),
                    dataset=dataset_id, elements=list(elements), device=torch.device(device).type,
                    dtype=str(next(encoder.parameters()).dtype), code=code)
    path = Path(cache_dir) / f"view_logits_{key}.pt"
    result = load_or_compute(path, lambda: dict(zip(
        ("logits", "labels"), per_view_logits(encoder, head, batches, elements, device, progress, label))))
    return result["logits"], result["labels"]


def topk_hits(scores: torch.Tensor, labels: torch.Tensor, k: int = 1) -> torch.Tensor:
    """1.0 for each row whose label is among its k highest scores, else 0.0 (with fewer than k classes, every
    class counts). Shapes: scores [N, C], labels [N] -> [N] (float64)."""
    top = scores.topk(min(k, scores.shape[-1]), dim=-1).indices
    return (top == labels[:, None]).any(dim=-1).double()


def topk_accuracy(scores: torch.Tensor, labels: torch.Tensor, k: int = 1) -> float:
    """Percentage of rows whose label is among the k highest scores. Shapes: scores [N, C], labels [N]."""
    return 100.0 * topk_hits(scores, labels, k).mean().item()


def _method_scores(logits: torch.Tensor, elements: Sequence[tuple[int, int]], transform: str, batch_size: int,
                   seed: int) -> dict[tuple[str, str], list[torch.Tensor]]:
    """Per (method, reading), the score tensors [N, C] whose accuracies are averaged (several for vanilla as
    described: one per view, its exact expectation). Shapes: logits [N, E, C] over ``elements``."""
    group = transform_group(transform)
    missing = [e for e in group.elements if e not in elements]
    if missing:
        raise ValueError(f"transformation {transform!r} needs views {missing}, not in the computed views "
                         f"{list(elements)}")
    n = logits.shape[0]
    views = logits[:, [list(elements).index(e) for e in group.elements]]  # [N, G, C]
    # the wrappers themselves, on cached logits: identity trunk and head, softmax of 1x cosine (as published)
    equitune = Equitune(nn.Identity(), group, output_softmax=True)
    published_max = EquiZero(nn.Identity(), group, output_softmax=True, elementwise_max=True)
    selected = EquiZero(nn.Identity(), group, output_softmax=True, proxy="max_prob")
    draws = torch.from_numpy(group_transform_indices(n, group.order, "batch", batch_size, seed))
    with torch.no_grad():
        mean_probs = equitune.forward_views(views=views)
        return {
            ("vanilla", "as_published"): [views[torch.arange(n), draws]],
            ("vanilla", "as_described"): [views[:, k] for k in range(group.order)],  # exact expectation
            ("equitune", "as_published"): [mean_probs],
            ("equitune", "as_described"): [mean_probs],
            ("equizero", "as_published"): [published_max.forward_views(views=views)],
            ("equizero", "as_described"): [selected.forward_views(views=views)],
        }


def evaluate_views(logits: torch.Tensor, labels: torch.Tensor, elements: Sequence[tuple[int, int]],
                   transforms: Sequence[str] = TRANSFORMS, batch_size: int = 32, seed: int = 0) -> list[dict]:
    """Top-1/top-5 of vanilla, equitune and equizero under each transformation, in both readings.

    Each method uses the transformation's own group (as the article does). Returns tidy rows with keys
    transform, method, reading, top1, top5 (percent).

    Shapes: logits [N, E, C] over ``elements``; labels [N].
    """
    rows = []
    for name in transforms:
        for (method, reading), scores in _method_scores(logits, elements, name, batch_size, seed).items():
            rows.append(dict(
                transform=name, method=method, reading=reading,
                top1=float(np.mean([topk_accuracy(s, labels, 1) for s in scores])),
                top5=float(np.mean([topk_accuracy(s, labels, 5) for s in scores])),
            ))
    return rows


def per_image_correct(logits: torch.Tensor, labels: torch.Tensor, elements: Sequence[tuple[int, int]], transform: str,
                      batch_size: int = 32, seed: int = 0, k: int = 1) -> dict[tuple[str, str], torch.Tensor]:
    """Per (method, reading), each test image's top-``k`` score [N]: 1.0 if its label is among the k highest
    scores, 0.0 if not (vanilla as described: the share of the views where it is). Their means are
    ``evaluate_views``' top-k / 100; paired comparisons of methods read these (``equinb.verdicts.compare``).

    Shapes: logits [N, E, C] over ``elements``, labels [N] -> {(method, reading): scores [N]}.
    """
    return {key: torch.stack([topk_hits(s, labels, k) for s in scores]).mean(0)
            for key, scores in _method_scores(logits, elements, transform, batch_size, seed).items()}


def orbit_predictions(view_logits: torch.Tensor, group: Group) -> dict[str, torch.Tensor]:
    """The predicted classes of vanilla (view 0: the image as given), equitune (mean of the views'
    probabilities, as published) and equizero (the most confident view) from per-view logits.

    For test sets without a preferred orientation (ISIC 2018), where no transformation is applied: the
    three zero-shot baselines of a frozen model. Shapes: view_logits [N, G, C] over ``group``'s elements ->
    {method: [N]} (long).
    """
    if view_logits.ndim != 3 or view_logits.shape[1] != group.order:
        raise ValueError(f"view_logits must be [N, {group.order}, C] for {group.name}, got {tuple(view_logits.shape)}")
    equitune = Equitune(nn.Identity(), group, output_softmax=True)
    equizero = EquiZero(nn.Identity(), group, output_softmax=True, proxy="max_prob")
    with torch.no_grad():
        return {"vanilla": view_logits[:, 0].argmax(-1),
                "equitune": equitune.forward_views(views=view_logits).argmax(-1),
                "equizero": equizero.forward_views(views=view_logits).argmax(-1)}


def orbit_logits(backbone_name: str, dataset: str, *, transforms: Sequence[str] = TRANSFORMS, device: str = "cpu",
                 batch_size: int = 256, image_size: int | None = None, data_root: str | None = None,
                 cache_dir: str | Path | None = None, clip_path: str | None = None,
                 clip_download_root: str | None = None, num_workers: int = 0, dataset_options: dict | None = None,
                 progress: bool = True, frozen: tuple | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor, list[tuple[int, int]]]:
    """The cached per-view logits of the test split for ``transforms``: (logits [N, E, C], labels [N],
    elements), computed once per (backbone, dataset, views) and loaded afterwards.

    ``frozen``: the ``load_frozen_model`` result for this backbone and dataset, when the caller has it
    already (loading it again costs seconds); otherwise it is loaded from the other arguments.
    """
    elements = view_elements(transforms)  # an unknown transform fails before the backbone loads
    backbone, head, root, cache_dir = frozen or load_frozen_model(
        backbone_name, dataset, device=device, image_size=image_size, data_root=data_root, cache_dir=cache_dir,
        clip_path=clip_path, clip_download_root=clip_download_root, batch_size=batch_size,
        num_workers=num_workers, dataset_options=dataset_options)
    loader, ident = image_batches(backbone, dataset, "test", batch_size, str(root), num_workers, dataset_options)
    logits, labels = cached_per_view_logits(cache_dir, backbone.encoder, head, loader, elements, ident, device,
                                            progress, label=f"zero-shot {backbone_name} on {dataset}")
    return logits, labels, elements


def run_zeroshot(backbone_name: str, dataset: str, *, transforms: Sequence[str] = TRANSFORMS,
                 device: str = "cpu", batch_size: int = 256, seed: int = 0, image_size: int | None = None,
                 data_root: str | None = None, cache_dir: str | Path | None = None, clip_path: str | None = None,
                 clip_download_root: str | None = None, num_workers: int = 0, dataset_options: dict | None = None,
                 progress: bool = True, frozen: tuple | None = None) -> list[dict]:
    """Figure 4 for one (backbone, dataset): one cached orbit pass, then every method and setting.

    Returns tidy rows (backbone, dataset, transform, method, reading, top1, top5). The random draws of
    vanilla follow the article's batches of 32 whatever ``batch_size`` the encoder runs at. ``frozen``: see
    ``orbit_logits``.
    """
    logits, labels, elements = orbit_logits(
        backbone_name, dataset, transforms=transforms, device=device, batch_size=batch_size, image_size=image_size,
        data_root=data_root, cache_dir=cache_dir, clip_path=clip_path, clip_download_root=clip_download_root,
        num_workers=num_workers, dataset_options=dataset_options, progress=progress, frozen=frozen)
    rows = evaluate_views(logits, labels, elements, transforms, batch_size=32, seed=seed)
    return [dict(backbone=backbone_name, dataset=dataset, **row) for row in rows]


ORDERING_COLUMN = "points ranked vanilla < equitune < equizero"


def method_ordering(top1: pd.DataFrame, decimals: int = 2) -> pd.DataFrame:
    """The ordering of the methods' top-1 per row, as printed (equal at ``decimals`` is a tie).

    ``top1``: a DataFrame with columns ``vanilla``, ``equitune``, ``equizero``. Returns a DataFrame with the same
    index and two columns: ``ordering``, strings such as ``"equizero > equitune > vanilla"`` or ``"equitune =
    equizero > vanilla"``, and ``ORDERING_COLUMN``: "yes" where the point values rank strictly as the article
    expects (vanilla < equitune < equizero), else "no". A description of points, not a verdict: a difference of
    one test image counts (``equinb.verdicts.compare`` tests each step with an interval).
    """
    import pandas as pd

    def describe(row: pd.Series) -> str:
        ranked = sorted(ZEROSHOT_METHODS, key=lambda m: -round(float(row[m]), decimals))
        text = ranked[0]
        for prev, name in zip(ranked, ranked[1:]):
            text += (" = " if round(float(row[prev]), decimals) == round(float(row[name]), decimals) else " > ") + name
        return text

    ordering = top1.apply(describe, axis=1)
    return pd.DataFrame({"ordering": ordering, ORDERING_COLUMN: ordering.eq(
        "equizero > equitune > vanilla").map({True: "yes", False: "no"})})
