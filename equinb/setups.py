"""Experiment setups of the training chapters, and their trained runs cached on disk.

- ``small_lambda_setup`` / ``small_feature_map_setup``: the small profile (MobileNetV2 on digits, the
  frozen prefix cached per view, the rest trainable), at the embedding or the feature-map level.
- ``clip_lambda_setup``: the paper profile (CLIP's image encoder and its prompt-ensemble text head).
- ``build_setup``: one entry for the chapters (``profile`` x ``level``).
- ``run_training``: prefinetune, select, finetune and evaluate one configuration, cached by a key that
  changes only when the setup, the configuration or what the training code does changes.
- ``feature_map_config`` / ``feature_map_weight_net`` / ``trained_model``: the article's feature-map runs.

Levels: ``"embeddings"`` (normalised embeddings, the invariant lambda-equitune) and ``"maps"`` (feature
maps, the article's sec. 4.2). Methods: ``"lambda_equitune"`` and ``"equiattention"``.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, NamedTuple, Sequence

import torch
from torch import nn

from .backbones import CPU_PASS_IMAGES, load_backbone
from .cache import cache_dir as default_cache_dir
from .cache import cache_key, load_or_compute, module_fingerprint, source_fingerprint
from .cache import data_root as default_data_root
from .data import dataset_spec, get_dataset, load_digits, scaled_class_counts
from .engine import (METHODS, ImageViewData, TrainConfig, ViewData, cast_trunk, extract_view_features, finetune,
                     parameter_drift, predict, prefinetune, weighted_model)
from .groups import Group
from .heads import ClassSubsetHead, PooledHead, fit_linear_head, linear_text_head, load_frozen_model
from .weighting import EmbeddingWeightNet, FeatureMapWeightNet, ViewAttention
from .wrappers import EquiAttention, LambdaEquitune

__all__ = ["LEVELS", "TrainingSetup", "TrainingRun", "seed_repeats", "imbalanced_stand_in", "small_lambda_setup",
           "small_feature_map_setup",
           "clip_lambda_setup",
           "build_setup", "run_training", "training_code_fingerprint", "feature_map_config",
           "feature_map_weight_net", "trained_model", "check_map_image_size"]

Tensor = torch.Tensor
LEVELS = ("embeddings", "maps")


class TrainingRun(NamedTuple):
    """One trained configuration (see ``run_training``)."""

    row: dict[str, float]  # prefinetune_top1, finetune_top1 (%)
    history: list[dict]  # tidy: stage, round, step, loss, select_top1, test_top1
    states: dict[str, dict]  # weighting-module state dicts: prefinetune (selected), finetune
    predictions: dict[str, Tensor]  # predicted test classes [N_test]: prefinetune, finetune
    drift: list[dict]  # per trunk parameter: what finetuning changed (``equinb.engine.parameter_drift``)


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
        index: for ``class_subset`` setups, per split the positions of its images in the full split.
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

    @property
    def embed_dim(self) -> int:
        return int(self.train_feats.shape[-1])

    @property
    def map_shape(self) -> tuple[int, int, int]:
        """(C, h, w) of the trunk's maps (feature-map setups only)."""
        if self.train_feats.ndim != 5:
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

    def class_subset(self, classes: Sequence[int], counts: dict[str, Sequence[int]], seed: int = 0) -> "TrainingSetup":
        """The same setup on some of its classes, with ``counts[split][j]`` images of class ``classes[j]`` in
        each split ("train", "test"): an imbalanced stand-in task. No recomputation.

        Class j of the new task is class ``classes[j]`` of this one (labels become 0..len(classes)-1, and
        the head keeps only those logits); its images are a seeded random draw of that class's images,
        kept in the split's order. Apply ``reoriented`` afterwards to turn the subset's images.

        Shapes: a split's inputs [N, G, ...] and feats [N, G, ...] -> [sum(counts[split]), G, ...]; logits
        [B, K] -> [B, len(classes)].
        """
        if self.turns is not None:
            raise ValueError("class_subset works on the images as given: call it before reoriented()")
        classes = [int(c) for c in classes]
        if not classes or len(set(classes)) != len(classes):
            raise ValueError(f"class_subset needs distinct classes, got {classes}")
        gen = torch.Generator().manual_seed(seed)

        def draw(data: ViewData, feats: Tensor, wanted: Sequence[int]) -> tuple[ViewData, Tensor, Tensor]:
            if len(wanted) != len(classes):
                raise ValueError(f"need one count per class {classes}, got {list(wanted)}")
            picked, labels = [], []
            for j, (c, n) in enumerate(zip(classes, wanted)):
                members = torch.nonzero(data.labels == c).flatten()
                if not 1 <= int(n) <= len(members):
                    raise ValueError(f"class {c} has {len(members)} images in this split; asked for {n}")
                picked.append(members[torch.randperm(len(members), generator=gen)[:int(n)]])
                labels.append(torch.full((int(n),), j, dtype=torch.long))
            index, labels = torch.cat(picked), torch.cat(labels)
            order = torch.argsort(index)  # the split's own order, as the unshuffled loaders read it
            return data.subset(index[order], labels[order]), feats[index[order]], index[order]

        missing = {"train", "test"} - set(counts)
        if missing:
            raise ValueError(f"counts needs the splits {sorted(missing)}")
        train, train_feats, train_index = draw(self.train, self.train_feats, counts["train"])
        test, test_feats, test_index = draw(self.test, self.test_feats, counts["test"])
        index = {"train": train_index, "test": test_index}
        if self.index is not None:  # positions in the full split, through an earlier subset
            index = {split: self.index[split][i] for split, i in index.items()}
        tag = f"classes{classes}-train{[int(n) for n in counts['train']]}-test{[int(n) for n in counts['test']]}"
        return replace(self, train=train, test=test, train_feats=train_feats, test_feats=test_feats,
                       head=ClassSubsetHead(self.head, classes), key=self.key and f"{self.key}-{tag}-seed{seed}",
                       index=index,
                       description=f"{self.description}; classes {classes} with {sum(counts['train'])} training "
                                   f"and {sum(counts['test'])} test images")

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


