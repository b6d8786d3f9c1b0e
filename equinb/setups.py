"""Experiment setups of the training chapters, and their trained runs cached on disk.

- ``small_lambda_setup`` / ``small_feature_map_setup``: the small profile (MobileNetV2 on digits, the
  frozen prefix cached per view, the rest trainable), at the embedding or the feature-map level.
- ``clip_lambda_setup``: the paper profile (CLIP's image encoder and its prompt-ensemble text head).
- ``build_setup``: one entry for the chapters (``profile`` x ``level``).
- ``run_training``: prefinetune, select, finetune and evaluate one configuration, cached by a key that
  changes only when the setup, the configuration or what the training code does changes.
- ``feature_map_config`` / ``trained_model``: the article's feature-map runs.

Levels: ``"embeddings"`` (normalised embeddings, the invariant lambda-equitune) and ``"maps"`` (feature
maps, the article's sec. 4.2). Methods: ``"lambda_equitune"`` and ``"equiattention"``.
"""

from __future__ import annotations

import copy
import functools
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, NamedTuple, Sequence

import numpy as np
import torch
from torch import nn

from .backbones import CLIP_NAMES, CPU_PASS_IMAGES, TINY_CLIP_NAMES, Backbone, load_backbone
from .cache import cache_dir as default_cache_dir
from .cache import (ThrottledSave, cache_key, class_code_fingerprint, load_or_compute, load_or_compute_resumable,
                    load_saved, module_fingerprint, package_code_fingerprint)
from .cache import data_root as default_data_root
from .checks import seeded
from .data import (ISIC2018_CLASS_COUNTS, DatasetSpec, dataset_spec, fashion_mnist_arrays, get_dataset, load_digits,
                   load_fashion_mnist, proportional_counts, root_identity)
from .engine import (ImageViewData, TrainConfig, ViewData, extract_view_features, finetune, finetuned_part,
                     model_device, parameter_drift, predict, prefinetune, reset_groups, set_finetune_precision,
                     snapshot, weight_net_for, weighted_model)
from .groups import Group
from .heads import PooledHead, fit_linear_head, linear_text_head, load_frozen_model, prototype_head
from .kernels import tuned_kernels
from .metrics import top1
from .precision import apply_clip_precision
from .progress import RoundClock, report
from .wrappers import EquiAttention, LambdaEquitune
from .validation import check_choice

__all__ = ["LEVELS", "PROFILES", "TrainingSetup", "TrainingRun", "seed_repeats", "correct_by_seed", "stand_in_index",
           "STAND_IN_CLASSES", "STAND_IN_TRAIN_IMAGES", "stand_in_counts", "isic_stand_in", "small_lambda_setup",
           "small_feature_map_setup", "clip_lambda_setup", "build_setup", "run_training", "training_code_fingerprint",
           "feature_map_config", "trained_model", "check_map_image_size", "RunCheckpoints"]

Tensor = torch.Tensor
LEVELS = ("embeddings", "maps")
PROFILES = ("small", "paper")  # small: MobileNetV2 on digits, on a CPU; paper: CLIP on the datasets, on a GPU


class TrainingRun(NamedTuple):
    """One trained configuration (see ``run_training``)."""

    row: dict[str, float]  # prefinetune_top1, finetune_top1 (%)
    history: list[dict]  # tidy: stage, round, step, loss, select_top1, test_top1
    states: dict[str, dict]  # weighting-module state dicts: prefinetune (selected), finetune
    predictions: dict[str, Tensor]  # predicted test classes [N_test]: prefinetune, finetune (and ablations)
    drift: list[dict]  # per trunk tensor: what finetuning changed (``equinb.engine.parameter_drift``)
    seed: int | None = None  # the configuration's seed (None where unknown): verdict reasons name a seed by it


