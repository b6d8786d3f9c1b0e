"""Training engine for lambda-equitune and equiattention: prefinetuning, finetuning, evaluation, selection.

The article's protocol (its code, Vlasenko et al. sec. 4.1) has two stages:

1. *prefinetune*: only the weighting network is trained (SGD, ``prelr``) for ``rounds x steps`` steps;
   before each round it is evaluated on a selection set and the best copy is kept;
2. *finetune*: the backbone (and, in the updated code, the weighting network) is trained (SGD, ``lr``).

The backbone is frozen during prefinetuning, and a random group transformation of a batch only permutes
its views. So prefinetuning on *cached* per-view features is exact: the same losses and gradients as the
full forward (``tests/test_engine.py`` checks this), for a fraction of the cost.

The model is the wrapper itself (``weighted_model``: ``LambdaEquitune`` or ``EquiAttention``), run on
*per-view inputs* ``[N, G, ...]`` with ``forward_views``: the orbit of each image (computed on the fly from
images) or the cached output of a frozen prefix of the backbone for every view. The engine does no file
I/O; ``equinb.setups`` builds the data and caches runs.

Every as-published quirk is a field of ``TrainConfig`` with its default stated; ``TrainConfig.original()``
and ``TrainConfig.updated()`` give the article's two code versions.
"""

from __future__ import annotations

import copy
import functools
import itertools
import numbers
import time
from dataclasses import asdict, dataclass, replace
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np
import torch
from torch import nn

from .checks import evaluation_mode, seeded
from .groups import Group
from .kernels import tuned_kernels
from .metrics import top1
from .precision import HalfStorageSGD, apply_clip_precision, parameter_groups
from .progress import counted
from .weighting import default_view_attention, default_weight_net
from .wrappers import NORMALISATIONS, EquiAttention, LambdaEquitune, OrbitWrapper
from .validation import check_choice, check_setting

__all__ = ["TrainConfig", "ViewData", "ImageViewData", "TRAINED_METHODS", "weight_net_for", "weighted_model",
           "model_device", "batch_schedule", "extract_view_features", "features", "predict",
           "evaluate", "finetuned_part", "set_finetune_precision", "snapshot", "parameter_drift", "group_drift",
           "reset_groups", "prefinetune", "finetune", "finetune_state", "train_step_loss"]

Tensor = torch.Tensor