def _block_range(first: int, count: int) -> str:
    return f"block {first}" if first == count - 1 else f"blocks {first}-{count - 1}"


# the loaded digit caches of this process: a chapter that builds both levels reads the file once
_DIGIT_MAPS: dict[tuple, tuple[dict, dict, nn.Module, int, str]] = {}


def _cached_digit_maps(group: Group, image_size: int, split_block: int, cache_dir,
                       progress: bool) -> tuple[dict, dict, nn.Module, int, str]:
    """Digits through a frozen MobileNetV2 split before block ``split_block``, cached on disk once.

    Returns ``(cached, labels, trunk, n_blocks, key)``: per split, ``{split}_inputs`` (the frozen prefix's
    output for every view, [N, G, ...]: the trainable trunk's inputs) and ``{split}_maps`` (the frozen
    trunk's maps of every view, [N, G, C, h, w]); ``trunk`` = the remaining blocks; ``key`` names the cache.
    The embedding and feature-map setups share one cache per (image size, split, group), loaded once per process
    (nothing here is modified in place: setups index these tensors, and ``make_trunk`` copies the trunk).
    """
    cache_dir = default_cache_dir() if cache_dir is None else cache_dir
    memo = (tuple(group.elements), image_size, split_block, str(Path(cache_dir).resolve()))
    if memo not in _DIGIT_MAPS:
        _DIGIT_MAPS[memo] = _load_digit_maps(group, image_size, split_block, cache_dir, progress)
    return _DIGIT_MAPS[memo]