@dataclass
class TrainingSetup:
    """Everything an invariant lambda-equitune run needs, built once and shared by all configurations.

    Attributes:
        group: the group of the views (and of the random training transformation).
        make_trunk: returns a fresh trainable copy of the trunk (finetuning changes it).
        head: the fixed linear head on normalised embeddings (CLIP's text head, or its stand-in).
        train, test: per-view trunk inputs.
        train_feats, test_feats: trunk outputs of every view under the frozen model, [N, G, D] normalised
            embeddings (or [N, G, C, h, w] maps at the feature-map level): the exact cache used by
            prefinetuning and by the frozen-copy lambda input.
        description: what the trunk, head and data are (printed by the chapters).
        normalise_views: True at the embedding level (CLIP's normalised embeddings), False for maps.
        key: names the setup's data and weights in cache keys of training runs ("" = runs are not cached).
        turns: for ``reoriented`` setups, per split ("train", "test") the element each image was turned by.
        index: for setups drawn from a larger dataset, per split the positions of its images there.
    """

    group: Group
    make_trunk: Callable[[], nn.Module]
    head: nn.Module
    train: ViewData
    test: ViewData
    train_feats: Tensor
    test_feats: Tensor
    description: str = ""
    normalise_views: bool = True
    key: str = ""
    turns: dict[str, Tensor] | None = None
    index: dict[str, Tensor] | None = None

    def __post_init__(self) -> None:
        # a wrong view count or an empty split would otherwise fail deep in training, or train on nothing
        for split in ("train", "test"):
            feats, data = getattr(self, f"{split}_feats"), getattr(self, split)
            if feats.ndim < 3 or feats.shape[1] != self.group.order:
                raise ValueError(f"TrainingSetup.{split}_feats must be [N, G, ...] with G = {self.group.order} views "
                                 f"(the order of {self.group.name}), got {tuple(feats.shape)}")
            if len(data) == 0 or feats.shape[0] != len(data):
                raise ValueError(f"TrainingSetup.{split} needs at least one item and {split}_feats one row per item, "
                                 f"got {len(data)} items and {feats.shape[0]} rows")
            if data.labels.is_floating_point() or data.labels.is_complex():
                raise ValueError(f"TrainingSetup.{split}.labels must be integer class indices, got "
                                 f"{data.labels.dtype}")

    @property
    def n_classes(self) -> int:
        """How many classes the task has (the labels are 0..n_classes-1)."""
        return int(max(self.train.labels.max(), self.test.labels.max())) + 1

    @property
    def level(self) -> str:
        """``"maps"`` where the trunk gives feature maps (``train_feats`` [N, G, C, h, w]), else ``"embeddings"``."""
        return "maps" if self.train_feats.ndim == 5 else "embeddings"

    @property
    def embed_dim(self) -> int:
        """D of the trunk's embeddings (embedding-level setups only)."""
        if self.level != "embeddings":
            raise ValueError(f"this setup holds feature maps {tuple(self.train_feats.shape[2:])}, not embeddings; "
                             "use map_shape, or equinb.engine.weight_net_for(method, view_shape)")
        return int(self.train_feats.shape[-1])

    @property
    def map_shape(self) -> tuple[int, int, int]:
        """(C, h, w) of the trunk's maps (feature-map setups only)."""
        if self.level != "maps":
            raise ValueError("this setup holds embeddings, not feature maps; use small_feature_map_setup")
        c, h, w = self.train_feats.shape[2:]
        return int(c), int(h), int(w)

    def original_views(self, split: str = "test") -> Tensor:
        """Per image of ``split``, the view that shows it as it was before its random turn: ``h_i^-1`` for
        ``reoriented`` setups, else view 0 (the image as given). Shapes: -> [N] (long)."""
        data = self.test if split == "test" else self.train
        if self.turns is None:
            return torch.zeros(len(data), dtype=torch.long)
        return torch.tensor([self.group.inverse(int(h)) for h in self.turns[split]])

    def restricted(self, group: Group, columns: list[int]) -> "TrainingSetup":
        """The same setup on a subgroup whose elements are the views ``columns`` (no recomputation)."""
        pick = lambda data: data.restrict(group, columns)  # noqa: E731
        return replace(self, group=group, train=pick(self.train), test=pick(self.test),
                       train_feats=self.train_feats[:, columns], test_feats=self.test_feats[:, columns],
                       key=self.key and f"{self.key}-views{columns}")

    def reoriented(self, seed: int = 0) -> "TrainingSetup":
        """The same images, each turned by its own uniformly random group element: orientation-free data.

        Image i becomes ``h_i x_i`` with ``h_i`` drawn uniformly (seeded, independently for train and
        test; kept in ``turns``), so a dataset's natural orientation carries no information any more. No
        recomputation: the views of ``h x`` are the views of ``x`` permuted (view j of h x = view j*h of x),
        and the original image is view ``h_i^-1``.
        """
        if isinstance(self.train, ImageViewData):
            raise ValueError("reoriented() needs cached per-view inputs; this setup builds views from images")
        gen = torch.Generator().manual_seed(seed)

        def turn(inputs: Tensor, feats: Tensor) -> tuple[Tensor, Tensor, Tensor]:
            h = torch.randint(self.group.order, (inputs.shape[0],), generator=gen)
            table = torch.tensor([self.group.view_permutation(e) for e in range(self.group.order)])
            cols = table[h]  # [N, G]: view j of h_i x_i is view cols[i, j] of x_i
            rows = torch.arange(inputs.shape[0])[:, None]
            return inputs[rows, cols], feats[rows, cols], h

        train_in, train_feats, train_turns = turn(self.train.inputs, self.train_feats)
        test_in, test_feats, test_turns = turn(self.test.inputs, self.test_feats)
        return replace(self, train=ViewData(train_in, self.train.labels), test=ViewData(test_in, self.test.labels),
                       train_feats=train_feats, test_feats=test_feats, key=self.key and f"{self.key}-turned{seed}",
                       turns={"train": train_turns, "test": test_turns},
                       description=f"{self.description}; every image turned by a random element of "
                                   f"{self.group.name} (seed {seed})")


def _block_range(first: int, last: int) -> str:
    return f"block {first}" if first == last else f"blocks {first}-{last}"


# the loaded frozen passes of this process: a chapter that builds both levels reads the file once
_SMALL_MAPS: dict[tuple, tuple[dict, dict, nn.Module, str]] = {}


def _small_source(source: str, split: str, size: int, mean: Sequence[float], std: Sequence[float],
                  index: dict[str, Sequence[int]] | None, root: str | None):
    """The images of a small-profile source: ``digits`` (scikit-learn's) or ``fashion_mnist`` images ``index``."""
    if check_choice(source, ("digits", "fashion_mnist"), "small-profile source") == "digits":
        return load_digits(split, size, mean, std)
    return load_fashion_mnist(split, size, mean, std, root=root, index=None if index is None else index[split])


def _cached_small_maps(source: str, group: Group, image_size: int, split_block: int, last_block: int,
                       cache_dir: str | Path, progress: bool, index: dict[str, Sequence[int]] | None = None,
                       root: str | None = None) -> tuple[dict, dict, nn.Module, str]:
    """Images of ``source`` through MobileNetV2's blocks up to ``last_block``, split before ``split_block``, cached
    on disk once.

    Returns ``(cached, labels, trunk, key)``: per split, ``{split}_inputs`` (the frozen prefix's output for every
    view, [N, G, ...]: the trainable trunk's inputs) and ``{split}_maps`` (the frozen trunk's maps of every view,
    [N, G, C, h, w]); ``trunk`` = blocks ``split_block..last_block``, its weights stored as fp16 values as CLIP
    stores its own (``equinb.precision``: so the frozen maps and every finetune start from the same weights,
    whatever precision the finetune keeps); ``key`` names the cache (one file per split). The embedding and
    feature-map setups share one cache per (source, images, size, blocks, group), loaded once per process
    (nothing here is modified in place: setups index these tensors, and ``make_trunk`` copies the trunk).
    """
    cache_dir = default_cache_dir() if cache_dir is None else cache_dir
    picked = None if index is None else tuple((k, tuple(int(i) for i in v)) for k, v in sorted(index.items()))
    memo = (source, picked, tuple(group.elements), image_size, split_block, last_block, str(Path(cache_dir).resolve()))
    if memo not in _SMALL_MAPS:
        _SMALL_MAPS[memo] = _load_small_maps(source, group, image_size, split_block, last_block, cache_dir, progress,
                                             index, root)
    return _SMALL_MAPS[memo]