_CHOICES = {
    "lambda_input": ("trainable", "frozen_copy"),
    "finetune_params": ("backbone", "backbone+lambda"),
    "data_order": ("restart", "shuffle"),
    "selection": ("train_first_batches", "heldout"),
    "param_dtype": ("clip_fp16", "fp32"),
    "trunk_mode": ("eval", "train"),
    "normalisation": NORMALISATIONS,
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
        output_softmax: as published in the original code: mean of per-view *probabilities*, then
            cross-entropy (a double softmax). Updated code: False. (The wrappers' option of the same name.)
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
        param_dtype: ``"clip_fp16"`` (as published: CLIP's precision, ``equinb.precision``: convolution,
            linear and attention weights in fp16, updated in place by SGD so that updates below half their fp16
            spacing are lost; norms, embeddings and the lambda network in fp32; on a CPU the fp16 weights are
            stored as fp16 values in fp32 tensors) or ``"fp32"`` (every update kept).
        trunk_mode: ``"eval"`` (as published: CLIP is built in evaluation mode and the article's code never
            switches it, so BatchNorm keeps its running statistics) or ``"train"`` (BatchNorm re-estimates
            them from each finetuning batch).
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
    output_softmax: bool = False
    lambda_input: str = "trainable"
    finetune_params: str = "backbone+lambda"
    data_order: str = "restart"
    selection: str = "train_first_batches"
    selection_batches: int = 50
    dropout_in_eval: bool = True
    param_dtype: str = "clip_fp16"
    trunk_mode: str = "eval"
    logit_factor: float = 1.0
    normalisation: str = "none"
    seed: int = 0

    def __post_init__(self) -> None:
        for name, valid in _CHOICES.items():
            check_setting(f"TrainConfig.{name}", getattr(self, name), valid)
        # counts must be integers (int() would take 2.5 or "32" and fail later, inside a loop)
        for name, least in (("prefinetune_rounds", 0), ("prefinetune_steps", 0), ("finetune_rounds", 0),
                            ("finetune_steps", 0), ("batch_size", 1), ("selection_batches", 1)):
            value = getattr(self, name)
            if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < least:
                raise ValueError(f"TrainConfig.{name} must be an integer >= {least}, got {value!r}")
        for name in ("prelr", "lr", "momentum"):
            value = getattr(self, name)
            if not isinstance(value, numbers.Real) or isinstance(value, bool) or not value >= 0:
                raise ValueError(f"TrainConfig.{name} must be a number >= 0, got {value!r}")
        if not isinstance(self.logit_factor, numbers.Real) or isinstance(self.logit_factor, bool) or \
                not self.logit_factor > 0:
            raise ValueError(f"TrainConfig.logit_factor must be a number > 0, got {self.logit_factor!r}")
        # numpy's generators (data order) take seeds in [0, 2**32)
        if not isinstance(self.seed, numbers.Integral) or isinstance(self.seed, bool) or not 0 <= self.seed < 2**32:
            raise ValueError(f"TrainConfig.seed must be an integer in [0, 2**32), got {self.seed!r}")

    @property
    def selection_limit(self) -> int | None:
        """How many batches of the selection set an evaluation reads: the first ``selection_batches`` as published
        (of the training set), None (all of a held-out split) otherwise."""
        return self.selection_batches if self.selection == "train_first_batches" else None

    @classmethod
    def original(cls, **overrides: Any) -> "TrainConfig":
        """The article's "original code": double softmax, frozen-copy lambda input, lr 5e-7, backbone only."""
        return replace(cls(output_softmax=True, lambda_input="frozen_copy", finetune_params="backbone", lr=5e-7),
                       **overrides)

    @classmethod
    def updated(cls, **overrides: Any) -> "TrainConfig":
        """The article's "updated code": no softmax, trainable lambda input, lr 5e-8, backbone + lambda."""
        return replace(cls(), **overrides)

    def as_dict(self) -> dict:
        """Every field by name: what a run's cache key and its record hold."""
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
        """Inputs of ``index`` after the random group element ``element``: view j of g x is view j*g of x.
        Shapes: index [B] -> (views [B, G, ...], labels [B])."""
        views = self.inputs[index]
        if element:
            views = views[:, group.view_permutation(element)]
        return views, self.labels[index]

    def restrict(self, group: Group, columns: list[int]) -> "ViewData":
        """The same data on a subgroup whose elements are the views ``columns`` (rot180 = views 0, 2 of rot90).
        Shapes: inputs [N, G, ...] -> [N, len(columns), ...]."""
        return ViewData(self.inputs[:, columns], self.labels)

    def subset(self, index: Tensor, labels: Tensor | None = None) -> "ViewData":
        """The images ``index``, with new ``labels`` if given (a relabelled class subset).
        Shapes: index [M], labels [M] -> inputs [M, G, ...], labels [M]."""
        return ViewData(self.inputs[index], self.labels[index] if labels is None else labels)


class ImageViewData(ViewData):
    """Per-view inputs built on the fly from images: ``batch`` returns the orbit of the (transformed) images.

    For data too large to hold as views (CIFAR100 at 224 px). ``prepare`` maps a raw image batch to the
    backbone's input (e.g. resize and normalise on the GPU). Shapes: images [N, ...] (raw, e.g. uint8
    [N, H, W, 3]; without ``prepare`` already the backbone's [N, C, H, W]) -> views [B, G, C, H, W].
    """

    def __init__(self, images: Tensor, labels: Tensor, group: Group,
                 prepare: Callable[[Tensor], Tensor] | None = None) -> None:
        if images.ndim != 4 or images.shape[0] != labels.shape[0]:
            raise ValueError(f"ImageViewData needs a 4-d image batch [N, ...] (what prepare takes, e.g. uint8 "
                             f"[N, H, W, 3]) and labels [N]; got images {tuple(images.shape)}, labels "
                             f"{tuple(labels.shape)}")
        self.inputs, self.labels, self.group, self.prepare = images, labels, group, prepare

    def restrict(self, group: Group, columns: list[int]) -> "ImageViewData":
        """The same images on ``group``, whose elements must be this data's views ``columns`` (the orbit is built
        from the group, so a mismatch would give other views than the cached path's ``inputs[:, columns]``)."""
        expected = tuple(self.group.elements[c] for c in columns)
        if tuple(group.elements) != expected:
            raise ValueError(f"restrict: {group.name}'s elements {group.elements} are not views {columns} of "
                             f"{self.group.name} {expected}")
        return ImageViewData(self.inputs, self.labels, group, self.prepare)

    def subset(self, index: Tensor, labels: Tensor | None = None) -> "ImageViewData":
        return ImageViewData(self.inputs[index], self.labels[index] if labels is None else labels, self.group,
                             self.prepare)

    def batch(self, index: Tensor, element: int | None = None, group: Group | None = None) -> tuple[Tensor, Tensor]:
        # images held on a GPU are indexed there; a CPU index would be copied with a wait for the GPU per step
        x = self.inputs[index.to(self.inputs.device, non_blocking=True)]
        x = self.prepare(x) if self.prepare is not None else x
        if element:
            x = self.group.act(x, element)
        return self.group.orbit(x), self.labels[index]


TRAINED_METHODS = ("lambda_equitune", "equiattention")


def _check_method(method: str) -> None:
    check_choice(method, TRAINED_METHODS, "method")


def weight_net_for(method: str, view_shape: tuple[int, ...]) -> nn.Module:
    """The article's weighting module of ``method`` for views of ``view_shape`` (one view: [D] or [C, h, w]).

    ``"lambda_equitune"``: ``EmbeddingWeightNet(D)`` or ``FeatureMapWeightNet(C, (h, w))``
    (``equinb.weighting.default_weight_net``); ``"equiattention"``: ``ViewAttention`` of the same view shape
    (``default_view_attention``). The article's sizes for any D or C, h, w.
    """
    _check_method(method)
    return (default_view_attention if method == "equiattention" else default_weight_net)(view_shape)


def weighted_model(trunk: nn.Module, weight_net: nn.Module, head: nn.Module, group: Group, config: TrainConfig,
                   *, method: str = "lambda_equitune", align_views: bool = False,
                   normalise_views: bool = True) -> LambdaEquitune | EquiAttention:
    """The wrapper that training runs: ``trunk`` on per-view inputs, ``weight_net``, the fixed ``head``.

    Embedding level (``normalise_views``, the invariant lambda-equitune): views are L2-normalised
    embeddings; ``normalisation="none"`` in the invariant code. Feature-map level (``normalise_views=False``):
    the trunk gives maps [C, h, w]; ``method`` ``"lambda_equitune"`` weights them with a feature-map lambda
    network, ``"equiattention"`` with ``ViewAttention``; ``align_views`` maps view k back by ``g_k^-1`` (as
    described) or not (as published). As published, the trunk stays in evaluation mode (BatchNorm keeps
    its running statistics; ``trunk_mode``) and the lambda network's dropout stays on in evaluation
    (``dropout_in_eval``). A head whose pool finetuning trains (``PooledHead(finetune_pool=True)``) is copied:
    each model finetunes its own pool, and ``head`` stays as it was for the next model.

    Shapes: ``model.forward_views(inputs [B, G, ...])`` -> logits [B, K]; weights [B, G].
    """
    _check_method(method)
    if getattr(head, "finetune_pool", False):  # finetuning trains its pool: this model's own copy
        head = copy.deepcopy(head)
    common = dict(head=head.requires_grad_(False), output_softmax=config.output_softmax,
                  logit_factor=config.logit_factor, align_views=align_views, normalise_views=normalise_views,
                  trunk_eval=config.trunk_mode == "eval")
    if method == "equiattention":
        return EquiAttention(trunk, group, weight_net, **common)
    return LambdaEquitune(trunk, group, weight_net, normalisation=config.normalisation,
                          dropout_in_eval=config.dropout_in_eval, **common)


def model_device(model: nn.Module) -> torch.device:
    """Where a wrapper's views must be: the device of its head's first parameter or buffer, else of the whole
    module's (a head without tensors, such as ``nn.Identity``, follows the trunk); the CPU for a module with none.
    Any other module (a head alone) is read the same way."""
    for module in (getattr(model, "head", None), model):
        if isinstance(module, nn.Module):
            tensor = next(itertools.chain(module.parameters(), module.buffers()), None)
            if tensor is not None:
                return tensor.device
    return torch.device("cpu")


def _on(model: nn.Module, tensor: Tensor | None) -> Tensor | None:
    return None if tensor is None else tensor.to(model_device(model), non_blocking=True)


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
    check_choice(order, ("restart", "shuffle"), "data order")
    gen = torch.Generator().manual_seed(seed)

    def epochs() -> Iterator[Tensor]:
        while True:
            perm = torch.randperm(n, generator=gen)
            yield from (perm[s:s + batch_size] for s in starts)

    stream = epochs()
    return [list(itertools.islice(stream, steps)) for _ in range(rounds)]


@torch.no_grad()
def extract_view_features(trunk: Callable[[Tensor], Tensor], data: ViewData, batch_size: int = 256,
                          device: str | torch.device = "cpu", progress: bool = False,
                          label: str = "frozen features") -> Tensor:
    """Run a frozen trunk once on every view. Shapes: views [N, G, ...] -> outputs [N, G, ...] (CPU).

    ``progress`` draws a bar on standard error; ``label`` names the pass in the progress file's lines
    (``equinb.progress.counted``)."""
    from tqdm import tqdm

    outs = []
    starts = range(0, len(data), batch_size)
    for start in tqdm(counted(starts, label, len(starts)), total=len(starts), desc="features", disable=not progress,
                      ascii=True):
        chunk, _ = data.batch(torch.arange(start, min(start + batch_size, len(data))))
        b, g = chunk.shape[:2]
        out = trunk(chunk.to(device).flatten(0, 1))
        outs.append(out.reshape(b, g, *out.shape[1:]).cpu())
    return torch.cat(outs)


def _draw_elements(n_batches: int, order: int, rng: np.random.RandomState) -> list[int]:
    """The article's random transformation: one group element per batch (``np.random.randint``)."""
    return [int(rng.randint(0, order)) for _ in range(n_batches)]


def train_step_loss(model: OrbitWrapper, views: Tensor, labels: Tensor,
                    weight_views: Tensor | None = None) -> Tensor:
    """Cross-entropy of one batch from computed views (``output_softmax``: the article's CE applied to
    probabilities). ``weight_views``: what the weighting sees (default: the views).

    Shapes: views [B, G, ...], labels [B], weight_views [B, G, ...] -> loss [] (a scalar).
    """
    logits = model.forward_views(views=_on(model, views), weight_views=_on(model, weight_views))
    return nn.functional.cross_entropy(logits, labels.to(logits.device, non_blocking=True))


def features(model: OrbitWrapper, inputs: Tensor) -> Tensor:
    """The trunk's views of per-view inputs on the model's device. Shapes: [B, G, ...] -> [B, G, ...]."""
    return model.view_outputs(_on(model, inputs))


def predict(model: OrbitWrapper, data: ViewData, batch_size: int = 256, feats: Tensor | None = None,
            lambda_feats: Tensor | None = None, max_batches: int | None = None, seed: int = 0,
            data_are_features: bool = False) -> Tensor:
    """Predicted classes (of every item, or of the first ``max_batches`` batches) in eval mode; see ``evaluate``.
    Shapes: data's views [N, G, ...] (or ``feats``) -> predictions [N] (long).

    The lambda network's dropout stays on if ``dropout_in_eval``; it is seeded, so the same weights and
    seed give the same predictions (the paired comparisons of ``equinb.verdicts`` rely on this).
    """
    predictions = []
    # every device's generator is saved and restored: manual_seed reseeds CUDA's too, and training's dropout
    # continues from it after each evaluation
    with evaluation_mode(model), torch.no_grad(), seeded(seed):
        for i, start in enumerate(range(0, len(data), batch_size)):
            if max_batches is not None and i >= max_batches:
                break
            index = torch.arange(start, min(start + batch_size, len(data)))
            if feats is not None:  # cached views: the data's own batch (an orbit of images) is not needed
                f = feats[index]
            else:
                views, _ = data.batch(index)
                f = views if data_are_features else features(model, views)
            weight_views = None if lambda_feats is None else _on(model, lambda_feats[index])
            predictions.append(model.forward_views(views=_on(model, f), weight_views=weight_views).argmax(-1).cpu())
    return torch.cat(predictions) if predictions else torch.zeros(0, dtype=torch.long)


def evaluate(model: OrbitWrapper, data: ViewData, batch_size: int = 256, feats: Tensor | None = None,
             lambda_feats: Tensor | None = None, max_batches: int | None = None, seed: int = 0,
             data_are_features: bool = False) -> float:
    """Top-1 accuracy (%) in eval mode (the lambda network's dropout stays on if ``dropout_in_eval``).

    ``feats``: the frozen trunk's cached views of ``data`` (normalised embeddings [N, G, D] or feature maps
    [N, G, C, h, w]); else the trunk runs, unless ``data_are_features`` (the batches of ``data`` already are
    the trunk's views).
    ``lambda_feats``: what lambda sees (the frozen copy's cached features); default: the features.
    ``max_batches``: only the first batches (the article's selection set). Seeded for the dropout.
    """
    predicted = predict(model, data, batch_size, feats, lambda_feats, max_batches, seed, data_are_features)
    return top1(predicted, data.labels[:len(predicted)])


def finetuned_part(model: OrbitWrapper) -> nn.Module:
    """What finetuning trains besides the weighting module: the trunk, or, where the head's pooling module is
    finetuned too (``equinb.heads.PooledHead(finetune_pool=True)``: CLIP's attnpool at the feature-map level, which
    the article's code trains with the rest of the image encoder), both in one container (``trunk.*``, ``pool.*``).
    Precision, drift and the ablations of a run all read this one module."""
    head = model.head
    if head is None or not getattr(head, "finetune_pool", False):
        return model.trunk
    return nn.ModuleDict({"trunk": model.trunk, "pool": head.pool})


def set_finetune_precision(model: OrbitWrapper, config: TrainConfig) -> tuple[list[str], bool]:
    """Give the finetuned part (``finetuned_part``: the trunk, with CLIP's attnpool where the head trains it) the
    parameter dtypes that finetuning updates, before it starts.

    ``"clip_fp16"``: CLIP's rule (``equinb.precision.apply_clip_precision``): real fp16 on CUDA, as the article
    ran; on any other device fp16 values held in fp32 (``emulated``), because fp16 arithmetic on a CPU is many
    times slower. ``"fp32"``: every parameter fp32 (an fp16 CLIP is cast up, so every update is kept).
    Returns the names of its fp16 parameters and whether they are emulated. Idempotent.
    """
    part = finetuned_part(model)
    if config.param_dtype == "fp32":
        part.float()
        return [], False
    emulated = model_device(model).type != "cuda"
    return apply_clip_precision(part, emulate=emulated), emulated


def snapshot(module: nn.Module) -> dict[str, Tensor]:
    """Copies of a module's parameters and floating-point buffers (``{name: tensor}``), to measure what training
    changed and to undo it group by group."""
    return {name: t.detach().clone() for name, t in module.state_dict(keep_vars=True).items()
            if isinstance(t, Tensor) and t.is_floating_point()}  # a wrapper's "_extra_state" is no tensor


def parameter_drift(before: dict[str, Tensor], module: nn.Module) -> list[dict]:
    """What training changed in ``module`` since ``snapshot`` ``before``: per tensor (parameters and BatchNorm
    statistics) its group (``equinb.precision.parameter_groups``), entries, norm before, the share of entries
    that changed at all, and the relative change ``||w - w0|| / ||w0||``."""
    groups = parameter_groups(module)
    now = module.state_dict(keep_vars=True)
    rows = []
    for name, old in before.items():
        if name not in now or name not in groups:
            continue
        old, new = old.float(), now[name].detach().float()
        norm, change = float(old.norm()), float((new - old).norm())
        rows.append(dict(parameter=name, group=groups[name], entries=old.numel(), norm=norm,
                         changed_share=float((new != old).float().mean()),
                         relative_change=change / norm if norm > 0 else change))
    return rows


def group_drift(drift: list[dict]) -> dict[str, dict[str, float]]:
    """``parameter_drift`` rows summed per group (and over all groups, key ``"all"``): the share of entries that
    changed and the relative change of the group's tensors together, ``||w - w0|| / ||w0||``."""
    out = {}
    for group in [*dict.fromkeys(d["group"] for d in drift), "all"]:
        rows = [d for d in drift if group in ("all", d["group"])]
        entries = sum(d["entries"] for d in rows)
        norm2 = sum(d["norm"] ** 2 for d in rows)
        out[group] = dict(entries=entries,
                          changed_share=sum(d["changed_share"] * d["entries"] for d in rows) / max(entries, 1),
                          relative_change=float(np.sqrt(sum(d["relative_change"] ** 2 * d["norm"] ** 2 for d in rows)
                                                        / max(norm2, 1e-30))))
    return out


@torch.no_grad()
def reset_groups(module: nn.Module, before: dict[str, Tensor], groups: Sequence[str]) -> dict[str, Tensor]:
    """Put the tensors of ``groups`` back to their values in ``before``; returns what they held, so that
    ``reset_groups(module, returned, groups)`` undoes it."""
    labels = parameter_groups(module)
    state = module.state_dict(keep_vars=True)
    saved = {}
    for name, old in before.items():
        if labels.get(name) in groups and name in state:
            saved[name] = state[name].detach().clone()
            state[name].copy_(old)
    return saved


def _sgd(params: Iterable[nn.Parameter], lr: float, momentum: float) -> torch.optim.SGD | None:
    trainable = [p for p in params if p.requires_grad]
    return torch.optim.SGD(trainable, lr=lr, momentum=momentum) if trainable else None


def _loss_rows(stage: str, round_index: int, first_step: int, losses: list[Tensor]) -> list[dict]:
    """History rows of one round's step losses, read from the device once per round (a ``.item()`` per step
    would make the host wait for the GPU at every step)."""
    values = torch.stack(losses).float().tolist() if losses else []
    return [dict(stage=stage, round=round_index, step=first_step + i + 1, loss=v) for i, v in enumerate(values)]


def _clock_row(clock: list[dict] | None, stage: str, round_index: int, steps: int, seconds: float,
               evaluation_seconds: float, warm: bool) -> None:
    """Append one round's wall times to ``clock`` (when given): its training steps, from the first step until
    their losses are read (which waits for the device), and its evaluation (selection before a prefinetune round,
    the test set after a finetune round). ``warm``: False for the first round a call trains (a resumed run's
    first round too), which also pays for warming up. ``tools/paper_smoke.py`` turns warm rounds into rates."""
    if clock is not None:
        clock.append(dict(stage=stage, round=round_index, steps=steps, seconds=seconds,
                          evaluation_seconds=evaluation_seconds, warm=warm))


def _train_round(model: OrbitWrapper, batches: Sequence[Tensor], rng: np.random.RandomState,
                 optimisers: Sequence[torch.optim.Optimizer],
                 step_inputs: Callable[[Tensor, int], tuple[Tensor, Tensor, Tensor]]) -> list[Tensor]:
    """One round of SGD steps, both stages' loop: per batch of indices, a group element drawn from ``rng`` permutes
    the views; ``step_inputs(index, element)`` gives the views, labels and the weighting network's input; the
    losses stay on the device (detached), so no step waits for the host."""
    losses = []
    for index, element in zip(batches, _draw_elements(len(batches), model.group.order, rng)):
        views, labels, weight_views = step_inputs(index, element)
        loss = train_step_loss(model, views, labels, weight_views=weight_views)
        for opt in optimisers:
            opt.zero_grad(set_to_none=True)
        loss.backward()
        for opt in optimisers:
            opt.step()
        losses.append(loss.detach())
    return losses


def prefinetune(model: OrbitWrapper, train: ViewData, select: ViewData, config: TrainConfig,
                progress: bool = False, clock: list[dict] | None = None) -> tuple[dict, list[dict]]:
    """Train only the lambda network on cached per-view features; keep the best by selection accuracy.

    ``train`` and ``select`` yield the frozen trunk's views [B, G, ...] (normalised embeddings [B, G, D], or
    feature maps [B, G, C, h, w] as they come): the backbone is frozen here, so they are
    cached (``ViewData(feats, labels)``); a random group element per batch permutes the views exactly as
    the full forward would. As published, the selection accuracy is computed *before* each round, so the
    last round's training is never eligible.

    Returns the best lambda-network state and a tidy history (round, step, loss, select_top1). ``clock``: a list
    that receives one ``_clock_row`` per round (wall times; kept out of the history, which is deterministic).
    """
    from tqdm import tqdm

    with seeded(config.seed):  # the caller's generators as they were afterwards
        rng = np.random.RandomState(config.seed)
        opt = _sgd(model.weight_net.parameters(), config.prelr, config.momentum)

        def prefinetune_inputs(index: Tensor, element: int) -> tuple[Tensor, Tensor, Tensor]:
            feats, labels = train.batch(index, element, model.group)
            feats = _on(model, feats)  # one copy to the device: the same tensor is the views and the weights' input
            return feats, labels, feats

        schedule = batch_schedule(len(train), config.batch_size, config.prefinetune_rounds,
                                  config.prefinetune_steps, config.data_order, config.seed)
        best, best_state, history, step = -1.0, copy.deepcopy(model.weight_net.state_dict()), [], 0
        for r, batches in enumerate(tqdm(schedule, desc="prefinetune", disable=not progress, ascii=True)):
            began = time.perf_counter()
            acc = evaluate(model, select, config.batch_size, max_batches=config.selection_limit, seed=config.seed + r,
                           data_are_features=True)
            evaluated = time.perf_counter()
            history.append(dict(stage="prefinetune", round=r, step=step, select_top1=acc))
            if acc > best:
                best, best_state = acc, copy.deepcopy(model.weight_net.state_dict())
            model.train()
            losses = _train_round(model, batches, rng, [opt], prefinetune_inputs)
            history += _loss_rows("prefinetune", r, step, losses)
            step += len(losses)
            _clock_row(clock, "prefinetune", r, len(losses), time.perf_counter() - evaluated, evaluated - began, r > 0)
        return best_state, history


def finetune(model: OrbitWrapper, train: ViewData, test: ViewData, config: TrainConfig,
             train_lambda_feats: Tensor | None = None, test_lambda_feats: Tensor | None = None,
             progress: bool = False, clock: list[dict] | None = None, *,
             resume: dict | None = None,
             checkpoint: Callable[[Callable[[], dict]], None] | None = None) -> tuple[list[dict], Tensor | None]:
    """Finetune the trunk (``finetuned_part``: with CLIP's attnpool where the head trains it; and the lambda
    network for ``backbone+lambda``) with the full forward.

    The pool of a ``PooledHead(finetune_pool=True)`` is the model's own copy (``weighted_model`` makes it), so the
    setup's pool stays as it was for every later run.

    ``*_lambda_feats``: cached features of the frozen copy [N, G, D] that feed lambda when
    ``lambda_input="frozen_copy"`` (the frozen copy never changes, so caching it is exact).
    The trunk's weights take the precision of ``config.param_dtype`` first (``set_finetune_precision``); fp16
    values emulated in fp32 are stepped by ``HalfStorageSGD``, every other parameter by plain SGD (PyTorch's
    default, ``foreach`` on CUDA, as the article's code). On CUDA the trunk runs with cuDNN's autotuner and
    channels-last weights (``equinb.kernels``; no change on a CPU).

    Returns a tidy history (stage, round, step, loss, test_top1) and the predicted test classes [N_test] of
    the last evaluation (None when no round ran). ``clock``: as in ``prefinetune``.

    ``checkpoint``: called after every round with a function of no arguments that captures, as copies, what the
    rest of the run needs (``finetune_state``); the caller decides whether to call and save it. ``resume``: such a
    state, of the same model, configuration and data; the run goes on from the round after it and ends with the
    same weights, history and predictions as a run that was never stopped (the trained part, the weighting
    module, the optimisers' momenta and every random generator the rounds draw from are restored): bit for bit on
    a CPU; on a GPU as closely as two unstopped runs agree (cuDNN's autotuned kernels may sum in another order).
    """
    from tqdm import tqdm

    if config.lambda_input == "frozen_copy" and (train_lambda_feats is None or test_lambda_feats is None):
        raise ValueError("lambda_input='frozen_copy' needs the frozen copy's cached features "
                         "(train_lambda_feats and test_lambda_feats)")
    half, emulated = set_finetune_precision(model, config)
    part = finetuned_part(model)
    if part is not model.trunk:  # the run's own copy of the head's pool trains from here on
        part["pool"].requires_grad_(True)
    with seeded(config.seed):  # restored below for a resumed run; the caller's kept
        rng = np.random.RandomState(config.seed + 1)
        stored_half = [p for name, p in part.named_parameters() if emulated and name in half]
        params = [p for p in part.parameters() if not any(p is q for q in stored_half)]
        if config.finetune_params == "backbone+lambda":
            params += list(model.weight_net.parameters())
        optimisers = [opt for opt in (_sgd(params, config.lr, config.momentum),
                                      HalfStorageSGD(stored_half, config.lr, config.momentum) if stored_half else None)
                      if opt is not None]
        schedule = batch_schedule(len(train), config.batch_size, config.finetune_rounds, config.finetune_steps,
                                  config.data_order, config.seed)
        history, step, predicted, first = [], 0, None, 0
        if resume is not None:
            first, step, history, predicted = _restore_finetune(resume, model, optimisers, rng, len(schedule))

        def finetune_inputs(index: Tensor, element: int) -> tuple[Tensor, Tensor, Tensor]:
            views, labels = train.batch(index, element, model.group)
            lam = None
            if train_lambda_feats is not None and config.lambda_input == "frozen_copy":
                lam = ViewData(train_lambda_feats, train.labels).batch(index, element, model.group)[0]
            feats = features(model, views)
            return feats, labels, feats if lam is None else lam
        with tuned_kernels(model.trunk, model_device(model)):
            for r, batches in enumerate(tqdm(schedule, desc="finetune", disable=not progress, ascii=True)):
                if r < first:  # trained before the run was stopped: restored above
                    continue
                began = time.perf_counter()
                model.train()
                losses = _train_round(model, batches, rng, optimisers, finetune_inputs)
                history += _loss_rows("finetune", r, step, losses)
                step += len(losses)
                trained = time.perf_counter()
                frozen = test_lambda_feats if config.lambda_input == "frozen_copy" else None
                predicted = predict(model, test, lambda_feats=frozen, seed=config.seed)
                history.append(dict(stage="finetune", round=r, step=step, test_top1=top1(predicted, test.labels)))
                _clock_row(clock, "finetune", r, len(losses), trained - began, time.perf_counter() - trained, r > first)
                if checkpoint is not None:
                    checkpoint(functools.partial(finetune_state, model, optimisers, rng, r + 1, step, history,
                                                 predicted))
        return history, predicted


def _numpy_state(rng: np.random.RandomState) -> dict:
    """``rng``'s Mersenne Twister state in types a weights-only load reads (no numpy arrays)."""
    _, keys, position, has_gauss, gauss = rng.get_state(legacy=True)
    return dict(keys=torch.from_numpy(keys.astype(np.int64)), position=int(position), has_gauss=int(has_gauss),
                gauss=float(gauss))


def finetune_state(model: OrbitWrapper, optimisers: Sequence[torch.optim.Optimizer], rng: np.random.RandomState,
                   next_round: int, step: int, history: list[dict], predicted: Tensor | None) -> dict:
    """Copies of what finetuning needs to go on from round ``next_round`` (``finetune(resume=...)``): the trained part
    and the weighting module, the optimisers' states, the random generators (torch's on the CPU and on the model's
    CUDA device, and the per-batch group elements' numpy generator), the step count, the history and the last
    predictions. Copies, because training goes on changing the live tensors in place."""
    device = model_device(model)
    generators = dict(torch=torch.get_rng_state(), numpy=_numpy_state(rng))
    if device.type == "cuda":
        generators["cuda"] = torch.cuda.get_rng_state(device)
    return copy.deepcopy(dict(next_round=next_round, step=step, history=history, predicted=predicted,
                              part=finetuned_part(model).state_dict(), weight_net=model.weight_net.state_dict(),
                              optimisers=[opt.state_dict() for opt in optimisers], generators=generators))


def _restore_finetune(state: dict, model: OrbitWrapper, optimisers: Sequence[torch.optim.Optimizer],
                      rng: np.random.RandomState, rounds: int) -> tuple[int, int, list[dict], Tensor | None]:
    """Load ``finetune_state``'s copies into the model, the optimisers and the generators; returns the first round
    to train, the step count, the history so far and the last predictions."""
    if not 0 < state["next_round"] <= rounds or len(state["optimisers"]) != len(optimisers):
        raise ValueError(f"cannot resume finetuning: the state is of round {state['next_round'] - 1} with "
                         f"{len(state['optimisers'])} optimisers, this run has {rounds} rounds and {len(optimisers)}")
    finetuned_part(model).load_state_dict(state["part"])
    model.weight_net.load_state_dict(state["weight_net"])
    for opt, saved in zip(optimisers, state["optimisers"]):
        opt.load_state_dict(copy.deepcopy(saved))  # SGD would step the state's own momentum buffers in place
    generators = state["generators"]
    torch.set_rng_state(generators["torch"])
    device = model_device(model)
    if device.type == "cuda" and "cuda" in generators:
        torch.cuda.set_rng_state(generators["cuda"], device)
    numpy = generators["numpy"]
    rng.set_state(("MT19937", numpy["keys"].numpy().astype(np.uint32), numpy["position"], numpy["has_gauss"],
                   numpy["gauss"]))
    return state["next_round"], state["step"], list(state["history"]), state["predicted"]