def _load_digit_maps(group: Group, image_size: int, split_block: int, cache_dir,
                     progress: bool) -> tuple[dict, dict, nn.Module, int, str]:
    backbone = load_backbone("mobilenet_v2", input_size=image_size)
    model = backbone.model.eval().requires_grad_(False)
    prefix, trunk = model.features[:split_block], model.features[split_block:]
    key = cache_key(kind="digit_maps", weights=module_fingerprint(model), size=image_size, split=split_block,
                    elements=group.elements)
    splits = {s: load_digits(s, image_size, backbone.mean, backbone.std) for s in ("train", "test")}

    def compute() -> dict:
        out = {}
        for split, ds in splits.items():
            # small chunks (CPU_PASS_IMAGES images x G views): faster on a CPU, same bits
            inputs = extract_view_features(prefix, ViewData(group.orbit(ds.tensors[0]), ds.tensors[1]),
                                           batch_size=CPU_PASS_IMAGES, progress=progress)
            out[f"{split}_inputs"] = inputs
            out[f"{split}_maps"] = extract_view_features(trunk, ViewData(inputs, ds.tensors[1]),
                                                         batch_size=CPU_PASS_IMAGES)
        return out

    cached = load_or_compute(Path(cache_dir) / f"digit_maps_{key}.pt", compute)
    return cached, {s: ds.tensors[1] for s, ds in splits.items()}, trunk, len(model.features), key


def _small_digit_setup(group: Group, level: str, image_size: int, split_block: int, cache_dir,
                       progress: bool) -> TrainingSetup:
    """The small profile's setup at the ``"embeddings"`` or ``"maps"`` level (one shared cache)."""
    cached, labels, trunk, n_blocks, key = _cached_digit_maps(group, image_size, split_block, cache_dir, progress)
    pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
    blocks = _block_range(split_block, n_blocks)
    if level == "embeddings":  # global average pooling, then CLIP-like L2-normalised embeddings
        feats = {s: nn.functional.normalize(pool(cached[f"{s}_maps"].flatten(0, 1)), dim=-1).reshape(
            *cached[f"{s}_maps"].shape[:3]) for s in ("train", "test")}
        head = fit_linear_head(feats["train"][:, 0], labels["train"])  # upright views only
        trunk = nn.Sequential(trunk, pool)
        description = (f"MobileNetV2 (ImageNet weights) at {image_size} px on digits; blocks 0-{split_block - 1} "
                       f"frozen and cached per view, {blocks} finetuned; linear head fitted on upright digits")
    elif level == "maps":  # as in the article's feature-map code, logits come from the unnormalised pooled map
        feats = {s: cached[f"{s}_maps"] for s in ("train", "test")}
        head = nn.Sequential(pool, fit_linear_head(pool(feats["train"][:, 0]), labels["train"]))
        description = (f"MobileNetV2 (ImageNet weights) at {image_size} px on digits; maps of {blocks} "
                       "combined over the views, then average pooling and a linear head fitted on upright digits")
    else:
        raise ValueError(f"unknown level {level!r}; valid: 'embeddings', 'maps'")
    return TrainingSetup(
        group=group, make_trunk=lambda: copy.deepcopy(trunk).requires_grad_(True), head=head,
        train=ViewData(cached["train_inputs"], labels["train"]), test=ViewData(cached["test_inputs"], labels["test"]),
        train_feats=feats["train"], test_feats=feats["test"], description=description,
        normalise_views=level == "embeddings", key=f"small-{level}-{key}")


def small_lambda_setup(group: Group, *, image_size: int = 64, split_block: int = 18, cache_dir=None,
                       progress: bool = False) -> TrainingSetup:
    """The small profile: frozen MobileNetV2 blocks 0..split_block-1 cached per view; the rest is trainable.

    The trunk is the remaining blocks and global average pooling; its embeddings are L2-normalised. The
    head is a linear layer fitted on the embeddings of the upright training digits (it stands in for
    CLIP's text head and is never trained). Caches are keyed by everything that changes them.
    """
    return _small_digit_setup(group, "embeddings", image_size, split_block, cache_dir, progress)


def imbalanced_stand_in(setup: TrainingSetup, classes: Sequence[int], proportions: dict[str, Sequence[float]],
                        seed: int = 0) -> TrainingSetup:
    """An orientation-free, imbalanced task made from ``setup``: its ``classes`` with as many images per class
    as ``proportions[split]`` allows (``equinb.data.scaled_class_counts``; the book copies ISIC 2018's class
    counts, training proportions for "train" and validation proportions for "test"), then every image
    turned by its own random group element (``TrainingSetup.reoriented``). Seeded by ``seed``."""
    counts = {}
    for split, data in (("train", setup.train), ("test", setup.test)):
        available = [int((data.labels == c).sum()) for c in classes]
        counts[split] = scaled_class_counts(proportions[split], available)
    return setup.class_subset(classes, counts, seed).reoriented(seed)