def _load_small_maps(source: str, group: Group, image_size: int, split_block: int, last_block: int,
                     cache_dir: str | Path, progress: bool, index: dict[str, Sequence[int]] | None,
                     root: str | None) -> tuple[dict, dict, nn.Module, str]:
    backbone = load_backbone("mobilenet_v2", input_size=image_size)
    model = backbone.model.eval().requires_grad_(False)
    if not 0 < split_block <= last_block < len(model.features):
        raise ValueError(f"need 0 < split_block <= last_block <= {len(model.features) - 1} (MobileNetV2's blocks), "
                         f"got split_block={split_block}, last_block={last_block}")
    prefix, trunk = model.features[:split_block], model.features[split_block:last_block + 1]
    apply_clip_precision(trunk, emulate=True)
    splits = {s: _small_source(source, s, image_size, backbone.mean, backbone.std, index, root)
              for s in ("train", "test")}
    key = cache_key(kind="small_maps", source=source, weights=module_fingerprint(model), size=image_size,
                    split=split_block, last=last_block, elements=group.elements,
                    images={s: ds.tensors[0].shape[0] for s, ds in splits.items()}, index=index or {},
                    code=feature_code_fingerprint())

    def compute(split: str) -> dict:
        ds = splits[split]
        # small chunks (CPU_PASS_IMAGES images x G views): faster on a CPU, same bits
        inputs = extract_view_features(prefix, ViewData(group.orbit(ds.tensors[0]), ds.tensors[1]),
                                       batch_size=CPU_PASS_IMAGES, progress=progress,
                                       label=f"{source} {split} views, frozen blocks 0-{split_block - 1}")
        maps = extract_view_features(trunk, ViewData(inputs, ds.tensors[1]), batch_size=CPU_PASS_IMAGES,
                                     label=f"{source} {split} views, blocks {split_block}-{last_block}")
        return dict(inputs=inputs, maps=maps)

    # one file per split: a pass that is stopped keeps the splits it finished
    cached = {}
    for split in splits:
        part = load_or_compute(Path(cache_dir) / f"small_maps_{key}_{split}.pt", functools.partial(compute, split))
        cached[f"{split}_inputs"], cached[f"{split}_maps"] = part["inputs"], part["maps"]
    return cached, {s: ds.tensors[1] for s, ds in splits.items()}, trunk, key


_POOL = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())


def _pooled_embeddings(maps: Tensor) -> Tensor:
    """Globally pooled, L2-normalised embeddings of every view. Shapes: [N, G, C, h, w] -> [N, G, C]."""
    return nn.functional.normalize(_POOL(maps.flatten(0, 1)), dim=-1).reshape(*maps.shape[:3])


def _small_setup(group: Group, level: str, cached: dict, labels: dict, trunk: nn.Module, key: str,
                 head: nn.Module, what: str) -> TrainingSetup:
    """A small-profile setup at the ``"embeddings"`` or ``"maps"`` level from a cached frozen pass. ``head`` maps
    normalised embeddings [B, C] to logits (embeddings), or pooled maps [B, C] (maps: logits from the
    unnormalised pooled map, as in the article's feature-map code)."""
    if check_choice(level, LEVELS, "level") == "embeddings":  # global average pooling, then CLIP-like embeddings
        feats = {s: _pooled_embeddings(cached[f"{s}_maps"]) for s in ("train", "test")}
        trunk, full_head = nn.Sequential(trunk, _POOL), head
    else:
        feats = {s: cached[f"{s}_maps"] for s in ("train", "test")}
        full_head = nn.Sequential(_POOL, head)
    return TrainingSetup(
        group=group, make_trunk=lambda: copy.deepcopy(trunk).requires_grad_(True), head=full_head,
        train=ViewData(cached["train_inputs"], labels["train"]), test=ViewData(cached["test_inputs"], labels["test"]),
        train_feats=feats["train"], test_feats=feats["test"], description=what,
        normalise_views=level == "embeddings", key=f"small-{level}-{key}")


def _small_digit_setup(group: Group, level: str, image_size: int, split_block: int, last_block: int,
                       cache_dir: str | Path, progress: bool) -> TrainingSetup:
    """The small profile's digits at either level, with a linear head fitted on the upright training digits."""
    cached, labels, trunk, key = _cached_small_maps("digits", group, image_size, split_block, last_block, cache_dir,
                                                    progress)
    blocks = _block_range(split_block, last_block)
    if level == "embeddings":
        head = fit_linear_head(_pooled_embeddings(cached["train_maps"])[:, 0], labels["train"])  # upright views only
        what = (f"MobileNetV2 (ImageNet weights, blocks 0-{last_block}) at {image_size} px on digits; blocks "
                f"0-{split_block - 1} frozen and cached per view, {blocks} finetuned; linear head fitted on upright "
                "digits")
    else:  # the head reads the pooled *unnormalised* maps
        head = fit_linear_head(_POOL(cached["train_maps"][:, 0]), labels["train"])
        what = (f"MobileNetV2 (ImageNet weights, blocks 0-{last_block}) at {image_size} px on digits; maps "
                f"{'x'.join(map(str, cached['train_maps'].shape[2:]))} of {blocks} combined over the views, then "
                "average pooling and a linear head fitted on upright digits")
    return _small_setup(group, level, cached, labels, trunk, key, head, what)


def small_lambda_setup(group: Group, *, image_size: int = 64, split_block: int = 18, last_block: int = 18,
                       cache_dir: str | Path | None = None, progress: bool = False) -> TrainingSetup:
    """The small profile: frozen MobileNetV2 blocks 0..split_block-1 cached per view; blocks split_block..last_block
    are trainable (18 is MobileNetV2's last block).

    The trunk is those blocks and global average pooling; its embeddings are L2-normalised. The head is a linear
    layer fitted on the embeddings of the upright training digits (it stands in for CLIP's text head and is never
    trained). Caches are keyed by everything that changes them.
    """
    return _small_digit_setup(group, "embeddings", image_size, split_block, last_block, cache_dir, progress)


