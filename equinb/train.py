"""Training engine for lambda-equitune: cached prefinetuning, finetuning, evaluation, selection.

The article's protocol (spec of its code, Vlasenko et al. sec. 4.1) has two stages:

1. *prefinetune*: only the lambda network is trained (SGD, ``prelr``) for ``rounds x steps`` steps; before
   each round the network is evaluated on a selection set and the best copy is kept;
2. *finetune*: the backbone (and, in the updated code, the lambda network) is trained (SGD, ``lr``).

The backbone is frozen during prefinetuning, and a random group transformation of a batch only permutes
its views. So prefinetuning on *cached* per-view features is exact: the same losses and gradients as the
full forward (``tests/test_train.py`` checks this), for a fraction of the cost.

Inputs of the engine are *per-view inputs* ``[N, G, ...]``: the orbit of each image (computed on the fly
from images) or the cached output of a frozen prefix of the backbone for every view. A trainable
``trunk`` maps them to embeddings; the embeddings are L2-normalised as CLIP's are; a fixed linear ``head``
(CLIP's text head, or a stand-in) gives logits.

Every as-published quirk is a field of ``TrainConfig`` with its default stated; ``TrainConfig.original()``
and ``TrainConfig.updated()`` give the article's two code versions.
"""

from __future__ import annotations

import copy
import itertools
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
from torch import nn

from .groups import Group
from .wrappers import EquiAttention, LambdaEquitune

__all__ = ["TrainConfig", "ViewData", "LambdaModel", "batch_schedule", "extract_view_features", "evaluate",
           "prefinetune", "finetune", "train_step_loss", "check_chapter_params"]

Tensor = torch.Tensor

_CHOICES = {
    "lambda_input": ("trainable", "frozen_copy"),
    "finetune_params": ("backbone", "backbone+lambda"),
    "data_order": ("restart", "shuffle"),
    "selection": ("train_first_batches", "heldout"),
    "param_dtype": ("fp32", "fp16_inplace"),
    "normalisation": ("none", "softmax", "sum"),
}


@dataclass(frozen=True)
class TrainConfig:
    """Hyperparameters and as-published options of lambda-equitune training (defaults: the updated code).

    Attributes:
        prefinetune_rounds, prefinetune_steps: 20 x 100 (article).
        prelr: SGD learning rate of the lambda network in prefinetuning, 0.33 (article, CIFAR100).
        finetune_rounds, finetune_steps: 8 x 500 (article).
        lr: finetuning learning rate: 5e-8 (updated code); the original code used 5e-7.
        momentum: SGD momentum, 0.9 (no weight decay, no schedule, state kept across rounds).
        batch_size: 32.
        softmax_before_loss: as published in the original code: mean of per-view *probabilities*, then
            cross-entropy (a double softmax). Updated code: False.
        lambda_input: ``"frozen_copy"`` (original: lambda sees a frozen copy of the backbone) or
            ``"trainable"`` (updated: lambda sees the trainable backbone's features).
        finetune_params: ``"backbone"`` (original) or ``"backbone+lambda"`` (updated).
        data_order: ``"restart"`` (as published: an unshuffled loader restarted every round, so only the
            first ``steps`` batches are ever seen, and a round ends early when the data run out) or
            ``"shuffle"`` (shuffled epochs that continue across rounds).
        selection: ``"train_first_batches"`` (as published: the first ``selection_batches`` training
            batches, a subset of what prefinetuning trains on) or ``"heldout"`` (a held-out split).
        selection_batches: 50.
        dropout_in_eval: as published, the lambda network's dropout stays active in every evaluation.
        param_dtype: ``"fp16_inplace"`` (as published on CUDA: SGD updates fp16 weights in place, so tiny
            updates round away) or ``"fp32"``.
        logit_factor: multiplies the cosine logits, 1.0 (article).
        normalisation: lambda normalisation, ``"none"`` in the invariant code.
        seed: seeds data order, dropout and the per-batch random group element.
    """

    prefinetune_rounds: int = 20
    prefinetune_steps: int = 100
    prelr: float = 0.33
    finetune_rounds: int = 8
    finetune_steps: int = 500
    lr: float = 5e-8
    momentum: float = 0.9
    batch_size: int = 32
    softmax_before_loss: bool = False
    lambda_input: str = "trainable"
    finetune_params: str = "backbone+lambda"
    data_order: str = "restart"
    selection: str = "train_first_batches"
    selection_batches: int = 50
    dropout_in_eval: bool = True
    param_dtype: str = "fp32"
    logit_factor: float = 1.0
    normalisation: str = "none"
    seed: int = 0

    def __post_init__(self) -> None:
        for name, valid in _CHOICES.items():
            if getattr(self, name) not in valid:
                raise ValueError(f"TrainConfig.{name}={getattr(self, name)!r} is not valid; choose one of {valid}")
        for name in ("prefinetune_rounds", "prefinetune_steps", "finetune_rounds", "finetune_steps"):
            if int(getattr(self, name)) < 0:
                raise ValueError(f"TrainConfig.{name} must be >= 0, got {getattr(self, name)}")
        for name in ("batch_size", "selection_batches"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"TrainConfig.{name} must be >= 1, got {getattr(self, name)}")
        for name in ("prelr", "lr", "momentum"):
            if not float(getattr(self, name)) >= 0:
                raise ValueError(f"TrainConfig.{name} must be >= 0, got {getattr(self, name)}")

    @classmethod
    def original(cls, **overrides) -> "TrainConfig":
        """The article's "original code": double softmax, frozen-copy lambda input, lr 5e-7, backbone only."""
        return replace(cls(softmax_before_loss=True, lambda_input="frozen_copy", finetune_params="backbone", lr=5e-7),
                       **overrides)

    @classmethod
    def updated(cls, **overrides) -> "TrainConfig":
        """The article's "updated code": no softmax, trainable lambda input, lr 5e-8, backbone + lambda."""
        return replace(cls(), **overrides)

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class ViewData:
    """Per-view inputs of a split and their labels.

    ``inputs`` [N, G, ...]: view k of image i is the input of ``g_k x_i`` (images, or cached outputs of a
    frozen prefix of the backbone). ``labels`` [N].
    """

    inputs: Tensor
    labels: Tensor

    def __post_init__(self) -> None:
        if self.inputs.ndim < 3 or self.inputs.shape[0] != self.labels.shape[0]:
            raise ValueError(f"ViewData needs inputs [N, G, ...] and labels [N]; got {tuple(self.inputs.shape)} "
                             f"and {tuple(self.labels.shape)}")

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def batch(self, index: Tensor, element: int | None = None, group: Group | None = None) -> tuple[Tensor, Tensor]:
        """Inputs of ``index`` after the random group element ``element``: view j of g x is view j*g of x."""
        views = self.inputs[index]
        if element:
            views = views[:, group.view_permutation(element)]
        return views, self.labels[index]

    def restrict(self, group: Group, columns: list[int]) -> "ViewData":
        """The same data on a subgroup whose elements are the views ``columns`` (rot180 = views 0, 2 of rot90)."""
        return ViewData(self.inputs[:, columns], self.labels)

    def subset(self, index: Tensor) -> "ViewData":
        return ViewData(self.inputs[index], self.labels[index])