def run_training(setup: TrainingSetup, config: TrainConfig, *, progress: bool = False,
                 heldout_fraction: float = 0.2, method: str = "lambda_equitune", align_views: bool = False,
                 weight_net: Callable[[], nn.Module] | None = None,
                 cache_dir: str | Path | None = None) -> TrainingRun:
    """Prefinetune (cached), select the best weighting module, evaluate, finetune, evaluate.

    ``weight_net``: builds the module (default: the article's invariant lambda network for embeddings).
    ``method`` and ``align_views``: see ``equinb.engine.weighted_model`` (feature-map setups).
    ``cache_dir``: save the run (row, history, module states) there, atomically, keyed by the setup's key,
    the configuration, the method, the alignment, the module's architecture and the engine's source code;
    a later call with the same settings loads it instead of training (other chapters reuse trained modules
    this way). The code part of the key (``training_code_fingerprint``) changes only when what the engine
    *does* changes, not with its documentation.

    Returns a ``TrainingRun``: ``row`` with keys ``prefinetune_top1`` (the article's "Prefinetune": the
    selected module on the full test set) and ``finetune_top1`` (after the last finetuning round), in
    percent; ``states["prefinetune"]`` is the selected module's state dict (what the article's lambda
    plots load), ``states["finetune"]`` the module's after finetuning; ``predictions`` the predicted test
    classes [N_test] at both points (for paired comparisons between runs); ``drift`` what finetuning changed
    in each trunk parameter.
    """
    make_net = weight_net if weight_net is not None else lambda: EmbeddingWeightNet(setup.embed_dim)

    def train() -> dict:
        torch.manual_seed(config.seed)
        row, history, states, predictions, drift = _run(setup, config, make_net(), progress, heldout_fraction,
                                                        method, align_views)
        return dict(row=row, history=history, states=states, predictions=predictions, drift=drift)

    if cache_dir is None:
        out = train()
    else:
        if not setup.key:
            raise ValueError("this setup has no key, so its runs cannot be cached; pass cache_dir=None")
        key = cache_key(setup=setup.key, config=config.as_dict(), method=method, align_views=align_views,
                        weight_net=repr(make_net()), heldout_fraction=heldout_fraction,
                        code=training_code_fingerprint())
        out = load_or_compute(Path(cache_dir) / f"run_{key}.pt", train)
    return TrainingRun(out["row"], out["history"], out["states"], out["predictions"], out["drift"])


def seed_repeats(setup: TrainingSetup, config: TrainConfig, seeds: Sequence[int], *,
                 cache_dir: str | Path | None = None, **options) -> list[TrainingRun]:
    """Prefinetune-only repeats of ``config`` under each seed (lambda initialisation, data order, the random
    group element of each batch, dropout): the seed spread of a run. ``options`` go to ``run_training``."""
    return [run_training(setup, replace(config, seed=int(s), finetune_rounds=0), cache_dir=cache_dir, **options)
            for s in seeds]


TRAINING_SOURCES = ("engine.py", "setups.py", "wrappers.py", "weighting.py", "groups.py", "heads.py")


def training_code_fingerprint() -> str:
    """Hash of what the modules that define a training run do (syntax trees without docstrings or comments),
    so that a cached run never outlives a code change and survives edits of documentation."""
    return source_fingerprint(*(Path(__file__).parent / name for name in TRAINING_SOURCES))