def stand_in_index(classes: Sequence[int], counts: dict[str, Sequence[int]], seed: int = 0,
                   root: str | Path | None = None) -> dict[str, list[int]]:
    """Positions of the stand-in's Fashion-MNIST images: ``counts[split][j]`` images of class ``classes[j]`` per
    split ("train", "test"), a seeded draw, each split sorted (the order its unshuffled loader reads)."""
    rng = np.random.default_rng(seed)
    index = {}
    for split in ("train", "test"):
        if len(counts[split]) != len(classes):
            raise ValueError(f"need one {split} count per class {list(classes)}, got {list(counts[split])}")
        labels = fashion_mnist_arrays(split, root)[1]
        picked = [rng.choice(np.flatnonzero(labels == c), int(n), replace=False)
                  for c, n in zip(classes, counts[split])]
        index[split] = sorted(int(i) for i in np.concatenate(picked))
    return index


# Fashion-MNIST classes that stand in for ISIC 2018's MEL, NV, BCC, AKIEC, BKL, DF, VASC: shirt, T-shirt/top,
# pullover, coat, dress, bag, sandal (the majority class, NV, is the often-confused T-shirt/top).
STAND_IN_CLASSES: tuple[int, ...] = (6, 0, 2, 4, 3, 8, 5)
STAND_IN_TRAIN_IMAGES = 600


def stand_in_counts(train_images: int = STAND_IN_TRAIN_IMAGES) -> dict[str, list[int]]:
    """Images per class of the ISIC stand-in: ISIC 2018's training proportions scaled to ``train_images``, and its
    validation counts exactly (193 test images, the article's test set)."""
    return {"train": proportional_counts(ISIC2018_CLASS_COUNTS["train"], train_images),
            "test": list(ISIC2018_CLASS_COUNTS["val"])}


def isic_stand_in(group: Group, level: str, *, classes: Sequence[int] = STAND_IN_CLASSES,
                  train_images: int = STAND_IN_TRAIN_IMAGES, shots: int = 1, seed: int = 0, image_size: int = 72,
                  split_block: int = 17, last_block: int = 17, data_root: str = "",
                  progress: bool = False) -> TrainingSetup:
    """The small profile's stand-in for ISIC 2018: a hard, imbalanced task with no preferred orientation.

    Fashion-MNIST images of ``classes`` (class j of the task is Fashion-MNIST class ``classes[j]``), as many per
    class as ``stand_in_counts(train_images)`` says (ISIC 2018's proportions; its 193 validation images as the test
    set), every image turned by its own random element of ``group`` (``reoriented``). The frozen MobileNetV2 blocks
    are those of the feature-map chapters.
    The head knows the task about as little as CLIP's text head knows skin lesions: ``prototype_head`` from
    ``shots`` training images per class, each averaged over its whole orbit, so that no orientation is favoured
    (the maps level uses the same prototypes on the unnormalised pooled map). Seeded by ``seed``.

    Shapes: a split's inputs [N, G, ...]; feats [N, G, C] (embeddings) or [N, G, C, h, w] (maps).
    """
    counts = stand_in_counts(train_images)
    index = stand_in_index(classes, counts, seed, data_root or None)
    cached, labels, trunk, key = _cached_small_maps("fashion_mnist", group, image_size, split_block, last_block,
                                                    default_cache_dir(data_root) if data_root else None, progress,
                                                    index, data_root or None)
    labels = {s: _relabel(labels[s], classes) for s in labels}
    head = prototype_head(_pooled_embeddings(cached["train_maps"]), labels["train"], shots, len(classes), seed)
    what = (f"Fashion-MNIST classes {list(classes)} at ISIC 2018's class proportions ({sum(counts['train'])} training "
            f"and {sum(counts['test'])} test images) at {image_size} px, every image turned at random; MobileNetV2 "
            f"(ImageNet weights, blocks 0-{last_block}), {_block_range(split_block, last_block)} finetuned; head: "
            f"class prototypes from {shots} training image{'s' if shots > 1 else ''} per class over all their views")
    setup = _small_setup(group, level, cached, labels, trunk, f"{key}-shots{shots}-seed{seed}", head, what)
    return replace(setup, index={s: torch.tensor(v) for s, v in index.items()}).reoriented(seed)


def _relabel(labels: Tensor, classes: Sequence[int]) -> Tensor:
    """Dataset labels -> task labels (position of each in ``classes``)."""
    table = torch.full((int(max(classes)) + 1,), -1, dtype=torch.long)
    table[torch.tensor([int(c) for c in classes])] = torch.arange(len(classes))
    return table[labels]