class ImageViewData(ViewData):
    """Per-view inputs built on the fly from images: ``batch`` returns the orbit of the (transformed) images.

    For data too large to hold as views (CIFAR100 at 224 px). ``prepare`` maps a raw image batch to the
    backbone's input (e.g. resize and normalise on the GPU). Shapes: images [N, C, H, W] -> views [B, G, ...].
    """

    def __init__(self, images: Tensor, labels: Tensor, group: Group,
                 prepare: Callable[[Tensor], Tensor] | None = None) -> None:
        if images.ndim != 4 or images.shape[0] != labels.shape[0]:
            raise ValueError(f"ImageViewData needs images [N, C, H, W] and labels [N]; got {tuple(images.shape)}")
        self.inputs, self.labels, self.group, self.prepare = images, labels, group, prepare

    def restrict(self, group: Group, columns: list[int]) -> "ImageViewData":
        return ImageViewData(self.inputs, self.labels, group, self.prepare)

    def subset(self, index: Tensor) -> "ImageViewData":
        return ImageViewData(self.inputs[index], self.labels[index], self.group, self.prepare)

    def batch(self, index: Tensor, element: int | None = None, group: Group | None = None) -> tuple[Tensor, Tensor]:
        x = self.inputs[index]
        x = self.prepare(x) if self.prepare is not None else x
        if element:
            x = self.group.act(x, element)
        return self.group.orbit(x), self.labels[index]


