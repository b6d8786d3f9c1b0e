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

from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch
from torch import nn

from .data import group_transform_indices
from .groups import Group, d4_act, get_group
from .report import cache_key, load_or_compute, module_fingerprint

__all__ = [
    "TRANSFORMS",
    "METHODS",
    "transform_group",
    "view_elements",
    "CosineHead",
    "prompt_ensemble_weights",
    "fit_linear_head",
    "per_view_logits",
    "cached_per_view_logits",
    "topk_accuracy",
    "evaluate_views",
]

# Input transformations of the test set. "rot180" is the article's "flip"; "hflip" is a true mirror.
TRANSFORMS = ("none", "rot180", "rot90", "hflip")
METHODS = ("vanilla", "equitune", "equizero")


def transform_group(name: str) -> Group:
    """The group of a test transformation (``none`` -> trivial; ``flip`` -> the article's rot180)."""
    if name not in TRANSFORMS and name != "flip":
        raise ValueError(f"unknown transformation {name!r}; valid: {', '.join(TRANSFORMS)} ('flip' = 'rot180')")
    return get_group("trivial" if name == "none" else name)


def view_elements(transforms: Sequence[str]) -> list[tuple[int, int]]:
    """The D4 elements needed to evaluate every transformation, in first-seen order.

    rot90 contains none and rot180, so {none, rot180, rot90} needs 4 views, and adding hflip needs 5.
    """
    elements: list[tuple[int, int]] = []
    for name in transforms:
        for e in transform_group(name).elements:
            if e not in elements:
                elements.append(e)
    return elements


class CosineHead(nn.Module):
    """CLIP's zero-shot head: ``logit_factor * normalise(f) @ W``.

    Shapes: embeddings [B, D] -> logits [B, C]; ``weights`` W [D, C] with unit-norm columns.
    """

    def __init__(self, weights: torch.Tensor, logit_factor: float = 1.0) -> None:
        super().__init__()
        self.register_buffer("weights", weights)
        self.logit_factor = float(logit_factor)

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        feats = feats / feats.norm(dim=-1, keepdim=True)
        return self.logit_factor * feats.to(self.weights.dtype) @ self.weights


@torch.no_grad()
def prompt_ensemble_weights(clip_model: nn.Module, classnames: Sequence[str], templates: Sequence[str],
                            device: str | torch.device = "cpu", batch_size: int = 1000) -> torch.Tensor:
    """CLIP's prompt-ensemble text head: per class, mean of normalised template embeddings, renormalised.

    Shapes: -> W [D, C] (columns unit norm, the model's dtype).
    """
    import clip  # lazily: ``import equinb`` must not import clip

    columns = []
    for name in classnames:
        texts = clip.tokenize([t.format(name) for t in templates]).to(device)
        emb = torch.cat([clip_model.encode_text(texts[i:i + batch_size]) for i in range(0, len(texts), batch_size)])
        emb = emb / emb.norm(dim=-1, keepdim=True)
        mean = emb.mean(dim=0)
        columns.append(mean / mean.norm())
    return torch.stack(columns, dim=1)