def run_training(setup: TrainingSetup, config: TrainConfig, *, progress: bool = False,
                 heldout_fraction: float = 0.2, method: str = "lambda_equitune", align_views: bool = False,
                 weight_net: Callable[[], nn.Module] | None = None, ablate: bool = False,
                 cache_dir: str | Path | None = None, checkpoint_every_s: float = 60.0) -> TrainingRun:
    """Prefinetune (cached), select the best weighting module, evaluate, finetune, evaluate.

    ``weight_net``: builds the module (default: the article's module for the setup's views and ``method``,
    ``equinb.engine.weight_net_for``).
    ``method`` and ``align_views``: see ``equinb.engine.weighted_model`` (feature-map setups).
    ``cache_dir``: save the run (row, history, module states) there, atomically, keyed by the setup's key,
    the configuration, the method, the alignment, the module's architecture, the code of any class of it defined
    outside equinb and torch (a network of one's own, ``equinb.cache.class_code_fingerprint``) and the engine's
    source code; a later call with the same settings loads it instead of training (other chapters reuse trained
    modules this way). The code part of the key (``training_code_fingerprint``) changes only when what the engine
    *does* changes, not with its documentation.

    With ``cache_dir``, a run in progress also saves what it needs to go on (``partial_run_<key>.pt`` there) after
    prefinetuning and after a finetuning round, once ``checkpoint_every_s`` seconds have passed since its start or
    its last save: a run that is stopped (an interrupted kernel, a lost machine) and started again with the same
    settings goes on from there, with the same result as a run never stopped (``equinb.engine.finetune``: bit for
    bit on a CPU); the file is removed when the run is saved whole. A save that fails (a full disk) warns and the
    run goes on without saving (``equinb.cache.ThrottledSave``).

    Returns a ``TrainingRun``: ``row`` with keys ``prefinetune_top1`` (the article's "Prefinetune": the
    selected module on the full test set) and ``finetune_top1`` (after the last finetuning round), in
    percent; ``states["prefinetune"]`` is the selected module's state dict (what the article's lambda
    plots load), ``states["finetune"]`` the module's after finetuning; ``predictions`` the predicted test
    classes [N_test] at both points (for paired comparisons between runs); ``drift`` what finetuning changed
    in each trunk tensor. ``ablate``: when finetuning changed a test prediction, also the predictions after
    finetuning with one group of what it changed put back (``predictions["finetune, <group> reset"]`` for each
    group of ``equinb.precision.GROUPS`` that changed, and ``"finetune, λ network reset"``): each group's share.
    """
    if isinstance(weight_net, nn.Module):  # one module would be shared (and trained) by every run
        raise TypeError("weight_net must build the module (a function of no arguments, e.g. lambda: MyNet()), "
                        "not be a module")
    if not 0 < heldout_fraction < 1:
        raise ValueError(f"heldout_fraction must be in (0, 1), got {heldout_fraction!r}")
    view_shape = tuple(setup.train_feats.shape[2:])  # one view: [D] or [C, h, w]
    make_net = weight_net if weight_net is not None else lambda: weight_net_for(method, view_shape)

    if not checkpoint_every_s >= 0:  # refused before any training, not at the first save
        raise ValueError(f"checkpoint_every_s must be a number of seconds >= 0, got {checkpoint_every_s!r}")

    label = f"{method} on {setup.group.name}, seed {config.seed}"

    def train(partial: Path | None = None) -> dict:
        with seeded(config.seed):  # a cached run and a trained one leave the caller's generators alike
            began = time.perf_counter()
            report(f"{label}: training")
            clock = RoundClock(label, dict(prefinetune=config.prefinetune_rounds, finetune=config.finetune_rounds))
            checkpoints = None if partial is None else RunCheckpoints(partial, checkpoint_every_s, clock)
            row, history, states, predictions, drift = _run(setup, config, make_net(), progress, heldout_fraction,
                                                            method, align_views, ablate, clock, checkpoints)
            elapsed = time.perf_counter() - began
            before = f", {elapsed + clock.restored_s:.1f} s with its rounds before the stop" if clock.resumed else ""
            report(f"{label}: trained in {elapsed:.1f} s{before}")
            # the settings and wall times ride along for tools/paper_smoke.py, which counts and times the runs
            return dict(row=row, history=history, states=states, predictions=predictions, drift=drift,
                        clock=list(clock), config=config.as_dict(), maps=setup.level == "maps")

    if cache_dir is None:
        out = train()
    else:
        if not setup.key:
            raise ValueError("this setup has no key, so its runs cannot be cached; pass cache_dir=None")
        with seeded(config.seed):  # built for its architecture only: its random initial weights draw nothing of ours
            net = make_net()
        key = cache_key(setup=setup.key, config=config.as_dict(), method=method, align_views=align_views,
                        weight_net=repr(net), weight_net_code=_outside_code(net), heldout_fraction=heldout_fraction,
                        ablate=ablate, code=training_code_fingerprint())
        label += f" (run {key[:8]})"
        out = load_or_compute_resumable(Path(cache_dir) / f"run_{key}.pt", train, progress_label=label)
    return TrainingRun(out["row"], out["history"], out["states"], out["predictions"], out["drift"], config.seed)


class RunCheckpoints:
    """Where a run in progress saves what it needs to go on after a stop (``run_training``), and what it reads back.

    The file holds the prefinetuning's outcome (the selected module's state, the history, the test predictions),
    the last finetuning round's ``equinb.engine.finetune_state`` (or None) and the wall-clock rows so far. It is
    written atomically, at most once every ``every_s`` seconds (``equinb.cache.ThrottledSave``), so that short runs
    (the small profile's take seconds) pay nothing for it.
    """

    def __init__(self, path: Path, every_s: float, clock: RoundClock) -> None:
        self.path, self.clock, self.save = path, clock, ThrottledSave(path, every_s)
        self.prefinetuned: dict | None = None

    def load(self) -> dict | None:
        """The saved state of a stopped run (its clock rows put back into ``clock``), or None to start afresh."""
        state = load_saved(self.path)
        if state is not None:
            self.prefinetuned = state["prefinetune"]
            self.clock.restore(state["clock"], self.path.name)
        return state

    def after_prefinetune(self, best: dict, history: list[dict], predictions: Tensor) -> None:
        """Keep prefinetuning's outcome for every later save; save it if it is time."""
        self.prefinetuned = copy.deepcopy(dict(best=best, history=history, predictions=predictions))
        self.save(lambda: dict(prefinetune=self.prefinetuned, finetune=None, clock=list(self.clock)))

    def after_round(self, capture: Callable[[], dict]) -> None:
        """``equinb.engine.finetune``'s ``checkpoint``: save the round's state (``capture()``) if it is time."""
        self.save(lambda: dict(prefinetune=self.prefinetuned, finetune=capture(), clock=list(self.clock)))


def _outside_code(module: nn.Module) -> dict[str, str]:
    """What each class in ``module`` defined outside equinb and torch does (a weighting network of one's own), by
    qualified name (``equinb.cache.class_code_fingerprint``): editing its code changes a cached run's key, as the
    training fingerprint does for equinb's own classes."""
    outside = {type(m) for m in module.modules() if not type(m).__module__.startswith(("equinb.", "torch."))}
    return {f"{c.__module__}.{c.__qualname__}": class_code_fingerprint(c)
            for c in sorted(outside, key=lambda c: (c.__module__, c.__qualname__))}


def seed_repeats(setup: TrainingSetup, config: TrainConfig, seeds: Sequence[int], *, finetune: bool = False,
                 cache_dir: str | Path | None = None, **options: Any) -> list[TrainingRun]:
    """Repeats of ``config`` under each seed (lambda initialisation, data order, the random group element of each
    batch, dropout): prefinetune only, or the whole run with ``finetune``. ``options`` go to ``run_training``."""
    return [run_training(setup, replace(config, seed=int(s), **({} if finetune else {"finetune_rounds": 0})),
                         cache_dir=cache_dir, **options) for s in seeds]


def correct_by_seed(runs: Sequence[TrainingRun], stage: str, labels: Tensor) -> Tensor:
    """Per seed and test item, 1.0 where that seed's run predicted the label at ``stage``. Shapes: -> [S, N]."""
    return torch.stack([(run.predictions[stage] == labels).double() for run in runs])