class LambdaModel(nn.Module):
    """Trainable trunk + view-weighting module + fixed head, on per-view inputs.

    Embedding level (the invariant lambda-equitune, default): ``f_k = normalise(trunk(v_k))``; lambda from
    ``f_k`` (or from the frozen copy's features, ``lambda_feats``); logits as ``LambdaEquitune.combine``
    (``normalisation="none"``: ``mean_k logit_factor * head(lambda_k f_k)``, with a softmax per view first if
    ``softmax_before_loss``).

    Feature-map level (``normalise_features=False``, the article's feature-map code): the trunk gives maps
    ``[C, h, w]``; ``method="lambda"`` weights them with a feature-map lambda network (``normalisation``
    softmax in the article), ``method="attention"`` with ``ViewAttention``; ``align_views`` maps view k back
    by ``g_k^-1`` before combining (as described) or not (as published); the head pools and classifies.

    Shapes: views [B, G, ...] -> logits [B, K]; weights [B, G].
    """

    def __init__(self, trunk: nn.Module, weight_net: nn.Module, head: nn.Module, group: Group,
                 config: TrainConfig, *, method: str = "lambda", align_views: bool = False,
                 normalise_features: bool = True) -> None:
        super().__init__()
        self.trunk = trunk
        common = dict(head=head.requires_grad_(False), output_softmax=config.softmax_before_loss,
                      logit_factor=config.logit_factor, align_views=align_views)
        if method == "lambda":
            self.combiner = LambdaEquitune(nn.Identity(), group, weight_net, normalisation=config.normalisation,
                                           dropout_in_eval=config.dropout_in_eval, **common)
        elif method == "attention":
            self.combiner = EquiAttention(nn.Identity(), group, weight_net, **common)
        else:
            raise ValueError(f"unknown method {method!r}; valid: 'lambda', 'attention'")
        self.group, self.config, self.normalise_features = group, config, bool(normalise_features)

    @property
    def weight_net(self) -> nn.Module:
        """The trainable view-weighting module (the lambda network or the view attention)."""
        return self.combiner.weight_net if isinstance(self.combiner, LambdaEquitune) else self.combiner.attention

    def features(self, views: Tensor) -> Tensor:
        """Shapes: views [B, G, ...] -> trunk outputs [B, G, ...] (float32; L2-normalised embeddings by default)."""
        b, g = views.shape[:2]
        dtype = next(self.trunk.parameters(), torch.empty(0)).dtype
        feats = self.trunk(views.to(self.device).flatten(0, 1).to(dtype)).float()
        if self.normalise_features:
            feats = nn.functional.normalize(feats, dim=-1)
        return feats.reshape(b, g, *feats.shape[1:])

    @property
    def device(self) -> torch.device:
        return next(self.combiner.head.parameters()).device

    def forward(self, views: Tensor, lambda_feats: Tensor | None = None, feats: Tensor | None = None,
                return_weights: bool = False) -> Tensor | tuple[Tensor, Tensor]:
        move = lambda t: None if t is None else t.to(self.device, non_blocking=True)  # noqa: E731
        views, lambda_feats, feats = move(views), move(lambda_feats), move(feats)
        feats = self.features(views) if feats is None else feats
        weights = self.combiner.view_weights(feats if lambda_feats is None else lambda_feats)
        out = self.combiner.combine(feats, weights)
        return (out, weights) if return_weights else out

    def train(self, mode: bool = True) -> "LambdaModel":
        super().train(mode)
        self.combiner.train(mode)  # keeps dropout on in evaluation when dropout_in_eval
        # as published, the backbone is never put in training mode: BatchNorm keeps its running statistics
        self.trunk.eval()
        return self


def batch_schedule(n: int, batch_size: int, rounds: int, steps: int, order: str, seed: int) -> list[list[Tensor]]:
    """Index batches of every round.

    ``restart``: every round restarts an unshuffled loader: batches 0..steps-1 of the data in order (fewer
    when the data run out, as ``islice`` over a fresh iterator does). ``shuffle``: shuffled epochs that
    continue across rounds, ``steps`` batches per round (the last batch of an epoch may be short).
    """
    starts = range(0, n, batch_size)
    if order == "restart":
        batches = [torch.arange(s, min(s + batch_size, n)) for s in starts][:steps]
        return [batches for _ in range(rounds)]
    if order != "shuffle":
        raise ValueError(f"unknown data order {order!r}; valid: 'restart', 'shuffle'")
    gen = torch.Generator().manual_seed(seed)

    def epochs() -> Iterator[Tensor]:
        while True:
            perm = torch.randperm(n, generator=gen)
            yield from (perm[s:s + batch_size] for s in starts)

    stream = epochs()
    return [list(itertools.islice(stream, steps)) for _ in range(rounds)]


@torch.no_grad()
def extract_view_features(trunk: Callable[[Tensor], Tensor], data: ViewData, batch_size: int = 256,
                          device: str | torch.device = "cpu", progress: bool = False) -> Tensor:
    """Run a frozen trunk once on every view. Shapes: views [N, G, ...] -> outputs [N, G, ...] (CPU)."""
    from tqdm import tqdm

    outs = []
    for start in tqdm(range(0, len(data), batch_size), desc="features", disable=not progress, ascii=True):
        chunk, _ = data.batch(torch.arange(start, min(start + batch_size, len(data))))
        b, g = chunk.shape[:2]
        out = trunk(chunk.to(device).flatten(0, 1))
        outs.append(out.reshape(b, g, *out.shape[1:]).cpu())
    return torch.cat(outs)