def _run(setup: TrainingSetup, config: TrainConfig, module: nn.Module, progress: bool, heldout_fraction: float,
         method: str, align_views: bool) -> tuple[dict, list[dict], dict]:
    model = weighted_model(setup.make_trunk(), module.to(next(setup.head.parameters()).device), setup.head,
                           setup.group, config, method=method, align_views=align_views,
                           normalise_views=setup.normalise_views)
    labels = setup.train.labels
    if config.selection == "heldout":  # a fixed held-out part of the training split, never trained on
        n_sel = max(1, int(round(heldout_fraction * len(labels))))
        perm = torch.randperm(len(labels), generator=torch.Generator().manual_seed(config.seed))
        sel, fit = perm[:n_sel], perm[n_sel:]
        train_feats, train_labels = setup.train_feats[fit], labels[fit]
        sel_feats, sel_labels = setup.train_feats[sel], labels[sel]
        train = setup.train.subset(fit)
    else:
        train_feats, train_labels, sel_feats, sel_labels = setup.train_feats, labels, setup.train_feats, labels
        train = setup.train
    best, history = prefinetune(model, ViewData(train_feats, train_labels), ViewData(sel_feats, sel_labels), config,
                                progress)
    model.weight_net.load_state_dict(best)  # copies: finetuning leaves ``best`` as selected
    predictions = dict(prefinetune=predict(model, setup.test, feats=setup.test_feats, seed=config.seed))
    pre = _top1(predictions["prefinetune"], setup.test.labels)
    history.append(dict(stage="prefinetune", round=config.prefinetune_rounds, step=None, test_top1=pre))
    cast_trunk(model, config)
    before = {name: p.detach().clone() for name, p in model.trunk.named_parameters()}
    finetuned, last = finetune(model, train, setup.test, config, train_lambda_feats=train_feats,
                               test_lambda_feats=setup.test_feats, progress=progress)
    history += finetuned
    predictions["finetune"] = predictions["prefinetune"] if last is None else last
    row = dict(prefinetune_top1=pre, finetune_top1=_top1(predictions["finetune"], setup.test.labels))
    states = dict(prefinetune=best, finetune=copy.deepcopy(model.weight_net.state_dict()))
    return row, history, states, predictions, parameter_drift(before, model.trunk)


def _top1(predicted: Tensor, labels: Tensor) -> float:
    return 100.0 * float((predicted == labels).sum()) / max(len(labels), 1)