TRAINING_SOURCES = ("engine", "setups", "wrappers", "weighting", "groups", "heads", "precision", "kernels", "outputs",
                    "metrics", "validation")


# what makes the cached frozen features: the data's loading and preparation, the backbone, the split and the pass
# (whose cuDNN autotuning may change a GPU's last bits)
FEATURE_SOURCES = ("data", "backbones", "setups", "engine", "groups", "precision", "kernels", "validation")


def feature_code_fingerprint() -> str:
    """Hash of what the modules that load the data and compute the frozen per-view features do, so that a cached
    feature file (and every run keyed by its setup) never outlives a change of the images or of the pass."""
    return package_code_fingerprint(*FEATURE_SOURCES)


def training_code_fingerprint() -> str:
    """Hash of what the modules that define a training run do (syntax trees without docstrings or comments),
    so that a cached run never outlives a code change and survives edits of documentation."""
    return package_code_fingerprint(*TRAINING_SOURCES)


class _Split(NamedTuple):
    """The training split as ``_run`` uses it: the frozen per-view features the weighting module fits on and those
    it is selected on, and the items finetuning trains on (images or views)."""

    fit: ViewData
    select: ViewData
    finetune: ViewData


def _selection_split(setup: TrainingSetup, config: TrainConfig, heldout_fraction: float) -> _Split:
    """``config.selection == "heldout"``: a fixed part of the training split (``heldout_fraction``, drawn by the
    run's seed) selects the module and is never trained on; else (as published) the training split does both."""
    labels = setup.train.labels
    if config.selection != "heldout":
        whole = ViewData(setup.train_feats, labels)
        return _Split(whole, whole, setup.train)
    n_sel = max(1, int(round(heldout_fraction * len(labels))))
    if n_sel >= len(labels):
        raise ValueError(f"heldout_fraction={heldout_fraction} of {len(labels)} training items holds them all "
                         "out, leaving nothing to train on; use a smaller fraction or more items")
    perm = torch.randperm(len(labels), generator=torch.Generator().manual_seed(config.seed))
    sel, fit = perm[:n_sel], perm[n_sel:]
    return _Split(ViewData(setup.train_feats[fit], labels[fit]), ViewData(setup.train_feats[sel], labels[sel]),
                  setup.train.subset(fit))


def _prefinetuned(model: LambdaEquitune | EquiAttention, setup: TrainingSetup, split: _Split, config: TrainConfig,
                  progress: bool, clock: list[dict] | None, checkpoints: RunCheckpoints | None,
                  resume: dict | None) -> tuple[dict, list[dict], Tensor]:
    """Prefinetune ``model``'s weighting module and load the selected state into it, or (``resume``, a stopped run)
    load the state it saved: the selected state, the history and the test predictions [N_test]."""
    if resume is not None:  # a stopped run: prefinetuning's outcome as saved (finetuning reseeds, nothing else carries)
        best = resume["prefinetune"]["best"]
        model.weight_net.load_state_dict(best)
        return best, list(resume["prefinetune"]["history"]), resume["prefinetune"]["predictions"]
    best, history = prefinetune(model, split.fit, split.select, config, progress, clock=clock)
    model.weight_net.load_state_dict(best)  # copies: finetuning leaves ``best`` as selected
    predicted = predict(model, setup.test, feats=setup.test_feats, seed=config.seed)
    history.append(dict(stage="prefinetune", round=config.prefinetune_rounds, step=None,
                        test_top1=top1(predicted, setup.test.labels)))
    if checkpoints is not None:
        checkpoints.after_prefinetune(best, history, predicted)
    return best, history, predicted


def _run(setup: TrainingSetup, config: TrainConfig, module: nn.Module, progress: bool, heldout_fraction: float,
         method: str, align_views: bool, ablate: bool, clock: list[dict] | None = None,
         checkpoints: RunCheckpoints | None = None) -> tuple[dict, list[dict], dict, dict, list[dict]]:
    """One run: prefinetune (or resume), finetune, and the finetuned model's ablations; ``run_training``'s parts."""
    model = weighted_model(setup.make_trunk(), module.to(model_device(setup.head)), setup.head,
                           setup.group, config, method=method, align_views=align_views,
                           normalise_views=setup.normalise_views)
    split = _selection_split(setup, config, heldout_fraction)
    resume = None if checkpoints is None else checkpoints.load()
    best, history, prefinetuned = _prefinetuned(model, setup, split, config, progress, clock, checkpoints, resume)
    set_finetune_precision(model, config)
    part = finetuned_part(model)  # the trunk, with the head's pool where finetuning trains it
    before = snapshot(part)  # the fresh trunk's: made again the same way after a stop
    finetuned, last = finetune(model, split.finetune, setup.test, config, train_lambda_feats=split.fit.inputs,
                               test_lambda_feats=setup.test_feats, progress=progress, clock=clock,
                               resume=None if resume is None else resume["finetune"],
                               checkpoint=None if checkpoints is None else checkpoints.after_round)
    history += finetuned
    predictions = dict(prefinetune=prefinetuned, finetune=prefinetuned if last is None else last)
    row = {f"{stage}_top1": top1(predictions[stage], setup.test.labels) for stage in ("prefinetune", "finetune")}
    states = dict(prefinetune=best, finetune=copy.deepcopy(model.weight_net.state_dict()))
    drift = parameter_drift(before, part)
    if ablate and last is not None and not torch.equal(last, prefinetuned):
        predictions.update(_ablations(model, part, setup, config, before, drift, best))
    return row, history, states, predictions, drift