def _draw_elements(n_batches: int, order: int, rng: np.random.RandomState) -> list[int]:
    """The article's random transformation: one group element per batch (``np.random.randint``)."""
    return [int(rng.randint(0, order)) for _ in range(n_batches)]


def train_step_loss(model: LambdaModel, views: Tensor, labels: Tensor, lambda_feats: Tensor | None = None,
                    feats: Tensor | None = None) -> Tensor:
    """Cross-entropy of one batch (``softmax_before_loss``: the article's CE applied to probabilities)."""
    logits = model(views, lambda_feats=lambda_feats, feats=feats)
    return nn.functional.cross_entropy(logits, labels.to(logits.device))


def evaluate(model: LambdaModel, data: ViewData, batch_size: int = 256, feats: Tensor | None = None,
             lambda_feats: Tensor | None = None, max_batches: int | None = None, seed: int = 0,
             data_are_features: bool = False) -> float:
    """Top-1 accuracy (%) in eval mode (the lambda network's dropout stays on if ``dropout_in_eval``).

    ``feats``: cached normalised features [N, G, D] of ``data`` (a frozen trunk); else the trunk runs,
    unless ``data_are_features`` (the batches of ``data`` already are normalised features).
    ``lambda_feats``: what lambda sees (the frozen copy's cached features); default: the features.
    ``max_batches``: only the first batches (the article's selection set). Seeded for the dropout.
    """
    was_training = model.training
    model.eval()
    correct, total = 0, 0
    with torch.no_grad(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for i, start in enumerate(range(0, len(data), batch_size)):
            if max_batches is not None and i >= max_batches:
                break
            index = torch.arange(start, min(start + batch_size, len(data)))
            views, labels = data.batch(index)
            f = feats[index] if feats is not None else views if data_are_features else model.features(views)
            logits = model(views, lambda_feats=None if lambda_feats is None else lambda_feats[index], feats=f)
            correct += int((logits.argmax(-1).cpu() == labels).sum())
            total += len(index)
    model.train(was_training)
    return 100.0 * correct / max(total, 1)


def _sgd(params, lr: float, momentum: float) -> torch.optim.SGD:
    return torch.optim.SGD([p for p in params if p.requires_grad], lr=lr, momentum=momentum)


def prefinetune(model: LambdaModel, train: ViewData, select: ViewData, config: TrainConfig,
                progress: bool = False) -> tuple[dict, list[dict]]:
    """Train only the lambda network on normalised features; keep the best by selection accuracy.

    ``train`` and ``select`` yield normalised features [B, G, D]: the backbone is frozen here, so they are
    cached (``ViewData(feats, labels)``); a random group element per batch permutes the views exactly as
    the full forward would. As published, the selection accuracy is computed *before* each round, so the
    last round's training is never eligible.

    Returns the best lambda-network state and a tidy history (round, step, loss, select_top1).
    """
    from tqdm import tqdm

    torch.manual_seed(config.seed)
    rng = np.random.RandomState(config.seed)
    opt = _sgd(model.weight_net.parameters(), config.prelr, config.momentum)
    schedule = batch_schedule(len(train), config.batch_size, config.prefinetune_rounds,
                              config.prefinetune_steps, config.data_order, config.seed)
    max_sel = config.selection_batches if config.selection == "train_first_batches" else None
    best, best_state, history, step = -1.0, copy.deepcopy(model.weight_net.state_dict()), [], 0
    for r, batches in enumerate(tqdm(schedule, desc="prefinetune", disable=not progress, ascii=True)):
        acc = evaluate(model, select, config.batch_size, max_batches=max_sel, seed=config.seed + r,
                       data_are_features=True)
        history.append(dict(stage="prefinetune", round=r, step=step, select_top1=acc))
        if acc > best:
            best, best_state = acc, copy.deepcopy(model.weight_net.state_dict())
        model.train()
        for index, element in zip(batches, _draw_elements(len(batches), model.group.order, rng)):
            feats, labels = train.batch(index, element, model.group)
            loss = train_step_loss(model, None, labels, lambda_feats=feats, feats=feats)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            history.append(dict(stage="prefinetune", round=r, step=step, loss=loss.item()))
    return best_state, history


def finetune(model: LambdaModel, train: ViewData, test: ViewData, config: TrainConfig,
             train_lambda_feats: Tensor | None = None, test_lambda_feats: Tensor | None = None,
             eval_every_round: bool = True, progress: bool = False) -> list[dict]:
    """Finetune the trunk (and the lambda network for ``backbone+lambda``) with the full forward.

    ``*_lambda_feats``: cached features of the frozen copy [N, G, D] that feed lambda when
    ``lambda_input="frozen_copy"`` (the frozen copy never changes, so caching it is exact).
    ``param_dtype="fp16_inplace"`` casts the trunk to fp16 before training, as CLIP is on CUDA.

    Returns a tidy history (stage, round, step, loss, test_top1).
    """
    from tqdm import tqdm

    if config.lambda_input == "frozen_copy" and (train_lambda_feats is None or test_lambda_feats is None):
        raise ValueError("lambda_input='frozen_copy' needs the frozen copy's cached features "
                         "(train_lambda_feats and test_lambda_feats)")
    if config.param_dtype == "fp16_inplace":
        model.trunk.half()
    torch.manual_seed(config.seed)
    rng = np.random.RandomState(config.seed + 1)
    params = list(model.trunk.parameters())
    if config.finetune_params == "backbone+lambda":
        params += list(model.weight_net.parameters())
    opt = _sgd(params, config.lr, config.momentum)
    schedule = batch_schedule(len(train), config.batch_size, config.finetune_rounds, config.finetune_steps,
                              config.data_order, config.seed)
    history, step = [], 0
    for r, batches in enumerate(tqdm(schedule, desc="finetune", disable=not progress, ascii=True)):
        model.train()
        for index, element in zip(batches, _draw_elements(len(batches), model.group.order, rng)):
            views, labels = train.batch(index, element, model.group)
            lam = None
            if train_lambda_feats is not None and config.lambda_input == "frozen_copy":
                lam = ViewData(train_lambda_feats, train.labels).batch(index, element, model.group)[0]
            feats = model.features(views)
            loss = train_step_loss(model, views, labels, lambda_feats=feats if lam is None else lam, feats=feats)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            history.append(dict(stage="finetune", round=r, step=step, loss=loss.item()))
        if eval_every_round or r == len(schedule) - 1:
            frozen = test_lambda_feats if config.lambda_input == "frozen_copy" else None
            acc = evaluate(model, test, lambda_feats=frozen, seed=config.seed)
            history.append(dict(stage="finetune", round=r, step=step, test_top1=acc))
    return history


# ------------------------------------------------------------------------------------------ experiments


@dataclass
class LambdaSetup:
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
        normalise_features: True at the embedding level (CLIP's normalised embeddings), False for maps.
        key: names the setup's data and weights in cache keys of training runs ("" = runs are not cached).
        turns: for ``reoriented`` setups, per split ("train", "test") the element each image was turned by.
    """

    group: Group
    make_trunk: Callable[[], nn.Module]
    head: nn.Module
    train: ViewData
    test: ViewData
    train_feats: Tensor
    test_feats: Tensor
    description: str = ""
    normalise_features: bool = True
    key: str = ""
    turns: dict[str, Tensor] | None = None

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

    def restricted(self, group: Group, columns: list[int]) -> "LambdaSetup":
        """The same setup on a subgroup whose elements are the views ``columns`` (no recomputation)."""
        pick = lambda data: data.restrict(group, columns)  # noqa: E731
        return replace(self, group=group, train=pick(self.train), test=pick(self.test),
                       train_feats=self.train_feats[:, columns], test_feats=self.test_feats[:, columns],
                       key=self.key and f"{self.key}-views{columns}")

    def reoriented(self, seed: int = 0) -> "LambdaSetup":
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


def _cached_digit_maps(group: Group, image_size: int, split_block: int, cache_dir,
                       progress: bool) -> tuple[dict, dict, nn.Module, int, str]:
    """Digits through a frozen MobileNetV2 split before block ``split_block``, cached on disk once.

    Returns ``(cached, labels, trunk, n_blocks, key)``: per split, ``{split}_inputs`` (the frozen prefix's
    output for every view, [N, G, ...]: the trainable trunk's inputs) and ``{split}_maps`` (the frozen
    trunk's maps of every view, [N, G, C, h, w]); ``trunk`` = the remaining blocks; ``key`` names the cache.
    The embedding and feature-map setups share one cache per (image size, split, group).
    """
    from .backbones import load_backbone
    from .data import data_root, load_digits
    from .report import cache_key, load_or_compute, module_fingerprint

    backbone = load_backbone("mobilenet_v2", input_size=image_size)
    model = backbone.model.eval().requires_grad_(False)
    prefix, trunk = model.features[:split_block], model.features[split_block:]
    cache_dir = data_root() / "cache" if cache_dir is None else cache_dir
    key = cache_key(kind="digit_maps", weights=module_fingerprint(model), size=image_size, split=split_block,
                    elements=group.elements)
    splits = {s: load_digits(s, image_size, backbone.mean, backbone.std) for s in ("train", "test")}

    def compute() -> dict:
        out = {}
        for split, ds in splits.items():
            inputs = extract_view_features(prefix, ViewData(group.orbit(ds.tensors[0]), ds.tensors[1]),
                                           progress=progress)
            out[f"{split}_inputs"] = inputs
            out[f"{split}_maps"] = extract_view_features(trunk, ViewData(inputs, ds.tensors[1]))
        return out

    cached = load_or_compute(Path(cache_dir) / f"digit_maps_{key}.pt", compute)
    return cached, {s: ds.tensors[1] for s, ds in splits.items()}, trunk, len(model.features), key


def _small_digit_setup(group: Group, level: str, image_size: int, split_block: int, cache_dir,
                       progress: bool) -> LambdaSetup:
    """The small profile's setup at the ``"embeddings"`` or ``"maps"`` level (one shared cache)."""
    from .zeroshot import fit_linear_head

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
    return LambdaSetup(
        group=group, make_trunk=lambda: copy.deepcopy(trunk).requires_grad_(True), head=head,
        train=ViewData(cached["train_inputs"], labels["train"]), test=ViewData(cached["test_inputs"], labels["test"]),
        train_feats=feats["train"], test_feats=feats["test"], description=description,
        normalise_features=level == "embeddings", key=f"small-{level}-{key}")


def small_lambda_setup(group: Group, *, image_size: int = 64, split_block: int = 18, cache_dir=None,
                       progress: bool = False) -> LambdaSetup:
    """The small profile: frozen MobileNetV2 blocks 0..split_block-1 cached per view; the rest is trainable.

    The trunk is the remaining blocks and global average pooling; its embeddings are L2-normalised. The
    head is a linear layer fitted on the embeddings of the upright training digits (it stands in for
    CLIP's text head and is never trained). Caches are keyed by everything that changes them.
    """
    return _small_digit_setup(group, "embeddings", image_size, split_block, cache_dir, progress)


def run_lambda_equitune(setup: LambdaSetup, config: TrainConfig, *, progress: bool = False,
                        heldout_fraction: float = 0.2, method: str = "lambda", align_views: bool = False,
                        weight_net: Callable[[], nn.Module] | None = None,
                        cache_dir: str | Path | None = None) -> tuple[dict, list[dict], dict]:
    """Prefinetune (cached), select the best weighting module, evaluate, finetune, evaluate.

    ``weight_net``: builds the module (default: the article's invariant lambda network for embeddings).
    ``method`` and ``align_views``: see ``LambdaModel`` (feature-map setups).
    ``cache_dir``: save the run (row, history, module states) there, atomically, keyed by the setup's key,
    the configuration, the method, the alignment, the module's architecture and the engine's source code;
    a later call with the same settings loads it instead of training (other chapters reuse trained modules
    this way).

    Returns ``(row, history, states)`` with row keys ``prefinetune_top1`` (the article's "Prefinetune":
    the selected module on the full test set) and ``finetune_top1`` (after the last finetuning round), in
    percent; ``states["prefinetune"]`` is the selected module's state dict (what the article's lambda
    plots load), ``states["finetune"]`` the module's after finetuning.
    """
    from .weighting import EmbeddingWeightNet

    make_net = weight_net if weight_net is not None else lambda: EmbeddingWeightNet(setup.embed_dim)

    def train() -> dict:
        torch.manual_seed(config.seed)
        row, history, states = _run(setup, config, make_net(), progress, heldout_fraction, method, align_views)
        return dict(row=row, history=history, states=states)

    if cache_dir is None:
        out = train()
    else:
        from .report import cache_key, load_or_compute

        if not setup.key:
            raise ValueError("this setup has no key, so its runs cannot be cached; pass cache_dir=None")
        key = cache_key(setup=setup.key, config=config.as_dict(), method=method, align_views=align_views,
                        weight_net=repr(make_net()), heldout_fraction=heldout_fraction, code=_code_fingerprint())
        out = load_or_compute(Path(cache_dir) / f"run_{key}.pt", train)
    return out["row"], out["history"], out["states"]


def _code_fingerprint() -> str:
    """Hash of the sources that define a training run, so that a cached run never outlives a code change."""
    import hashlib

    digest = hashlib.sha256()
    for name in ("train.py", "wrappers.py", "weighting.py", "groups.py"):
        digest.update((Path(__file__).parent / name).read_bytes())
    return digest.hexdigest()[:16]


def _run(setup: LambdaSetup, config: TrainConfig, module: nn.Module, progress: bool, heldout_fraction: float,
         method: str, align_views: bool) -> tuple[dict, list[dict], dict]:
    model = LambdaModel(setup.make_trunk(), module.to(next(setup.head.parameters()).device), setup.head,
                        setup.group, config, method=method, align_views=align_views,
                        normalise_features=setup.normalise_features)
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
    pre = evaluate(model, setup.test, feats=setup.test_feats, seed=config.seed)
    history.append(dict(stage="prefinetune", round=config.prefinetune_rounds, step=None, test_top1=pre))
    history += finetune(model, train, setup.test, config, train_lambda_feats=train_feats,
                        test_lambda_feats=setup.test_feats, progress=progress)
    tests = [h["test_top1"] for h in history if h["stage"] == "finetune" and "test_top1" in h]
    row = dict(prefinetune_top1=pre, finetune_top1=tests[-1] if tests else pre)
    return row, history, dict(prefinetune=best, finetune=copy.deepcopy(model.weight_net.state_dict()))


def clip_lambda_setup(group: Group, backbone_name: str = "RN50", dataset: str = "cifar100", *,
                      device: str = "cpu", data_root=None, cache_dir=None, clip_path: str | None = None,
                      clip_download_root: str | None = None, max_train: int | None = 16_000,
                      dataset_options: dict | None = None, batch_size: int = 256, level: str = "embeddings",
                      progress: bool = False) -> LambdaSetup:
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
    from .data import DATASET_SPLITS, get_dataset
    from .data import data_root as default_root
    from .report import cache_key, load_or_compute, module_fingerprint
    from .zeroshot import load_zeroshot_model

    backbone, text_head, root, cache_dir = load_zeroshot_model(
        backbone_name, dataset, device=device, data_root=str(data_root or default_root()), cache_dir=cache_dir,
        clip_path=clip_path, clip_download_root=clip_download_root, dataset_options=dataset_options)
    if level not in ("embeddings", "maps"):
        raise ValueError(f"unknown level {level!r}; valid: 'embeddings', 'maps'")
    if backbone.text_model is None:
        raise ValueError(f"clip_lambda_setup needs a CLIP backbone, got {backbone_name!r}")
    head = nn.Linear(text_head.weights.shape[0], text_head.weights.shape[1], bias=False)
    with torch.no_grad():
        head.weight.copy_(text_head.weights.float().T)  # logits = f_hat @ W, logit factor 1 as in the article
    head = head.to(device).requires_grad_(False)
    mean = torch.tensor(backbone.mean, device=device).view(1, 3, 1, 1)
    std = torch.tensor(backbone.std, device=device).view(1, 3, 1, 1)

    def prepare(x: Tensor) -> Tensor:  # uint8 [B, H, W, 3] -> normalised [B, 3, S, S] on the device
        x = x.to(device).permute(0, 3, 1, 2).float() / 255
        x = nn.functional.interpolate(x, size=backbone.input_size, mode="bicubic", align_corners=False)
        return ((x.clamp(0, 1) - mean) / std).to(backbone.dtype)

    def split_data(split: str, limit: int | None) -> ImageViewData:
        ds = get_dataset(dataset, split, root=str(root), **(dataset_options or {}))
        if hasattr(ds, "data"):  # CIFAR100: uint8 [N, 32, 32, 3] in memory
            images = torch.as_tensor(ds.data[:limit])
        else:  # image files (ISIC2018): decoded once, resized and centre-cropped as CLIP's preprocessing
            images = _decode_uint8(ds, limit, backbone.input_size)
        return ImageViewData(images, torch.as_tensor(ds.targets[:limit]), group, prepare)

    test_split = "test" if "test" in DATASET_SPLITS[dataset] else "val"  # ISIC2018: the validation split
    train, test = split_data("train", max_train), split_data(test_split, None)
    encoder = backbone.encoder.requires_grad_(False)
    if level == "maps":
        encoder, pool = backbone.feature_split()  # stem..layer4 and attnpool (frozen with the encoder)
        head = _PooledHead(pool, head)
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
    return LambdaSetup(
        group=group, make_trunk=lambda: copy.deepcopy(encoder).requires_grad_(True), head=head, train=train,
        test=test, train_feats=cached["train"], test_feats=cached["test"], description=description,
        normalise_features=level == "embeddings", key=f"clip-{level}-{key}",
    )


def _decode_uint8(ds, limit: int | None, size: int) -> Tensor:
    """Images of a file-backed dataset as uint8 [N, size, size, 3]: bicubic resize of the short side, centre crop."""
    from torchvision import transforms

    ds.transform = transforms.Compose([transforms.Resize(size, interpolation=transforms.InterpolationMode.BICUBIC),
                                       transforms.CenterCrop(size), transforms.PILToTensor()])
    n = len(ds) if limit is None else min(limit, len(ds))
    return torch.stack([ds[i][0].permute(1, 2, 0) for i in range(n)])


class _PooledHead(nn.Module):
    """The feature-map head: a frozen pooling module (CLIP's attnpool) then the linear text head.

    Shapes: maps [B, C, h, w] (any float dtype; cast to the pool's) -> logits [B, K] (float32).
    """

    def __init__(self, pool: nn.Module, linear: nn.Linear) -> None:
        super().__init__()
        self.pool, self.linear = pool.requires_grad_(False), linear

    def forward(self, maps: Tensor) -> Tensor:
        dtype = next(self.pool.parameters()).dtype
        return self.linear(self.pool(maps.to(dtype)).float())


def small_feature_map_setup(group: Group, *, image_size: int = 96, split_block: int = 18, cache_dir=None,
                            progress: bool = False) -> LambdaSetup:
    """The small profile at the feature-map level (the article's layer4 -> attnpool split, on MobileNetV2).

    Blocks 0..split_block-1 are frozen and their per-view outputs cached; the remaining blocks are the
    trainable trunk M1 (maps [C, h, w]; at least 3x3 at 96 px); the head M2 is global average pooling and a
    linear layer fitted on the pooled *unnormalised* maps of the upright training digits (as in the
    article's feature-map code, logits come from an unnormalised embedding). The frozen trunk's maps of
    every view are cached too (prefinetuning trains only the weighting module on them). The embedding
    setup at the same ``image_size`` (``small_lambda_setup``) shares this cache.
    """
    _check_map_image_size(image_size)
    return _small_digit_setup(group, "maps", image_size, split_block, cache_dir, progress)


def _check_map_image_size(image_size: int) -> None:
    side = -(-int(image_size) // 32)  # MobileNetV2's last blocks have stride 32
    if side < 3:
        raise ValueError(f"image_size={image_size} gives {side}x{side} maps; the weighting networks need at least "
                         "3x3: use image_size >= 65 (96 in the book)")


def check_chapter_params(profile: str, device: str, *, map_image_size: int | None = None) -> None:
    """The training chapters' early checks, so that bad parameters fail in the first cell, before any work.

    ``map_image_size``: the small profile's input size at the feature-map level (maps must be >= 3x3).
    """
    if profile not in ("small", "paper"):
        raise ValueError(f"unknown profile {profile!r}; valid: 'small', 'paper'")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device={device!r} was requested but no CUDA GPU is available; use device='cpu'")
    if profile == "small" and map_image_size is not None:
        _check_map_image_size(map_image_size)


def feature_map_weight_net(method: str, map_shape: tuple[int, int, int]) -> Callable[[], nn.Module]:
    """A factory of the article's weighting module for maps of ``map_shape`` (C, h, w).

    ``"lambda"``: ``FeatureMapWeightNet`` (softmax over the views in the wrapper); ``"attention"``:
    ``ViewAttention``. Article sizes (32 conv channels, 8 per channel, 128 hidden) for any C, h, w.
    """
    from .weighting import FeatureMapWeightNet, ViewAttention

    c, h, w = map_shape
    if method == "lambda":
        return lambda: FeatureMapWeightNet(c, (h, w))
    if method == "attention":
        return lambda: ViewAttention(c, (h, w))
    raise ValueError(f"unknown method {method!r}; valid: 'lambda', 'attention'")


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
                clip_path: str = "", max_train: int | None = 16_000, dataset_options: dict | None = None,
                progress: bool = False) -> LambdaSetup:
    """The chapters' setups: ``profile`` small (MobileNetV2 on digits) or paper (CLIP on ``dataset``),
    ``level`` embeddings or maps. Empty strings mean defaults (``$EQUINB_DATA``, download CLIP)."""
    cache = f"{data_root}/cache" if data_root else None
    if profile == "small":
        if level == "maps":
            return small_feature_map_setup(group, image_size=image_size, split_block=split_block, cache_dir=cache,
                                           progress=progress)
        return small_lambda_setup(group, image_size=image_size, split_block=split_block, cache_dir=cache,
                                  progress=progress)
    if profile == "paper":
        return clip_lambda_setup(group, backbone, dataset, device=device, data_root=data_root or None,
                                 cache_dir=cache, clip_path=clip_path or None, max_train=max_train,
                                 dataset_options=dataset_options, level=level, progress=progress)
    raise ValueError(f"unknown profile {profile!r}; valid: 'small', 'paper'")


def run_cache_dir(data_root: str = "") -> Path:
    """Where the chapters save trained runs (``<data root>/cache/runs``; empty: ``$EQUINB_DATA``)."""
    from .data import data_root as default_root

    return Path(data_root or default_root()) / "cache" / "runs"


def trained_model(setup: LambdaSetup, config: TrainConfig, method: str, align_views: bool,
                  state: dict) -> LambdaModel:
    """A feature-map ``LambdaModel`` on ``setup`` with a saved weighting-module state (from
    ``run_lambda_equitune``), in evaluation mode on the head's device."""
    module = feature_map_weight_net(method, setup.map_shape)()
    module.load_state_dict(state)
    model = LambdaModel(setup.make_trunk(), module, setup.head, setup.group, config, method=method,
                        align_views=align_views, normalise_features=False)
    return model.to(next(setup.head.parameters()).device).eval()