def clip_lambda_setup(group: Group, backbone_name: str = "RN50", dataset: str = "cifar100", *,
                      device: str = "cpu", data_root=None, cache_dir=None, clip_path: str | None = None,
                      clip_download_root: str | None = None, max_train: int | None = 16_000,
                      dataset_options: dict | None = None, batch_size: int = 256, level: str = "embeddings",
                      progress: bool = False) -> TrainingSetup:
    """The paper profile: CLIP's image encoder is the trunk; the prompt-ensemble text head is fixed.

    ``level="embeddings"`` (the invariant lambda-equitune): the whole encoder is the trunk, its
    embeddings are L2-normalised. ``level="maps"`` (the feature-map methods, article sec. 4.2): the trunk
    M1 ends at layer4 (maps [2048, 7, 7] for RN50); the head is ``attnpool`` then the text head, fixed, on
    the unnormalised pooled embedding as in the article's code. Maps are cached in the trunk's dtype (fp16
    on CUDA, as the article computes them): about 0.8 MB per image for the four views of RN50.

    Images are kept as uint8 and resized (bicubic) and normalised on the device per batch. As published,
    only the first 16,000 training images are ever used (unshuffled loader restarted every round), so
    ``max_train`` bounds what is loaded and cached. The frozen model's normalised features of every view
    are cached on disk (atomic, keyed by the weights, data and group).
    """
    backbone, text_head, root, cache_dir = load_frozen_model(
        backbone_name, dataset, device=device, data_root=str(data_root or default_data_root()), cache_dir=cache_dir,
        clip_path=clip_path, clip_download_root=clip_download_root, dataset_options=dataset_options)
    if level not in ("embeddings", "maps"):
        raise ValueError(f"unknown level {level!r}; valid: 'embeddings', 'maps'")
    if backbone.text_model is None:
        raise ValueError(f"clip_lambda_setup needs a CLIP backbone, got {backbone_name!r}")
    head = linear_text_head(text_head).to(device)
    mean = torch.tensor(backbone.mean, device=device).view(1, 3, 1, 1)
    std = torch.tensor(backbone.std, device=device).view(1, 3, 1, 1)

    def prepare(x: Tensor) -> Tensor:  # uint8 [B, H, W, 3] -> normalised [B, 3, S, S] on the device
        x = x.to(device).permute(0, 3, 1, 2).float() / 255
        x = nn.functional.interpolate(x, size=backbone.input_size, mode="bicubic", align_corners=False)
        return ((x.clamp(0, 1) - mean) / std).to(backbone.dtype)

    def split_data(split: str, limit: int | None) -> ImageViewData:
        ds = get_dataset(dataset, split, root=str(root), **(dataset_options or {}))
        if spec.in_memory:  # CIFAR100: uint8 [N, 32, 32, 3] in memory
            images = torch.as_tensor(ds.data[:limit])
        else:  # image files (ISIC2018): decoded once, resized and centre-cropped as CLIP's preprocessing
            images = _decode_uint8(ds, limit, backbone.input_size)
        return ImageViewData(images, torch.as_tensor(ds.targets[:limit]), group, prepare)

    spec = dataset_spec(dataset)
    train, test = split_data("train", max_train), split_data(spec.eval_split, None)  # ISIC2018: validation
    encoder = backbone.encoder.requires_grad_(False)
    if level == "maps":
        encoder, pool = backbone.feature_split()  # stem..layer4 and attnpool (frozen with the encoder)
        head = PooledHead(pool, head)
        embed = encoder
        description = (f"CLIP {backbone_name} up to layer4 (finetuned), maps combined over the views, then "
                       f"attnpool and the prompt-ensemble text head (fixed), {dataset}")
    else:
        embed = lambda v: nn.functional.normalize(encoder(v).float(), dim=-1)  # noqa: E731
        description = f"CLIP {backbone_name} image encoder (finetuned whole), prompt-ensemble text head, {dataset}"
    key = cache_key(kind="lambda_clip", weights=module_fingerprint(backbone.encoder), dataset=dataset,
                    root=str(root), n_train=len(train), n_test=len(test), elements=group.elements,
                    device=torch.device(device).type, **({"level": level} if level == "maps" else {}))
    cached = load_or_compute(Path(cache_dir) / f"lambda_clip_{key}.pt", lambda: {
        split: extract_view_features(embed, data, batch_size, device, progress)
        for split, data in (("train", train), ("test", test))})
    return TrainingSetup(
        group=group, make_trunk=lambda: copy.deepcopy(encoder).requires_grad_(True), head=head, train=train,
        test=test, train_feats=cached["train"], test_feats=cached["test"], description=description,
        normalise_views=level == "embeddings", key=f"clip-{level}-{key}",
    )


def _decode_uint8(ds, limit: int | None, size: int) -> Tensor:
    """Images of a file-backed dataset as uint8 [N, size, size, 3]: bicubic resize of the short side, centre crop."""
    from torchvision import transforms

    ds.transform = transforms.Compose([transforms.Resize(size, interpolation=transforms.InterpolationMode.BICUBIC),
                                       transforms.CenterCrop(size), transforms.PILToTensor()])
    n = len(ds) if limit is None else min(limit, len(ds))
    return torch.stack([ds[i][0].permute(1, 2, 0) for i in range(n)])


def small_feature_map_setup(group: Group, *, image_size: int = 96, split_block: int = 18, cache_dir=None,
                            progress: bool = False) -> TrainingSetup:
    """The small profile at the feature-map level (the article's layer4 -> attnpool split, on MobileNetV2).

    Blocks 0..split_block-1 are frozen and their per-view outputs cached; the remaining blocks are the
    trainable trunk M1 (maps [C, h, w]; at least 3x3 at 96 px); the head M2 is global average pooling and a
    linear layer fitted on the pooled *unnormalised* maps of the upright training digits (as in the
    article's feature-map code, logits come from an unnormalised embedding). The frozen trunk's maps of
    every view are cached too (prefinetuning trains only the weighting module on them). The embedding
    setup at the same ``image_size`` (``small_lambda_setup``) shares this cache.
    """
    check_map_image_size(image_size)
    return _small_digit_setup(group, "maps", image_size, split_block, cache_dir, progress)