def _ablations(model: LambdaEquitune | EquiAttention, part: nn.Module, setup: TrainingSetup, config: TrainConfig,
               before: dict[str, Tensor], drift: list[dict], best: dict) -> dict[str, Tensor]:
    """Predictions of the finetuned model with one changed group of ``part`` (``finetuned_part``) put back to its
    value before finetuning."""
    frozen = setup.test_feats if config.lambda_input == "frozen_copy" else None
    out = {}
    # with the kernels the finetuned model's own predictions ran with (``finetune``): on a GPU, other kernels would
    # round fp16 sums otherwise and add changes that no reset made
    with tuned_kernels(model.trunk, model_device(model)):
        for group in dict.fromkeys(d["group"] for d in drift if d["changed_share"] > 0):
            saved = reset_groups(part, before, [group])
            out[f"finetune, {group} reset"] = predict(model, setup.test, lambda_feats=frozen, seed=config.seed)
            reset_groups(part, saved, [group])
        if config.finetune_params == "backbone+lambda":
            finetuned = copy.deepcopy(model.weight_net.state_dict())
            model.weight_net.load_state_dict(best)
            out["finetune, λ network reset"] = predict(model, setup.test, lambda_feats=frozen, seed=config.seed)
            model.weight_net.load_state_dict(finetuned)
    return out


def clip_lambda_setup(group: Group, backbone_name: str = "RN50", dataset: str = "cifar100", *,
                      device: str = "cpu", data_root: str | Path | None = None, cache_dir: str | Path | None = None,
                      clip_path: str | None = None, clip_download_root: str | None = None,
                      max_train: int | None = 16_000, dataset_options: dict | None = None, batch_size: int = 256,
                      level: str = "embeddings", progress: bool = False) -> TrainingSetup:
    """The paper profile: CLIP's image encoder is the trunk; the prompt-ensemble text head is fixed.

    ``level="embeddings"`` (the invariant lambda-equitune): the whole encoder is the trunk, its
    embeddings are L2-normalised. ``level="maps"`` (the feature-map methods, article sec. 4.2): the trunk
    M1 ends at layer4 (maps [2048, 7, 7] for RN50); the head is ``attnpool`` (frozen while prefinetuning,
    finetuned with M1, as the article's code trains the whole encoder) then the fixed text head, on the
    unnormalised pooled embedding as in the article's code. Maps are cached in the trunk's dtype (fp16
    on CUDA, as the article computes them): about 0.8 MB per image for the four views of RN50.

    Images are kept as uint8 and resized (bicubic) and normalised on the device per batch. As published,
    only the first 16,000 training images are ever used (unshuffled loader restarted every round), so
    ``max_train`` bounds what is loaded and cached. The frozen model's normalised features of every view
    are cached on disk, one file per split (atomic, keyed by the weights, data and group).
    """
    check_choice(level, LEVELS, "level")  # before the backbone loads and its head is built
    if backbone_name not in (*CLIP_NAMES, *TINY_CLIP_NAMES):
        raise ValueError(f"clip_lambda_setup needs a CLIP backbone, got {backbone_name!r}; valid: "
                         f"{', '.join(map(repr, CLIP_NAMES + TINY_CLIP_NAMES))}")
    root = Path(data_root) if data_root else default_data_root()
    spec = dataset_spec(dataset)
    # the splits open first: a missing dataset is named before CLIP loads (or downloads)
    datasets = {split: get_dataset(dataset, split, root=str(root), **(dataset_options or {}))
                for split in ("train", spec.eval_split)}
    backbone, text_head, root, cache_dir = load_frozen_model(
        backbone_name, dataset, device=device, data_root=str(root), cache_dir=cache_dir,
        clip_path=clip_path, clip_download_root=clip_download_root, dataset_options=dataset_options)
    head = linear_text_head(text_head).to(device)
    train = _clip_images(backbone, datasets["train"], spec, group, device, max_train)
    test = _clip_images(backbone, datasets[spec.eval_split], spec, group, device, None)  # ISIC2018: validation
    encoder, head, embed, parts = _clip_trunk(backbone, head, level)
    description = f"CLIP {backbone_name} {parts}, {dataset}"
    key = cache_key(kind="lambda_clip", weights=module_fingerprint(backbone.encoder), dataset=dataset,
                    root=root_identity(root), n_train=len(train), n_test=len(test), elements=group.elements,
                    device=torch.device(device).type, code=feature_code_fingerprint(),
                    **({"level": level} if level == "maps" else {}))

    def extract(split: str, data: ImageViewData) -> Tensor:
        with tuned_kernels(encoder, device):
            return extract_view_features(embed, data, batch_size, device, progress,
                                         label=f"CLIP {backbone_name} {dataset} {split} views")

    # one file per split: a pass that is stopped keeps the splits it finished (a paper-size split takes hours on a
    # CPU), and none is written twice
    cached = {split: load_or_compute(Path(cache_dir) / f"lambda_clip_{key}_{split}.pt",
                                     functools.partial(extract, split, data))
              for split, data in (("train", train), ("test", test))}
    return TrainingSetup(
        group=group, make_trunk=lambda: copy.deepcopy(encoder).requires_grad_(True), head=head, train=train,
        test=test, train_feats=cached["train"], test_feats=cached["test"], description=description,
        normalise_views=level == "embeddings", key=f"clip-{level}-{key}",
    )


def _clip_images(backbone: Backbone, ds: Any, spec: DatasetSpec, group: Group, device: str,
                 limit: int | None) -> ImageViewData:
    """The first ``limit`` images of a split (all for None) as the CLIP encoder's per-view inputs: kept as uint8
    and, per batch, resized (bicubic) to the encoder's size and normalised on the device, in its dtype."""
    mean = torch.tensor(backbone.mean, device=device).view(1, 3, 1, 1)
    std = torch.tensor(backbone.std, device=device).view(1, 3, 1, 1)

    def prepare(x: Tensor) -> Tensor:  # uint8 [B, H, W, 3] -> normalised [B, 3, S, S] on the device
        x = x.to(device).permute(0, 3, 1, 2).float() / 255
        x = nn.functional.interpolate(x, size=backbone.input_size, mode="bicubic", align_corners=False)
        return ((x.clamp(0, 1) - mean) / std).to(backbone.dtype)

    if spec.in_memory:  # CIFAR100: uint8 [N, 32, 32, 3] in memory
        images = torch.as_tensor(ds.data[:limit])
    else:  # image files (ISIC2018): decoded once, resized and centre-cropped as CLIP's preprocessing
        images = _decode_uint8(ds, limit, backbone.input_size)
    # On a GPU the uint8 images live there from the start (CIFAR100's 16,000 training images take 49 MB,
    # ISIC's 10,015 at 224 px 1.5 GB): no host-to-device copy per step, nothing to prefetch.
    images = images.to(device) if torch.device(device).type == "cuda" else images
    return ImageViewData(images, torch.as_tensor(ds.targets[:limit]), group, prepare)