def fit_linear_head(feats: torch.Tensor, labels: torch.Tensor, weight_decay: float = 1e-3,
                    steps: int = 200) -> nn.Linear:
    """Multinomial logistic regression on frozen embeddings (the small profile's stand-in text head).

    Full-batch L-BFGS in float64 with an L2 penalty on the raw (non-negative, pooled) features:
    deterministic on the CPU and done in seconds for a few thousand embeddings. (Standardising the
    features first gives the same upright accuracy but over-weights rarely active channels, which makes
    the head less calibrated on rotated inputs and hurts equizero's confidence proxy.)

    Shapes: feats [N, D], labels [N] -> Linear(D, C).
    """
    x = feats.double()
    n_classes = int(labels.max()) + 1
    weight = torch.zeros(n_classes, x.shape[1], dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(n_classes, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([weight, bias], max_iter=steps, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = nn.functional.cross_entropy(x @ weight.T + bias, labels) + weight_decay * weight.square().sum()
        loss.backward()
        return loss

    opt.step(closure)
    head = nn.Linear(x.shape[1], n_classes)
    with torch.no_grad():
        head.weight.copy_(weight)
        head.bias.copy_(bias)
    return head.requires_grad_(False)


@torch.no_grad()
def per_view_logits(encoder: nn.Module, head: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
                    elements: Sequence[tuple[int, int]], device: str | torch.device = "cpu",
                    progress: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits of every view of every image, one encoder pass per (image, view).

    Shapes: batches of (images [B, 3, S, S], labels [B]) -> logits [N, E, C] (float32, CPU), labels [N].
    """
    from tqdm import tqdm

    dtype = next(encoder.parameters()).dtype
    outs, ys = [], []
    for images, labels in tqdm(batches, disable=not progress, desc="views", ascii=True):
        images = images.to(device, non_blocking=True)
        views = torch.cat([d4_act(images, e) for e in elements])  # [E*B, 3, S, S], element-major
        logits = head(encoder(views.to(dtype)))
        outs.append(logits.float().reshape(len(elements), images.shape[0], -1).transpose(0, 1).cpu())
        ys.append(labels.cpu())
    return torch.cat(outs), torch.cat(ys)


def cached_per_view_logits(cache_dir: str | Path, encoder: nn.Module, head: nn.Module,
                           batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
                           elements: Sequence[tuple[int, int]], dataset_id: dict, device: str | torch.device = "cpu",
                           progress: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """``per_view_logits`` cached under a key hashing the encoder and head weights, the dataset, views and device.

    The file is written atomically; a changed weight, dataset, view list or device type gives a new key.
    """
    key = cache_key(kind="per_view_logits", encoder=module_fingerprint(encoder), head=module_fingerprint(head),
                    dataset=dataset_id, elements=list(elements), device=torch.device(device).type,
                    dtype=str(next(encoder.parameters()).dtype))
    path = Path(cache_dir) / f"view_logits_{key}.pt"
    result = load_or_compute(path, lambda: dict(zip(
        ("logits", "labels"), per_view_logits(encoder, head, batches, elements, device, progress))))
    return result["logits"], result["labels"]


def topk_accuracy(scores: torch.Tensor, labels: torch.Tensor, k: int = 1) -> float:
    """Percentage of rows whose label is among the k highest scores. Shapes: scores [N, C], labels [N]."""
    k = min(k, scores.shape[-1])
    top = scores.topk(k, dim=-1).indices
    return 100.0 * (top == labels[:, None]).any(dim=-1).double().mean().item()


def evaluate_views(logits: torch.Tensor, labels: torch.Tensor, elements: Sequence[tuple[int, int]],
                   transforms: Sequence[str] = TRANSFORMS, batch_size: int = 32, seed: int = 0) -> list[dict]:
    """Top-1/top-5 of vanilla, equitune and equizero under each transformation, in both readings.

    Each method uses the transformation's own group (as the article does). Returns tidy rows with keys
    transform, method, reading, top1, top5 (percent).

    Shapes: logits [N, E, C] over ``elements``; labels [N].
    """
    rows = []
    n = logits.shape[0]
    for name in transforms:
        group = transform_group(name)
        missing = [e for e in group.elements if e not in elements]
        if missing:
            raise ValueError(f"transformation {name!r} needs views {missing}, not in the computed views {list(elements)}")
        views = logits[:, [list(elements).index(e) for e in group.elements]]  # [N, G, C]
        probs = torch.softmax(views, dim=-1)  # as published: softmax of 1x cosine logits
        draws = torch.from_numpy(group_transform_indices(n, group.order, "batch", batch_size, seed))
        picked = views[torch.arange(n), draws]
        chosen = probs.amax(dim=-1).argmax(dim=1)  # the max_prob proxy's view
        results = {
            ("vanilla", "as_published"): [picked],
            ("vanilla", "as_described"): [views[:, k] for k in range(group.order)],  # exact expectation
            ("equitune", "as_published"): [probs.mean(dim=1)],
            ("equitune", "as_described"): [probs.mean(dim=1)],
            ("equizero", "as_published"): [probs.amax(dim=1)],
            ("equizero", "as_described"): [probs[torch.arange(n), chosen]],
        }
        for (method, reading), scores in results.items():
            rows.append(dict(
                transform=name, method=method, reading=reading,
                top1=float(np.mean([topk_accuracy(s, labels, 1) for s in scores])),
                top5=float(np.mean([topk_accuracy(s, labels, 5) for s in scores])),
            ))
    return rows


# ------------------------------------------------------------------------------------------ experiment


def validate_zeroshot_params(backbones: Sequence[str], datasets: Sequence[str], transforms: Sequence[str],
                             device: str, clip_paths: dict | None = None) -> None:
    """Fail fast, before any heavy work, with a message that names the valid choices."""
    from .backbones import BACKBONE_NAMES
    from .data import DATASET_NAMES

    for name in backbones:
        if name not in BACKBONE_NAMES:
            raise ValueError(f"unknown backbone {name!r}; valid: {', '.join(BACKBONE_NAMES)}")
    for name in datasets:
        if name not in DATASET_NAMES:
            raise ValueError(f"unknown dataset {name!r}; valid: {', '.join(DATASET_NAMES)}")
    for name in transforms:
        transform_group(name)
    if not str(device).startswith(("cpu", "cuda")):
        raise ValueError(f"unknown device {device!r}; valid: 'cpu', 'cuda', 'cuda:<index>'")
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device={device!r} was requested but no CUDA GPU is available; use device='cpu'")
    for name, path in (clip_paths or {}).items():
        if not Path(path).is_file():
            raise ValueError(f"clip_paths[{name!r}] = {path!r} is not a file")


def dataset_batches(backbone, dataset: str, split: str, batch_size: int, data_root: str | None, num_workers: int,
                  options: dict | None = None):
    """A loader of normalised images of one split for a backbone, and an id describing them for cache keys.

    ``options``: extra keyword arguments of ``equinb.data.get_dataset`` (e.g. ``download=True`` for CIFAR100).

    Shapes: batches of (images [B, 3, S, S], labels [B]), S = ``backbone.input_size``.
    """
    from torch.utils.data import DataLoader

    from .data import get_dataset

    if dataset == "digits":
        ds = get_dataset("digits", split, size=backbone.input_size, mean=backbone.mean, std=backbone.std)
    else:
        ds = get_dataset(dataset, split, root=data_root, transform=backbone.preprocess, **(options or {}))
    loader = DataLoader(ds, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                        pin_memory=torch.cuda.is_available())
    ident = dict(dataset=dataset, split=split, n=len(ds), size=backbone.input_size, root=str(data_root),
                 mean=backbone.mean, std=backbone.std)
    return loader, ident


def zeroshot_head(backbone, dataset: str, cache_dir: str | Path, *, batch_size: int = 256, data_root: str | None = None,
                  num_workers: int = 0, dataset_options: dict | None = None) -> nn.Module:
    """The frozen classification head of a backbone on a dataset, cached on disk.

    CLIP: the prompt-ensemble text head (``CosineHead``, logit factor 1 as in the article).
    Other backbones (the small profile's MobileNetV2): a linear head fitted once on the embeddings of
    the *upright* training images, which stands in for the text head and never sees a transformed image.
    """
    from .data import dataset_classes
    from .prompts import templates_for

    if backbone.text_model is not None:
        classes, templates = dataset_classes(dataset), templates_for(dataset)
        key = cache_key(kind="text_head", model=module_fingerprint(backbone.text_model), classes=classes,
                        templates=templates)
        weights = load_or_compute(Path(cache_dir) / f"text_head_{key}.pt", lambda: prompt_ensemble_weights(
            backbone.text_model, classes, templates, backbone.device).cpu())
        return CosineHead(weights.to(backbone.device))
    loader, ident = dataset_batches(backbone, dataset, "train", batch_size, data_root, num_workers,
                                    dataset_options)
    key = cache_key(kind="linear_head", encoder=module_fingerprint(backbone.encoder), data=ident)

    def fit() -> dict:
        with torch.no_grad():
            feats, labels = zip(*[(backbone.encoder(x.to(backbone.device)).float().cpu(), y) for x, y in loader])
        head = fit_linear_head(torch.cat(feats), torch.cat(labels))
        return head.state_dict()

    state = load_or_compute(Path(cache_dir) / f"linear_head_{key}.pt", fit)
    head = nn.Linear(state["weight"].shape[1], state["weight"].shape[0])
    head.load_state_dict(state)
    return head.requires_grad_(False).to(backbone.device)


def load_zeroshot_model(backbone_name: str, dataset: str, *, device: str = "cpu", image_size: int | None = None,
                        data_root: str | None = None, cache_dir: str | Path | None = None,
                        clip_path: str | None = None, clip_download_root: str | None = None, batch_size: int = 256,
                        num_workers: int = 0, dataset_options: dict | None = None):
    """The frozen backbone and its zero-shot head (see ``zeroshot_head``) for one dataset.

    Returns ``(backbone, head, root, cache_dir)``; ``head(backbone.encoder(x))`` gives logits [B, C].
    """
    from .backbones import load_backbone
    from .data import data_root as default_root

    root = Path(data_root) if data_root else default_root()
    cache_dir = Path(cache_dir) if cache_dir else root / "cache"
    size = image_size if backbone_name == "mobilenet_v2" else None
    backbone = load_backbone(backbone_name, device, path=clip_path, download_root=clip_download_root,
                             input_size=size)
    backbone.model.requires_grad_(False)  # frozen: no autograd through the encoder
    head = zeroshot_head(backbone, dataset, cache_dir, batch_size=batch_size, data_root=str(root),
                         num_workers=num_workers, dataset_options=dataset_options)
    return backbone, head, root, cache_dir


def run_zeroshot(backbone_name: str, dataset: str, *, transforms: Sequence[str] = TRANSFORMS,
                 device: str = "cpu", batch_size: int = 256, seed: int = 0, image_size: int | None = None,
                 data_root: str | None = None, cache_dir: str | Path | None = None, clip_path: str | None = None,
                 clip_download_root: str | None = None, num_workers: int = 0, dataset_options: dict | None = None,
                 progress: bool = True) -> list[dict]:
    """Figure 4 for one (backbone, dataset): one cached orbit pass, then every method and setting.

    Returns tidy rows (backbone, dataset, transform, method, reading, top1, top5). The random draws of
    vanilla follow the article's batches of 32 whatever ``batch_size`` the encoder runs at.
    """
    backbone, head, root, cache_dir = load_zeroshot_model(
        backbone_name, dataset, device=device, image_size=image_size, data_root=data_root, cache_dir=cache_dir,
        clip_path=clip_path, clip_download_root=clip_download_root, batch_size=batch_size,
        num_workers=num_workers, dataset_options=dataset_options)
    loader, ident = dataset_batches(backbone, dataset, "test", batch_size, str(root), num_workers, dataset_options)
    elements = view_elements(transforms)
    logits, labels = cached_per_view_logits(cache_dir, backbone.encoder, head, loader, elements, ident, device,
                                            progress)
    rows = evaluate_views(logits, labels, elements, transforms, batch_size=32, seed=seed)
    return [dict(backbone=backbone_name, dataset=dataset, **row) for row in rows]


def article_fig4():
    """The article's Figure-4 numbers as a DataFrame in this module's names.

    Columns: backbone, dataset (``cifar100`` | ``imagenetv2``), transform (``none`` | ``rot180`` | ``rot90``;
    the article's ``flip`` is ``rot180``), method, seed_top1, seed_top5 (the reproduction's result files),
    paper_top1 (Basu et al.'s plotted values).
    """
    from .reference import reference_table

    ref = reference_table("orig_fig4_zeroshot")
    ref = ref.assign(dataset=ref.dataset.str.lower(), transform=ref["transform"].replace({"flip": "rot180"}),
                     column=ref.variant + "_" + ref.metric)
    wide = ref.pivot_table(index=["backbone", "dataset", "transform", "method"], columns="column", values="value")
    wide = wide.reset_index().rename_axis(columns=None)
    order = {name: i for i, name in enumerate(("RN50", "RN101", "ViT-B/32", "ViT-B/16"))}  # the article's order
    return wide.sort_values(["backbone", "dataset", "transform", "method"], key=lambda col: col.map(order)
                            if col.name == "backbone" else col, ignore_index=True)


def compare_fig4(ours, article):
    """Our top-1 (both readings) beside the article's, with ``delta = ours (as published) - article (seed)``.

    ``ours``: tidy rows from ``run_zeroshot``. Rows of the article that this run does not cover are kept
    (with empty ours) only for backbones and datasets this run covers.
    """
    wide = ours.pivot_table(index=["backbone", "dataset", "transform", "method"], columns="reading",
                            values="top1").reset_index().rename_axis(columns=None)
    table = wide.merge(article[["backbone", "dataset", "transform", "method", "seed_top1", "paper_top1"]],
                       on=["backbone", "dataset", "transform", "method"], how="left")
    table["delta"] = table["as_published"] - table["seed_top1"]
    return table.rename(columns={"as_published": "ours (as published)", "as_described": "ours (as described)",
                                 "seed_top1": "article (seed files)", "paper_top1": "article (Basu et al.)"})