def check_map_image_size(image_size: int) -> None:
    side = -(-int(image_size) // 32)  # MobileNetV2's last blocks have stride 32
    if side < 3:
        raise ValueError(f"image_size={image_size} gives {side}x{side} maps; the weighting networks need at least "
                         "3x3: use image_size >= 65 (96 in the book)")


def feature_map_weight_net(method: str, map_shape: tuple[int, int, int]) -> Callable[[], nn.Module]:
    """A factory of the article's weighting module for maps of ``map_shape`` (C, h, w).

    ``"lambda_equitune"``: ``FeatureMapWeightNet`` (softmax over the views in the wrapper); ``"equiattention"``:
    ``ViewAttention``. Article sizes (32 conv channels, 8 per channel, 128 hidden) for any C, h, w.
    """
    c, h, w = map_shape
    if method == "lambda_equitune":
        return lambda: FeatureMapWeightNet(c, (h, w))
    if method == "equiattention":
        return lambda: ViewAttention(c, (h, w))
    raise ValueError(f"unknown method {method!r}; valid: {', '.join(map(repr, METHODS))}")


def feature_map_config(**overrides) -> TrainConfig:
    """The article's feature-map runs: the updated code with softmax-normalised weights and prelr 0.1.

    As published (spec of its code, sec. 5.5): SGD with momentum for the module (prelr 0.1), selection on
    the first 50 training batches before each round, lambda fed by the trainable trunk. The finetuning
    of the article's Tables 2-3 is unrecorded; the default here is the full finetune (trunk and module)
    at lr 5e-8, as the article's ISIC feature-map run.
    """
    return TrainConfig.updated(**{"normalisation": "softmax", "prelr": 0.1, **overrides})


def build_setup(profile: str, level: str, group: Group, *, backbone: str = "RN50", dataset: str = "cifar100",
                image_size: int = 96, split_block: int = 18, device: str = "cpu", data_root: str = "",
                clip_paths: dict[str, str] | None = None, clip_download_root: str = "",
                max_train: int | None = 16_000, dataset_options: dict[str, dict] | None = None,
                progress: bool = False) -> TrainingSetup:
    """The chapters' setups: ``profile`` small (MobileNetV2 on digits) or paper (CLIP on ``dataset``),
    ``level`` embeddings or maps.

    The arguments are the chapters' parameters of the same names: ``clip_paths`` maps backbone names to
    local CLIP files and ``dataset_options`` dataset names to ``get_dataset`` options. Empty strings mean
    defaults (``$EQUINB_DATA``, download CLIP to ``~/.cache/clip``).
    """
    if level not in LEVELS:
        raise ValueError(f"unknown level {level!r}; valid: {', '.join(map(repr, LEVELS))}")
    cache = default_cache_dir(data_root) if data_root else None
    if profile == "small":
        if level == "maps":
            return small_feature_map_setup(group, image_size=image_size, split_block=split_block, cache_dir=cache,
                                           progress=progress)
        return small_lambda_setup(group, image_size=image_size, split_block=split_block, cache_dir=cache,
                                  progress=progress)
    if profile == "paper":
        return clip_lambda_setup(group, backbone, dataset, device=device, data_root=data_root or None,
                                 cache_dir=cache, clip_path=(clip_paths or {}).get(backbone),
                                 clip_download_root=clip_download_root or None, max_train=max_train,
                                 dataset_options=(dataset_options or {}).get(dataset, {}), level=level,
                                 progress=progress)
    raise ValueError(f"unknown profile {profile!r}; valid: 'small', 'paper'")


def trained_model(setup: TrainingSetup, config: TrainConfig, method: str, align_views: bool,
                  state: dict) -> LambdaEquitune | EquiAttention:
    """A feature-map wrapper on ``setup`` with a saved weighting-module state (from ``run_training``), in
    evaluation mode on the head's device."""
    module = feature_map_weight_net(method, setup.map_shape)()
    module.load_state_dict(state)
    model = weighted_model(setup.make_trunk(), module, setup.head, setup.group, config, method=method,
                           align_views=align_views, normalise_views=False)
    return model.to(next(setup.head.parameters()).device).eval()