def _clip_trunk(backbone: Backbone, head: nn.Module, level: str
                ) -> tuple[nn.Module, nn.Module, Callable[[Tensor], Tensor], str]:
    """What a level of the paper profile finetunes and what it caches: the trunk (frozen here; each run trains a
    copy), the head on the combined views, the frozen pass whose per-view outputs are cached, and the parts in
    words. ``head``: the prompt-ensemble text head, which stays fixed."""
    encoder = backbone.encoder.requires_grad_(False)
    if level == "maps":
        encoder, pool = backbone.feature_split()  # stem..layer4 and attnpool
        # the article's finetuning trains the whole image encoder, attnpool included; the text head stays fixed
        return (encoder, PooledHead(pool, head, finetune_pool=True), encoder,
                "up to layer4, maps combined over the views, then attnpool (both finetuned) and the prompt-ensemble "
                "text head (fixed)")
    return (encoder, head, lambda v: nn.functional.normalize(encoder(v).float(), dim=-1),
            "image encoder (finetuned whole), prompt-ensemble text head")


def _decode_uint8(ds: Any, limit: int | None, size: int) -> Tensor:
    """Images of a file-backed dataset as uint8 [N, size, size, 3]: bicubic resize of the short side, centre crop."""
    from torchvision import transforms

    ds.transform = transforms.Compose([transforms.Resize(size, interpolation=transforms.InterpolationMode.BICUBIC),
                                       transforms.CenterCrop(size), transforms.PILToTensor()])
    n = len(ds) if limit is None else min(limit, len(ds))
    return torch.stack([ds[i][0].permute(1, 2, 0) for i in range(n)])


def small_feature_map_setup(group: Group, *, image_size: int = 96, split_block: int = 17, last_block: int = 17,
                            cache_dir: str | Path | None = None, progress: bool = False) -> TrainingSetup:
    """The small profile at the feature-map level (the article's layer4 -> attnpool split, on MobileNetV2).

    Blocks 0..split_block-1 are frozen and their per-view outputs cached; blocks split_block..last_block are the
    trainable trunk M1 (maps [C, h, w]; at least 3x3 at 96 px; block 17 gives 320 channels, block 18 1280, and
    the weighting networks' cost grows with the channels); the head M2 is global average pooling and a
    linear layer fitted on the pooled *unnormalised* maps of the upright training digits (as in the
    article's feature-map code, logits come from an unnormalised embedding). The frozen trunk's maps of
    every view are cached too (prefinetuning trains only the weighting module on them). The embedding
    setup at the same ``image_size`` (``small_lambda_setup``) shares this cache.
    """
    check_map_image_size(image_size)
    return _small_digit_setup(group, "maps", image_size, split_block, last_block, cache_dir, progress)


def check_map_image_size(image_size: int) -> None:
    """A ValueError, before any data or model loads, when the small profile's MobileNetV2 maps for ``image_size``
    would be smaller than the 3x3 that the feature-map weighting networks need."""
    side = -(-int(image_size) // 32)  # MobileNetV2's last blocks have stride 32
    if side < 3:
        raise ValueError(f"image_size={image_size} gives {side}x{side} maps; the weighting networks need at least "
                         "3x3: use image_size >= 65 (the book uses 72)")


def feature_map_config(**overrides: Any) -> TrainConfig:
    """The article's feature-map runs: the updated code with softmax-normalised weights and prelr 0.1.

    As published (spec of its code, sec. 5.5): SGD with momentum for the module (prelr 0.1), selection on
    the first 50 training batches before each round, lambda fed by the trainable trunk. The finetuning
    of the article's Tables 2-3 is unrecorded; the default here is the full finetune (trunk and module)
    at lr 5e-8, as the article's ISIC feature-map run.
    """
    return TrainConfig.updated(**{"normalisation": "softmax", "prelr": 0.1, **overrides})


def build_setup(profile: str, level: str, group: Group, *, backbone: str = "RN50", dataset: str = "cifar100",
                image_size: int = 96, split_block: int = 18, last_block: int = 18, device: str = "cpu",
                data_root: str = "",
                clip_paths: dict[str, str] | None = None, clip_download_root: str = "",
                max_train: int | None = 16_000, dataset_options: dict[str, dict] | None = None,
                progress: bool = False) -> TrainingSetup:
    """The chapters' setups: ``profile`` small (MobileNetV2 on digits) or paper (CLIP on ``dataset``),
    ``level`` embeddings or maps.

    The arguments are the chapters' parameters of the same names: ``clip_paths`` maps backbone names to
    local CLIP files and ``dataset_options`` dataset names to ``get_dataset`` options. Empty strings mean
    defaults (``$EQUINB_DATA``, download CLIP to ``~/.cache/clip``).
    """
    check_choice(level, LEVELS, "level")
    check_choice(profile, PROFILES, "profile")
    cache = default_cache_dir(data_root) if data_root else None
    if profile == "small":
        if level == "maps":
            return small_feature_map_setup(group, image_size=image_size, split_block=split_block,
                                           last_block=last_block, cache_dir=cache, progress=progress)
        return small_lambda_setup(group, image_size=image_size, split_block=split_block, last_block=last_block,
                                  cache_dir=cache, progress=progress)
    return clip_lambda_setup(group, backbone, dataset, device=device, data_root=data_root or None,
                             cache_dir=cache, clip_path=(clip_paths or {}).get(backbone),
                             clip_download_root=clip_download_root or None, max_train=max_train,
                             dataset_options=(dataset_options or {}).get(dataset, {}), level=level,
                             progress=progress)


def trained_model(setup: TrainingSetup, config: TrainConfig, method: str, align_views: bool,
                  state: dict) -> LambdaEquitune | EquiAttention:
    """A feature-map wrapper on ``setup`` with a saved weighting-module state (from ``run_training``), in
    evaluation mode on the head's device."""
    module = weight_net_for(method, setup.map_shape)
    module.load_state_dict(state)
    model = weighted_model(setup.make_trunk(), module, setup.head, setup.group, config, method=method,
                           align_views=align_views, normalise_views=False)
    return model.to(model_device(setup.head)).eval()
