"""Make any model invariant (or, with aligned feature maps, equivariant) to a finite group.

Every wrapper runs the same pipeline (one orbit pass; the weights come from the *unaligned* views,
so that they permute with the views when the input is transformed):

    x [B, C, H, W] -> orbit [B, G, C, H, W] -> trunk per view -> views V [B, G, ...]
      -> view weights w [B, G] (method-specific)
      -> values U_k = g_k^-1 V_k if align_views else V_k
      -> out = logit_factor * head( sum_k w_k U_k )                         (default)
         out = sum_k w_k softmax(logit_factor * head(U_k))                  (output_softmax=True)

Methods:
  - ``Equitune``: w_k = 1/G  (Basu et al. eq. 2: M_G(x) = 1/|G| sum_g g^-1 M(g x)).
  - ``EquiZero``: w = one-hot on the view chosen by a proxy (Basu et al. eq. 4).
  - ``LambdaEquitune``: w_k = lambda(V_k) / normaliser (Basu et al. eq. 6); normalisation
    ``sum`` (article text), ``softmax`` (the feature-map code) or ``none`` (the invariant code: lambda
    is a raw per-view factor on the features, then a plain mean).
  - ``EquiAttention``: w = column means of the attention between views (Vlasenko et al. sec. 4.3).

Levels (one code path; the trunk decides):
  - simplest contract: ``Wrapper(model, group)`` with ``model`` mapping [B, C, H, W] -> [B, K];
    the views are the outputs and the head is the identity.
  - embedding level: ``trunk`` maps images to embeddings [B, D], ``head`` maps [B, D] -> [B, K].
  - feature-map level: ``trunk`` maps images to maps [B, C, h, w], ``head`` maps them to [B, K];
    ``align_views=True`` is the method as described (Z = sum_k w_k g_k^-1 M1(g_k x) is equivariant),
    ``align_views=False`` is the method as published (the article's inverse rotation is a no-op, so Z
    is exactly invariant).

Call ``wrapper(x)`` for outputs [B, K], or ``wrapper(x, return_weights=True)`` for
``(outputs, weights [B, G])``, the per-view weights or selections used for plots.

Options every wrapper takes:
  - ``group``: a ``Group`` or its name (``"rot90"``, any case; ``"flip"`` is the article's name for ``rot180``).
  - ``output``: which tensor of the model's output to use when it returns a dict, tuple, namedtuple or an
    object with ``.logits`` (``equinb.outputs``); checked on a first one-image forward, before the orbit pass.
  - ``chunk_size``: at most this many trunk images per forward on the image path (``wrapper(x)``,
    ``views(x)``): whole orbits when a chunk holds at least one (``chunk_size // |G|`` orbits), else pieces of
    one image's orbit. ``"auto"`` (default): on a CPU with the trunk in evaluation mode, about
    ``CPU_CHUNK_PIXELS`` input pixels per forward (4 images of 224 px, 49 of 64 px), because a CPU computes a
    large batch more slowly per image (its activations leave the cache); one batched pass on a GPU, and while
    the trunk trains (BatchNorm's batch statistics would otherwise come from each chunk). ``None``: one
    batched pass. In evaluation mode the results equal one pass's up to float rounding.
    ``bench/own_model.py`` times it against a plain loop and ttach.

Compilation: ``torch.compile``, ``torch.jit.trace`` and ``torch.export`` work on a wrapper (``tests/``);
``torch.jit.script`` is not supported (the wrappers take groups, selectors and callables that TorchScript
cannot type) and raises a ``TypeError`` that says so.

``wrapper.forward_views`` runs the same pipeline from per-view inputs [B, G, ...] (the orbit of images,
or the cached output of a frozen prefix of the trunk) or from already computed views: the training engine
and the zero-shot evaluation use it on cached tensors, so every result of the book goes through these
classes.
"""

from __future__ import annotations

import contextlib
import math
import numbers
from typing import Any, Callable, Iterator, Union

import torch
from torch import nn

from .checks import (channels_last_hint, channels_last_maps_hint, check_group_images, device_elsewhere,
                     evaluation_mode, modes_restored, training_modules, warn_at_caller)
from .groups import Group, TokenPermutationGroup, get_group
from .outputs import OutputSelector, check_selector, select_output
from .precision import full_precision, parameter_dtype
from .weighting import default_view_attention, default_weight_net
from .validation import check_choice, check_flag

__all__ = [
    "OrbitWrapper",
    "WrapperMismatchWarning",
    "SAVED_FORMAT",
    "Equitune",
    "EquiZero",
    "LambdaEquitune",
    "EquiAttention",
    "PROXIES",
    "NORMALISATIONS",
    "CPU_CHUNK_PIXELS",
    "proxy_scores",
    "normalise_weights",
]

Tensor = torch.Tensor


def _entropy_score(logits: Tensor) -> Tensor:
    """Minus the entropy (higher is more confident), in float64 where the device has it: in float32 the smaller
    probabilities of a confident view underflow to 0 once the top logit leads by about 100, its entropy rounds to
    exactly 0, and confident views would tie. Shapes: [..., K] -> [...]."""
    logp = torch.log_softmax(logits.double() if logits.device.type != "mps" else logits.float(), dim=-1)
    return (logp.exp() * logp).sum(dim=-1)


def _max_prob_score(logits: Tensor) -> Tensor:
    """The largest class probability p as its log-odds, ``log(p / (1 - p)) = -logsumexp_{k != top}(z_k - z_top)``:
    the same order of views as p, without p itself, which rounds to exactly 1.0 in float32 once the top logit
    leads by about 17, so that confident views tie and the lowest view index, a different view after a turn,
    would win. Shapes: [..., K] -> [...]."""
    z = full_precision(logits)
    rest = (z - z.amax(dim=-1, keepdim=True)).scatter(-1, z.argmax(dim=-1, keepdim=True), float("-inf"))
    return -torch.logsumexp(rest, dim=-1)  # another class equal to the top keeps its exp(0) = 1: p = 1/2 or less


# Each proxy scores a view from its outputs [..., K]; EquiZero picks the view with the highest score.
PROXIES: dict[str, Callable[[Tensor], Tensor]] = {
    # the article code's choice: the view whose largest class probability is highest (scored by its log-odds)
    "max_prob": _max_prob_score,
    # the lowest predictive entropy (Basu et al.'s entropy proxy)
    "entropy": _entropy_score,
    "max_logit": lambda logits: logits.amax(dim=-1),
}
NORMALISATIONS = ("none", "softmax", "sum")

# Input pixels per trunk forward of ``chunk_size="auto"`` on a CPU: 4 images of 224 px. On the 2-core build
# machine the time per image of MobileNetV2 and resnet18 was lowest near this size (measured at 64, 112 and
# 224 px: 32-64, 16-32 and 4 images per forward); more images per forward leave the cache and run slower per image.
CPU_CHUNK_PIXELS = 4 * 224 * 224
ChunkSize = Union[int, str, None]


def _check_chunk_size(chunk_size: Any) -> ChunkSize:
    """``chunk_size`` checked: None, ``"auto"`` (any case) or an integer >= 1."""
    if chunk_size is None:
        return None
    if isinstance(chunk_size, str) and chunk_size.lower() == "auto":
        return "auto"
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, numbers.Integral) or chunk_size < 1:
        raise ValueError(f"chunk_size must be 'auto', None (one batched pass) or an integer >= 1 (trunk images per "
                         f"forward), got {chunk_size!r}")
    return int(chunk_size)


def _tracing() -> bool:
    """True while torch.jit.trace, torch.compile or torch.export trace the module (no first-call probe then).
    ``torch.compiler.is_compiling`` appeared in torch 2.3, ``is_exporting`` in 2.6; each is asked only where it
    exists, so on torch 2.1-2.2 a ``torch.compile`` trace goes unnoticed here and the probe runs inside it (not
    tested on those releases)."""
    compiler = getattr(torch, "compiler", None)
    return bool(torch.jit.is_tracing() or any(getattr(compiler, name, lambda: False)()
                                              for name in ("is_compiling", "is_exporting")))


def _refuse_unknown_keywords(cls: type, unknown: dict[str, Any]) -> None:
    """A TypeError naming the wrapper class the user called (not the base class that received the keywords), the
    keywords it takes and the closest one to each unknown name."""
    if not unknown:
        return
    import difflib
    import inspect

    valid = sorted({name for klass in cls.__mro__ if "__init__" in vars(klass) and issubclass(klass, OrbitWrapper)
                    for name, p in inspect.signature(klass.__init__).parameters.items()
                    if p.kind is p.KEYWORD_ONLY or (p.kind is p.POSITIONAL_OR_KEYWORD and name != "self")})
    hints = []
    for name in unknown:
        close = difflib.get_close_matches(name, valid, n=1)
        hints.append(f"{name!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
    raise TypeError(f"{cls.__name__}() got unexpected keyword argument{'s' if len(hints) > 1 else ''} "
                    f"{', '.join(hints)}; it takes: {', '.join(valid)}")


def _input_dtype(trunk: nn.Module, inputs: Tensor) -> torch.dtype:
    """The dtype the trunk's first layer reads: the weight of its first convolution or linear layer, else its first
    floating-point parameter, else the input's own. Not simply the first parameter: a mixed-precision model
    registers fp32 tensors before an fp16 first layer (CLIP's ViT keeps ``class_embedding`` in fp32)."""
    for module in trunk.modules():
        if isinstance(module, (nn.modules.conv._ConvNd, nn.Linear)) and module.weight.is_floating_point():
            return module.weight.dtype
    return parameter_dtype(trunk) or inputs.dtype


def _refuse_extra_inputs(wrapper: nn.Module, extra: tuple) -> None:
    """A TypeError for inputs besides the images, which the wrapper would otherwise ignore."""
    if extra:
        raise TypeError(f"{type(wrapper).__name__} takes one input, the images [B, C, H, W], and got {len(extra)} "
                        "more: the group acts on the images alone. Bind the model's other inputs first, e.g. "
                        "functools.partial(model.forward, meta=meta) in a small nn.Module; return_weights is "
                        "keyword-only")


def _short_repr(module: nn.Module | Callable) -> str:
    """One line for ``module`` (a head can be any function) in a message or a wrapper's repr."""
    text = repr(module)
    if "\n" not in text and len(text) <= 100:
        return text
    if not isinstance(module, nn.Module):
        return f"{type(module).__name__} {text.splitlines()[0][:80]}..."
    count = sum(p.numel() for p in module.parameters())
    return f"{type(module).__name__} ({count:,} parameters; print this attribute for its layers)"


def proxy_scores(outputs: Tensor, proxy: str) -> Tensor:
    """Score every view for EquiZero (higher = chosen). Shapes: outputs [B, G, K] -> scores [B, G].

    Refuses outputs that are not class scores [B, G, K] (a map's softmax over its width would give "scores" of
    the wrong shape) and one class score under ``max_prob`` or ``entropy``: a softmax over one logit is 1 for every
    view, so every view would tie and EquiZero would silently be the mean over the views (Equitune)."""
    proxy = check_choice(proxy, PROXIES, "proxy", any_case=True)
    if outputs.ndim != 3:
        raise ValueError(f"EquiZero scores each view by its output's class scores [B, G, K], but the head's "
                         f"per-view outputs have shape {list(outputs.shape)}: give a classifier's logits [B, K] "
                         f"(for a trunk of feature maps, a head= that maps them to logits), or use Equitune, "
                         f"LambdaEquitune or EquiAttention, which combine outputs of any shape")
    if outputs.shape[-1] == 1 and proxy != "max_logit":
        raise ValueError(f"EquiZero with proxy={proxy!r} needs K >= 2 class scores: over one logit the softmax is 1 "
                         f"for every view, so every view ties and EquiZero would be the mean over the views; give "
                         f"two-class logits (output=lambda z: torch.cat([-z, z], -1): the view with the largest |z|, "
                         f"the most confident), or proxy='max_logit' (the view with the largest z, which favours "
                         f"the positive class)")
    return PROXIES[proxy](outputs)


def normalise_weights(raw: Tensor, normalisation: str) -> Tensor:
    """Normalise raw lambda values over the views.

    ``softmax``: softmax over G. ``sum``: lambda / sum(lambda) (the article's text; lambda should be
    positive). ``none``: lambda / G, so that sum_k (lambda_k / G) V_k is the article code's plain
    mean of lambda-scaled views.

    Shapes: raw [B, G] -> weights [B, G].
    """
    check_choice(normalisation, NORMALISATIONS, "normalisation")
    if normalisation == "softmax":
        return torch.softmax(raw, dim=-1)
    if normalisation == "sum":
        return raw / raw.sum(dim=-1, keepdim=True)
    return raw / raw.shape[-1]


def _weighted_sum(values: Tensor, weights: Tensor) -> Tensor:
    """Shapes: values [B, G, ...], weights [B, G] -> [B, ...]."""
    w = weights.to(values.dtype).reshape(*weights.shape, *([1] * (values.ndim - 2)))
    return (w * values).sum(dim=1)


SAVED_FORMAT = 1  # the version of the record a wrapper's state dict keeps under "_extra_state"


# Tokens a vision transformer may put in front of its patches: none, a class token, and registers (Darcet et al.
# 2024 trained 1, 2, 4, 8 and 16 of them; DINOv2 with registers has a class token and 4), with or without the class
# token. Counts above 1 need a grid of at least 4 x 4 patches: a [1, 6, D] output (two in front of 2 x 2?) is more
# likely six heads' scores than tokens, and the warning would be noise.
_TOKEN_PREFIXES = (0, 1, 2, 3, 4, 5, 8, 9, 16, 17)


def patch_token_prefixes(t: int) -> list[int]:
    """The counts of tokens in front of the patches (``_TOKEN_PREFIXES``) that leave ``t`` tokens a square grid of
    patches: at least 2 x 2 behind 0 or 1 of them, 4 x 4 behind more; smallest first, [] for none. 261 gives [5]
    (a class token, 4 registers, 16 x 16 patches), 197 gives [1], 9 gives [0]."""
    return [p for p in _TOKEN_PREFIXES if t - p >= (4 if p <= 1 else 16) and math.isqrt(t - p) ** 2 == t - p]


class WrapperMismatchWarning(UserWarning):
    """Weights loaded into an equinb wrapper built differently from the one that saved them (or saved without the
    record that says how it was built)."""


def _warn_mismatch(message: str) -> None:
    """A ``WrapperMismatchWarning`` at the user's ``load_state_dict`` line (``checks.warn_at_caller``)."""
    warn_at_caller(message, WrapperMismatchWarning)


class OrbitWrapper(nn.Module):
    """Shared pipeline of all wrappers; subclasses define ``view_weights``.

    Args:
        model: the trunk; maps images [N, C, H, W] to outputs, embeddings [N, D] or maps [N, C', h, w].
        group: the group acting on the input images (and on the feature maps when aligning).
        head: maps the combined trunk output to the final output; identity when ``None``.
        align_views: map view k back with g_k^-1 before combining (feature maps only). Default False
            (as published; a no-op in the article's code). True = as described. Left at its default, a wrapper
            whose trunk gives maps (or token sequences [N, T, D]) and that has no head to pool them warns on its
            first call: its output combines the unturned views' maps (tokens), invariant as a whole but with each
            map's content at every turned place (pass ``align_views=False`` to say that is meant).
        output_softmax: apply softmax to each view's head output and combine probabilities (as published
            in the article's zero-shot and "original" code). Default False.
        logit_factor: multiplies the head output (as published: 1.0, i.e. raw cosine similarities).
        normalise_views: L2-normalise each view's trunk output, as CLIP's embeddings are (embedding level).
            Default False.
        trunk_eval: keep the trunk in evaluation mode, from construction on and when the wrapper trains (as
            published: the backbone's BatchNorm keeps its running statistics during finetuning). Default False.
        chunk_size: trunk images per forward on the image path, ``"auto"`` (default), ``None`` (one batched
            pass) or an integer; see the module docstring.
        output: which tensor of the trunk's output is the view (a key, attribute, index or callable; default:
            the tensor itself, or its ``.logits``); see ``equinb.outputs``.

    ``torch.jit.script`` is not supported (use ``torch.jit.trace``, ``torch.export`` or ``torch.compile``).

    Shapes: x [B, C, H, W] -> out [B, K] for a classifier, or [B, C, h, w] for a trunk of feature maps (aligned
    by ``g_k^-1`` only with ``align_views``: equivariant; without it the views are combined as they are, and the
    result is invariant); weights [B, G]. Inputs are cast to the dtype of the trunk's first layer (a float64 batch
    into a float32 model gives float32).
    """

    method = "orbit"  # the method's name in the book's vocabulary (shown by repr)

    def __init__(self, model: nn.Module, group: Group | str, *, head: nn.Module | None = None,
                 align_views: bool | None = None, output_softmax: bool = False, logit_factor: float = 1.0,
                 normalise_views: bool = False, trunk_eval: bool = False, chunk_size: ChunkSize = "auto",
                 output: OutputSelector = None, **unknown: Any) -> None:
        super().__init__()
        _refuse_unknown_keywords(type(self), unknown)
        if not isinstance(model, nn.Module):
            hint = (": wrap a function in a module first (class Model(torch.nn.Module) with forward calling it), so "
                    "that its parameters, device and modes can be found" if callable(model) else "")
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}{hint}")
        if not isinstance(group, (Group, str)):
            hint = ("; a group of token permutations acts on a language model's tokens: use equinb.equilm.EquiLM"
                    if isinstance(group, TokenPermutationGroup) else "")
            raise TypeError(f"group must be an equinb Group or a group name such as 'rot90' (see get_group), "
                            f"got {type(group).__name__}{hint}")
        if head is not None and not callable(head):
            raise TypeError(f"head must be an nn.Module (or a function) mapping the combined views to the output, "
                            f"got {type(head).__name__}")
        if isinstance(head, type):  # head=nn.Linear: calling the class would build a module, not apply one
            raise TypeError(f"head must be a built module (or a function), got the class {head.__name__}; build it "
                            f"first, e.g. head={head.__name__}(...)")
        self.trunk = model
        self.head = head if head is not None else nn.Identity()
        self.group = get_group(group)
        self._align_views_default = align_views is None  # False, but unaligned maps with no head warn
        self.align_views = False if align_views is None else check_flag(align_views, "align_views")
        self.output_softmax = check_flag(output_softmax, "output_softmax")
        if isinstance(logit_factor, torch.Tensor) and logit_factor.numel() == 1:  # clip's logit_scale.exp()
            logit_factor = float(logit_factor)
        if isinstance(logit_factor, bool) or not isinstance(logit_factor, numbers.Real) \
                or not math.isfinite(logit_factor):
            raise TypeError(f"logit_factor must be a finite number (the logits' scale), got {logit_factor!r}")
        if not logit_factor > 0:  # 0 makes every view's softmax uniform (EquiZero then ties every view); < 0 inverts it
            raise ValueError(f"logit_factor must be > 0 (the logits' scale, such as CLIP's 100), got {logit_factor!r}")
        self.logit_factor = float(logit_factor)
        self.normalise_views = check_flag(normalise_views, "normalise_views")
        self.trunk_eval = check_flag(trunk_eval, "trunk_eval")
        self.chunk_size = _check_chunk_size(chunk_size)
        self.output = check_selector(output)
        self._first_call_checked = False
        if self.trunk_eval:  # a new module is in training mode: the trunk must not train until asked to
            self.trunk.eval()

    def _options(self) -> dict[str, Any]:
        """The settings that ``repr`` shows (subclasses add theirs)."""
        return dict(chunk_size=self.chunk_size, output=self.output, align_views=self.align_views,
                    output_softmax=self.output_softmax, logit_factor=self.logit_factor,
                    normalise_views=self.normalise_views, trunk_eval=self.trunk_eval)

    def extra_repr(self) -> str:
        options = ", ".join(f"{k}={v!r}" for k, v in self._options().items())
        return f"group={self.group.name!r} (|G|={self.group.order}), method={self.method!r}, {options}"

    def __repr__(self) -> str:
        """The group, method and options, and one line per submodule (``print(wrapper.trunk)`` shows the trunk)."""
        lines = [f"{type(self).__name__}(", f"  {self.extra_repr()}"]
        lines += [f"  ({name}): {_short_repr(child)}" for name, child in self.named_children()]
        if not isinstance(self.head, nn.Module):  # a function head is no child module
            lines.append(f"  (head): {_short_repr(self.head)}")
        return "\n".join(lines + [")"])

    # What a saved state dict records beside the tensors. The options left out only change how a pass runs (the
    # chunking) or how the trunk trains; a callable output selector is no plain value to save.
    _UNSAVED_OPTIONS = ("chunk_size", "trunk_eval")

    def get_extra_state(self) -> dict[str, Any]:
        """Saved by ``state_dict()`` under ``"_extra_state"`` beside the tensors: the record's format, the wrapper's
        class, its group (name and order) and the options that change what the weights compute, as plain values
        (``torch.load(..., weights_only=True)`` reads them; any other value as its repr), so that a saved file says
        how to rebuild its wrapper."""
        plain = (bool, int, float, str, type(None))
        options = {k: v if isinstance(v, plain) else repr(v)  # a subclass's other values: weights_only reads text
                   for k, v in self._options().items()
                   if k not in self._UNSAVED_OPTIONS and not (k == "output" and callable(v))}
        return dict(format=SAVED_FORMAT, wrapper=type(self).__name__, group=self.group.name, order=self.group.order,
                    options=options)

    def set_extra_state(self, state: Any) -> None:
        """Called by ``load_state_dict`` with the saved record: warns (``WrapperMismatchWarning``) when the weights
        were saved from a wrapper built differently (another class, group or option; they still load, since a trunk
        finetuned under one group and evaluated under another is a valid experiment), and refuses a record that no
        equinb wrapper wrote. Options that only one side knows (another equinb version) are not compared."""
        key = getattr(self, "_loading_key", "_extra_state")
        if (not isinstance(state, dict) or not {"wrapper", "group", "order"} <= set(state)
                or not isinstance(state.get("options"), dict) or not isinstance(state.get("format", 1), int)):
            raise ValueError(f"{type(self).__name__}.load_state_dict: {key!r} is not an equinb wrapper's record (a "
                             f"dict with wrapper, group, order, an options dict and an integer format), got "
                             f"{state!r:.200}")
        if state.get("format", SAVED_FORMAT) > SAVED_FORMAT:
            _warn_mismatch(f"{key!r} was written by a newer equinb (format {state['format']}; this one reads "
                           f"{SAVED_FORMAT}): the group and options were not checked")
            return
        mine = self.get_extra_state()
        pairs = [(k, state[k], mine[k]) for k in ("wrapper", "group", "order")]
        pairs += [(k, state["options"][k], mine["options"][k])
                  for k in sorted(set(state["options"]) & set(mine["options"]))]
        differences = [f"{k}: saved {saved!r}, here {here!r}" for k, saved, here in pairs if saved != here]
        if differences:
            _warn_mismatch(f"{type(self).__name__}.load_state_dict: the weights were saved from a wrapper built "
                           f"differently ({'; '.join(differences)}); they load as saved. Build the wrapper as "
                           f"{key!r} records it unless the change is intended (warnings.simplefilter('error', "
                           f"equinb.WrapperMismatchWarning) makes this an error).")

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, local_metadata: dict, strict: bool,
                              missing_keys: list[str], unexpected_keys: list[str], error_msgs: list[str]) -> None:
        # torch calls set_extra_state without the key's prefix, which the messages name (a nested or compiled
        # wrapper's key is "1._extra_state" or "_orig_mod._extra_state")
        key = prefix + "_extra_state"
        self._loading_key = key
        try:
            super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                          error_msgs)
        finally:
            del self._loading_key
        if key not in state_dict:  # a state dict without the record (filtered to tensors): load, unchecked
            if key in missing_keys:
                missing_keys.remove(key)
            why = self._why_no_record(state_dict, prefix)
            _warn_mismatch(f"{type(self).__name__}.load_state_dict: no {key!r} record{why}, so the group and options "
                           "it was saved with were not checked")

    def _why_no_record(self, state_dict: dict[str, Any], prefix: str) -> str:
        """Why a state dict has no record, in words for the warning: another prefix (a compiled or nested wrapper's
        keys start with ``_orig_mod.`` or ``1.``: strip it), the bare model's weights (keys without ``trunk.``: load
        them into ``wrapper.trunk``), or else a state dict filtered to its tensors or written by other code."""
        elsewhere = sorted(k for k in state_dict if k.endswith("_extra_state"))
        if elsewhere:
            return (f" (there is one under {elsewhere[0]!r}: the keys carry another prefix, such as a compiled "
                    "wrapper's '_orig_mod.'; strip it, or load into the module that saved them)")
        trunk = set(self.trunk.state_dict())
        if trunk and trunk <= {k.removeprefix(prefix) for k in state_dict if k.startswith(prefix)}:
            return (" (its keys are those of the bare model, without 'trunk.': load them with "
                    "wrapper.trunk.load_state_dict(...))")
        return " (a state dict filtered to its tensors, or written by other code)"

    def __prepare_scriptable__(self) -> "OrbitWrapper":
        raise TypeError(f"torch.jit.script does not support equinb's {type(self).__name__} (its groups, output "
                        "selectors and options are Python objects that TorchScript cannot type); use "
                        "torch.jit.trace(wrapper, x), torch.export.export(wrapper, (x,)) or torch.compile(wrapper)")

    def train(self, mode: bool = True) -> "OrbitWrapper":
        super().train(mode)
        if self.trunk_eval:
            self.trunk.eval()
        return self

    def view_outputs(self, inputs: Tensor, trunk: nn.Module | None = None, *,
                     chunk_size: int | None = None) -> Tensor:
        """The trunk on every view in one batched pass (``trunk``: default self.trunk).

        Inputs are cast to the dtype the trunk's first layer reads (``_input_dtype``); half-precision outputs (fp16
        trunks, as CLIP on CUDA) are combined in float32. Outputs are L2-normalised when ``normalise_views``. The
        view is the tensor that ``output`` selects from the trunk's output. ``chunk_size``: forwards of at most that
        many trunk images, whole orbits (``chunk_size // G`` per forward) when one fits, else pieces of one image's
        views; default None, one pass (the wrapper's ``chunk_size`` applies to the image path ``views(x)``, not
        here: the training engine's calls stay one pass).
        Shapes: inputs [B, G, ...] -> views [B, G, ...].
        """
        trunk = trunk if trunk is not None else self.trunk
        b, g = inputs.shape[:2]
        if chunk_size is not None and _check_chunk_size(chunk_size) < b * g:
            if chunk_size >= g:
                return torch.cat([self.view_outputs(part, trunk) for part in inputs.split(chunk_size // g)])
            return torch.cat([torch.cat([self.view_outputs(piece, trunk) for piece in image.split(chunk_size, dim=1)],
                                        dim=1) for image in inputs.split(1)])
        out = select_output(trunk(inputs.flatten(0, 1).to(_input_dtype(trunk, inputs))), self.output)
        if not out.is_floating_point():  # weights of 1/|G| in an integer dtype round to 0: every output would be 0
            raise TypeError(f"{type(self).__name__}: the model returns {str(out.dtype).removeprefix('torch.')} "
                            "outputs; the wrappers combine scores, logits, embeddings or maps, so return those (the "
                            "logits before an argmax, say) and take labels from the wrapper's output")
        if out.ndim == 0 or out.shape[0] != b * g:
            raise ValueError(f"{type(self).__name__}: the model maps {b * g} images to an output of shape "
                             f"{list(out.shape)}, whose first dim is not one per image: it drops the batch dim (a "
                             f".squeeze() at batch size 1?); keep it, e.g. .squeeze(-1), or select the view with "
                             f"output=")
        out = full_precision(out)
        if self.normalise_views:
            if out.ndim != 2:  # dim=-1 of a map [N, C, h, w] is its width: no view would have unit norm
                raise ValueError(f"{type(self).__name__}: normalise_views=True L2-normalises embedding views [B, D]; "
                                 f"this trunk gives views of shape {list(out.shape[1:])}. Normalise inside the "
                                 "trunk along the axis you mean, or set normalise_views=False")
            out = nn.functional.normalize(out, dim=-1)
        return out.reshape(b, g, *out.shape[1:])

    def _check_images(self, x: Tensor) -> None:
        check_group_images(x, self.group, "input")

    def images_per_pass(self, x: Tensor, trunk: nn.Module | None = None) -> int | None:
        """Trunk images per forward on the image path for ``x``, or None for one batched pass.

        ``chunk_size`` itself, or for ``"auto"``: ``CPU_CHUNK_PIXELS // (H * W)`` (at least 1) on a CPU with
        every module of the trunk in evaluation mode, else None (also while tracing, compiling or exporting: one
        graph for every batch size).
        """
        trunk = trunk if trunk is not None else self.trunk
        if self.chunk_size != "auto":
            return self.chunk_size
        # a trunk in eval mode with one block training (BatchNorm frozen but for the last block) is training
        if x.device.type != "cpu" or _tracing() or any(m.training for m in trunk.modules()):
            return None
        return max(1, CPU_CHUNK_PIXELS // max(1, x.shape[-1] * x.shape[-2]))

    def views(self, x: Tensor, trunk: nn.Module | None = None) -> Tensor:
        """Trunk outputs of every transformed copy of x (``view_outputs`` of the orbit), in forwards of at most
        ``images_per_pass`` images: whole orbits when they fit, else pieces of one image's orbit.

        Shapes: x [B, C, H, W] -> views [B, G, ...].
        """
        self._check_images(x)
        if not _tracing():  # every call: a wrapper checked on one device may have moved to another since
            self._check_device(x)
        if trunk is None:
            self.check_first_call(x)
        size = self.images_per_pass(x, trunk)
        if size is None or size >= x.shape[0] * self.group.order:
            return self.view_outputs(self.group.orbit(x), trunk)  # orbit [B, G, C, H, W]
        batchnorm_training = training_modules(trunk if trunk is not None else self.trunk,
                                              nn.modules.batchnorm._BatchNorm)
        if size < self.group.order and batchnorm_training:
            warn_at_caller(f"{type(self).__name__}: chunk_size={size} splits each orbit of {self.group.order} views "
                           "into several forwards while BatchNorm layers of the trunk train: each piece is "
                           "normalised with its own batch statistics, so the output is not invariant. Use a "
                           f"chunk_size of at least {self.group.order} (whole orbits), or trunk_eval=True")
        # the orbit of a few images at a time (never the whole batch's), each in forwards of at most `size` images
        blocks = x.split(max(1, size // self.group.order))
        return torch.cat([self.view_outputs(self.group.orbit(part), trunk, chunk_size=size) for part in blocks])

    def check_first_call(self, x: Tensor) -> None:
        """Run the pipeline once on the first image, in evaluation mode and without gradients, before the first
        orbit pass: a model output that ``output`` cannot select, a trunk that ``align_views`` cannot align, or a
        weighting network of the wrong size fails here with a clear message, after one image instead of |G| x B.
        A wrapper with a weighting network passes the first image's orbit instead (|G| images, one forward), to
        check that its weights roll with the views.

        ``forward`` and ``views`` call it. Runs once per wrapper (skipped while tracing, compiling or exporting),
        and its outputs are thrown away. Module modes are restored; no random numbers are drawn by dropout (it is
        off) and BatchNorm statistics are not updated.
        """
        if _tracing() or self._first_call_checked:  # tracing first: a compiled graph keeps no guard on the flag
            return
        self._check_images(x)
        self._check_device(x)
        if x.shape[0] == 0:
            return
        with modes_restored(self), torch.no_grad():
            for m in self.modules():
                m.training = False
            weight_net = getattr(self, "weight_net", None)
            # one image repeated |G| times, or its orbit (one pass) where learned weights must be seen to roll
            # with the views
            # the model's own error would name the probe's shape, not the caller's batch
            with self._model_failure_named(
                    f"the first call's check, which runs the first image of the batch {tuple(x.shape)} alone (as "
                    f"[1, {', '.join(map(str, x.shape[1:]))}]{'' if weight_net is None else ', or its orbit'}) before "
                    "the orbit pass", images=x):
                probe = x[:1].clone()  # a model that works in place (x.mul_) must not change the caller's images
                if weight_net is None:
                    view = self.view_outputs(probe[:, None])  # [1, 1, ...]
                    views = view.expand(1, self.group.order, *view.shape[2:])
                else:
                    views = self.view_outputs(self.group.orbit(probe))  # [1, G, ...]
            image_size = (int(x.shape[-2]), int(x.shape[-1]))
            self._warn_unaligned_maps(views, self._check_head(views[:, 0]), image_size)
            self._warn_channels_last_maps(views, image_size)
            try:
                weights = self.view_weights(views)
            except (RuntimeError, ValueError) as err:
                if weight_net is None:
                    raise
                raise ValueError(
                    f"{type(self).__name__}: the weighting network {type(weight_net).__name__} does not take "
                    f"this model's views [B, G={self.group.order}, {', '.join(map(str, views.shape[2:]))}] "
                    f"({str(views.dtype).removeprefix('torch.')}): {err}") from err
            self.combine(views, self.checked_weights(weights, views))
            if weight_net is not None:
                self._check_weights_permute(views, weights)
                self._check_weight_sums(weights)
        self._first_call_checked = True

    @contextlib.contextmanager
    def _model_failure_named(self, what: str, images: Tensor | None = None) -> Iterator[None]:
        """A RuntimeError of the model inside the block raised again with the wrapper's name and ``what`` it was
        running (PyTorch's own error names neither), and where ``images`` look channels-last, the permute that fixes
        them; out-of-memory errors pass as they are, since a caller may catch them to shrink its batch."""
        try:
            yield
        except RuntimeError as err:
            if isinstance(err, torch.cuda.OutOfMemoryError):
                raise
            layout = "" if images is None else channels_last_hint(images)
            raise RuntimeError(f"{type(self).__name__}: the model failed on {what}{layout}; check that the images "
                               f"have the channels, size and dtype the model takes: {err}") from err

    def _check_weight_sums(self, raw: Tensor) -> None:
        """A method's rule for the first image's weights [1, G] from its weighting network, beyond permuting with
        the views (``EquiAttention``: they sum to 1). None by default: λ-equitune's may take any sum."""

    def _check_weights_permute(self, views: Tensor, raw: Tensor) -> None:
        """A ValueError when the weighting network's weights do not move with its views: ``raw``, the weights of one
        image's orbit ``views``, must permute as the views do when the image is transformed by each group element
        (``Group.view_permutation``). A network that mixes the views (a Linear over all of them, or one that reads a
        neighbouring view) passes the shape check and breaks invariance silently; every element is tried, since a
        network may move with one permutation of the views (a rotation's) and not with another (a mirror's). Runs
        inside ``check_first_call`` (evaluation mode, no gradients). Shapes: views [1, G, ...], raw [1, G]."""
        g = self.group.order
        if views.device.type == "meta":  # shapes only (a dry run): there are no values to compare
            return
        # NaN would fail the comparison below and blame a weighting network that may be right
        if not bool(torch.isfinite(views).all()):
            raise ValueError(f"{type(self).__name__}: the model's outputs for the first image's views are not finite "
                             "(NaN or inf), so the check that the weighting network's weights move with the views "
                             "cannot run: check that image (x[0]) and the model's parameters (a diverged checkpoint "
                             "holds NaN)")
        if not bool(torch.isfinite(raw).all()):
            raise ValueError(f"{type(self).__name__}: the weighting network {_short_repr(self.weight_net)} gives "
                             "weights that are not finite (NaN or inf) for the first image's views, which are "
                             "finite: check its parameters (a diverged checkpoint holds NaN)")
        dtype = torch.promote_types(raw.dtype, torch.float32)  # compared in their own precision, at least float32
        weights, error, moved_by = raw.to(dtype), 0.0, 0
        for k in range(1, g):
            order = torch.tensor(self.group.view_permutation(k), device=views.device)
            k_error = float((self.view_weights(views[:, order]).to(dtype) - weights[:, order]).abs().max())
            if not k_error <= error:  # the largest, NaN kept
                error, moved_by = k_error, k
        scale = float(weights.abs().max())
        # rounding only, in the coarser of the views' and the weights' precision (attention's column means are summed
        # in another order once the views are permuted: a few units of the last place); NaN fails too
        eps = max(torch.finfo(views.dtype).eps, torch.finfo(raw.dtype).eps)
        if not error <= 64 * eps * max(scale, 1.0):
            raise ValueError(
                f"{type(self).__name__}: the weighting network {_short_repr(self.weight_net)} does not compute each "
                f"view's weight from that view alone: transforming an image by element {moved_by} of {self.group.name} "
                f"permutes its {g} views, and it changed their weights by up to {error:.3g} instead of permuting them "
                f"(largest weight {scale:.3g}), so the output would not be invariant. Compute each view's weight from "
                "that view (the views are dim 1 of [B, G, ...]), or make the weights permute with the views as "
                "ViewAttention does")

    def _warn_channels_last_maps(self, views: Tensor, image_size: tuple[int, int]) -> None:
        """Warn when ``align_views`` would turn back maps that look channels-last [B, G, h, w, C]
        (``checks.channels_last_maps_hint``) under a group without quarter turns: a mirror of the last two dims then
        reverses the channels of each view, which raises nothing, and ``check_equivariance`` applies the same
        action to the outputs, so it would pass. Under quarter turns ``align`` refuses such maps (not square)."""
        layout = channels_last_maps_hint(views, image_size) if self.align_views and views.ndim == 5 else ""
        if layout and not self.group.needs_square:
            warn_at_caller(f"{type(self).__name__}: align_views=True turns each view back by {self.group.name} on "
                           f"the last two dims of the trunk's views [B, G, ...], which {layout}. If the maps are "
                           "[C, h, w] with C == h, this is meant: filter this warning")

    def _warn_unaligned_maps(self, views: Tensor, head_output: Tensor, image_size: tuple[int, int]) -> None:
        """Warn when the output combines unaligned views that keep the input's layout and that the head keeps so,
        with ``align_views`` left at its default: feature maps [B, G, C, h, w] that stay maps [1, C', h', w'] after
        the head (``head_output``, the head on one view; no head keeps them), one-channel maps [B, G, h, h], or what
        looks like the patch tokens of a vision transformer, [B, G, T, D] kept as [1, T, D] with T less a count of
        tokens in front (``patch_token_prefixes``) a square number of patches. An object in one corner of the input
        then shows in every corner its group turns it to, and a token holds a different patch in each view, which a
        user who wanted an equivariant output would not see from its shape. Maps of 1 x 1, single tokens and the
        logits of a few heads [1, heads, K] hold no place of the input: no warning."""
        if not getattr(self, "_align_views_default", False) or self.group.order == 1:
            return
        three = views.ndim == 4 and head_output.ndim == 3  # [1, h, w] or [1, T, D]
        one_channel = three and head_output.shape[1] == head_output.shape[2] >= 3
        prefixes = patch_token_prefixes(head_output.shape[1]) if three and head_output.shape[2] > 1 else []
        tokens = not one_channel and bool(prefixes)
        if one_channel or (views.ndim == 5 and head_output.ndim >= 4 and tuple(head_output.shape[-2:]) != (1, 1)):
            layout = channels_last_maps_hint(views, image_size)
            shape, fix = ("one-channel maps [h, w]", "bring them to [1, h, w] in the trunk and pass align_views=True"
                          ) if one_channel else ("feature maps [C, h, w]", "pass align_views=True" + (
                              f" (first: they {layout})" if layout else ""))
            warn_at_caller(
                f"{type(self).__name__}: the trunk gives {shape} and the head keeps them spatial, but align_views is "
                f"off: each output map combines the {self.group.order} views' maps without turning them back "
                f"({self.group.name}), so it is neither the input's map nor equivariant. For equivariant maps, {fix}; "
                "pass align_views=False (or a pooling head=) if this is meant.")
        elif tokens:
            t = head_output.shape[1]
            fits = " or ".join(f"{p} in front of {math.isqrt(t - p)} x {math.isqrt(t - p)} patches" for p in prefixes)
            warn_at_caller(
                f"{type(self).__name__}: the trunk gives what look like patch tokens [T, D] = [{t}, "
                f"{head_output.shape[2]}] ({fits}) and the head keeps them, but align_views is off: token t of the "
                f"output combines token t of the {self.group.order} views, which come from different places of the "
                f"input in each view ({self.group.name} turns the image), so the output is invariant as a whole but "
                "no token is the input's. For equivariant tokens, turn the patch tokens into maps [D, h, w] "
                f"(output=lambda t: equinb.outputs.patch_tokens_to_map(t, prefix_tokens={prefixes[0]}), counting the "
                "tokens in front of the patches: the class token and any register tokens, 0 for none; a head= then "
                "takes maps [B, D, h, w]) and pass align_views=True; pass align_views=False (or a head= that pools the "
                "tokens or takes the class token) if this is meant.")

    def _check_head(self, view: Tensor) -> Tensor:
        """The head's output on one view, or a ValueError naming the head and the trunk's output shape when the head
        cannot take it (every head input, the combined views included, has a view's shape); PyTorch's own error
        names neither. Shapes: [1, ...] -> [1, ...]."""
        if isinstance(self.head, nn.Identity):
            return view
        try:
            return self.apply_head(view)
        except (RuntimeError, ValueError) as err:
            raise ValueError(f"{type(self).__name__}: the head {_short_repr(self.head)} does not take the trunk's "
                             f"output [B, {', '.join(map(str, view.shape[1:]))}] "
                             f"({str(view.dtype).removeprefix('torch.')}): {err}") from err

    def _check_device(self, x: Tensor) -> None:
        """A ValueError naming both devices when ``x`` is not where the wrapper is (``checks.device_elsewhere``)."""
        device = device_elsewhere(self, x)
        if device is not None:
            raise ValueError(f"{type(self).__name__}: the input is on {x.device} and the model on {device}; move one "
                             f"to the other first, e.g. x.to('{device}') or wrapper.to('{x.device}')")

    def align(self, views: Tensor) -> Tensor:
        """``g_k^-1`` applied to view k when ``align_views``; identity otherwise. Shapes: [B, G, ...]."""
        if not self.align_views:
            return views
        if views.ndim != 5:  # [B, G, T, D] tokens would have their D axis flipped or turned without an error
            raise ValueError(
                "align_views=True needs spatial trunk outputs [B, G, C, h, w] (the group acts on the last two dims); "
                f"this trunk gives {tuple(views.shape)}. Use a feature-map trunk, or align_views=False; bring a "
                "one-channel map [B, h, w] to [B, 1, h, w] in the trunk, and patch tokens [B, T, D] to maps "
                "[B, D, h, w] with output=lambda t: equinb.outputs.patch_tokens_to_map(t, prefix_tokens=1) (1 for a "
                "class token in front)."
            )
        if self.group.needs_square and views.shape[-1] != views.shape[-2]:
            layout = channels_last_maps_hint(views)
            fix = f"; they {layout}" if layout else (": make the trunk's padding and strides treat both axes alike, "
                                                     "or use a group without quarter turns (rot180, hflip, vflip)")
            raise ValueError(
                f"align_views=True turns each view's map back by quarter turns ({self.group.name}), so the trunk must "
                f"give square maps; it gives maps of h x w = {views.shape[-2]} x {views.shape[-1]} "
                f"(views {tuple(views.shape)}){fix}")
        return self.group.invert_orbit(views)

    def view_weights(self, views: Tensor) -> Tensor:
        """Per-view combination weights from the unaligned views. Shapes: [B, G, ...] -> [B, G]."""
        raise NotImplementedError(f"{type(self).__name__} defines no view weights: OrbitWrapper is the base class; "
                                  "use Equitune, EquiZero, LambdaEquitune or EquiAttention, or subclass it with "
                                  "view_weights(views [B, G, ...]) -> weights [B, G]")

    def checked_weights(self, weights: Tensor, views: Tensor) -> Tensor:
        """``weights`` if they are [B, G] for ``views`` [B, G, ...]; else a ValueError naming the weighting (a
        network ending in ``Linear(D, 1)`` gives [B, G, 1], which would broadcast into a wrong, non-invariant
        output instead of failing)."""
        if tuple(weights.shape) != tuple(views.shape[:2]):
            source = getattr(self, "weight_net", None)
            source = f"the weighting network {type(source).__name__}" if source is not None else "view_weights"
            trailing = (" (squeeze the trailing dim of size 1, e.g. end with .squeeze(-1))"
                        if tuple(weights.shape) == (*views.shape[:2], 1) else "")
            raise ValueError(f"{type(self).__name__}: {source} must map views [B, G, ...] to one weight per view "
                             f"[B, G] = {list(views.shape[:2])}, got {list(weights.shape)}{trailing}")
        return weights

    def view_scales(self, views: Tensor, weights: Tensor) -> tuple[Tensor | None, Tensor]:
        """Optional per-view factors on the values, and the combination weights. Default: none.
        Shapes: views [B, G, ...], weights [B, G] -> (scales [B, G] or None, weights [B, G])."""
        return None, weights

    def per_view_outputs(self, values: Tensor, scales: Tensor | None = None) -> Tensor:
        """Head outputs of every view, ``logit_factor * head(scale_k U_k)``. Shapes: [B, G, ...] -> [B, G, K]."""
        if scales is not None:
            values = values * scales.to(values.dtype).reshape(*scales.shape, *([1] * (values.ndim - 2)))
        out = self.apply_head(values.flatten(0, 1))
        return self.logit_factor * out.reshape(*values.shape[:2], *out.shape[1:])

    def apply_head(self, z: Tensor) -> Tensor:
        """The head on ``z``, cast to the dtype of the head's parameters (the views are combined in float32, so a
        half-precision head would otherwise get float32); a head without parameters (CLIP's cosine head keeps its
        text embeddings in a buffer) casts for itself. The output keeps the head's dtype. Shapes: [N, ...] -> [N, K].
        """
        dtype = parameter_dtype(self.head)
        return self.head(z if dtype is None or z.dtype == dtype else z.to(dtype))

    def combined_views(self, views: Tensor, weights: Tensor) -> Tensor:
        """The head's input ``Z = sum_k w_k U_k`` (invariant, or equivariant when aligned).

        Shapes: views [B, G, ...], weights [B, G] -> Z [B, ...].
        """
        scales, weights = self.view_scales(views, weights)
        return _weighted_sum(self.align(views), weights if scales is None else weights * scales)

    def combine(self, views: Tensor, weights: Tensor) -> Tensor:
        """Combine the views with the weights and apply the head. Shapes: [B, G, ...], [B, G] -> [B, K]."""
        if self.output_softmax:  # over the classes, dim 2 of [B, G, K, ...] (per pixel for maps of class scores)
            scales, weights = self.view_scales(views, weights)
            outputs = self.per_view_outputs(self.align(views), scales)
            if outputs.ndim < 3:
                raise ValueError(f"output_softmax=True needs class scores per view [B, G, K, ...], but the head gives "
                                 f"one number per view {list(outputs.shape)}: a softmax over them would run over the "
                                 f"views; use output_softmax=False, or a head with K >= 2 outputs")
            return _weighted_sum(torch.softmax(outputs, dim=2), weights)
        return self.logit_factor * self.apply_head(self.combined_views(views, weights))

    def forward_views(self, inputs: Tensor | None = None, *, views: Tensor | None = None,
                      weight_views: Tensor | None = None,
                      return_weights: bool = False) -> Tensor | tuple[Tensor, Tensor]:
        """The pipeline from per-view ``inputs`` (run through the trunk) or from computed ``views``.

        ``weight_views``: what the weighting sees instead of the views (the frozen copy's views, as
        published in the original lambda-equitune code). Shapes: [B, G, ...] -> out [B, K]; weights [B, G].
        """
        if views is None:
            if inputs is None:
                raise ValueError("forward_views needs per-view inputs or computed views")
            if inputs.ndim != 5 or inputs.shape[1] != self.group.order:  # before the trunk, whose error would not say
                raise ValueError(f"{type(self).__name__}.forward_views: inputs must be the views [B, G, C, H, W] with "
                                 f"G = {self.group.order} (the orbit, e.g. wrapper.group.orbit(x)); got "
                                 f"{tuple(inputs.shape)}")
            views = self.view_outputs(inputs)
        for name, tensor in (("views", views), ("weight_views", weight_views)):
            if tensor is not None and (tensor.ndim < 2 or tensor.shape[1] != self.group.order):
                raise ValueError(f"{type(self).__name__}.forward_views: {name} must be [B, G, ...] with G = "
                                 f"{self.group.order}, one per element of {self.group.name}; got "
                                 f"{tuple(tensor.shape)}")
        views, weight_views = full_precision(views), full_precision(weight_views)
        weights = self.checked_weights(self.view_weights(views if weight_views is None else weight_views), views)
        out = self.combine(views, weights)
        return (out, weights) if return_weights else out

    def forward(self, x: Tensor, *extra: Any, return_weights: bool = False) -> Tensor | tuple[Tensor, Tensor]:
        """The wrapped model on a batch: every view of ``x`` through the trunk, weighted, combined and headed; with
        ``return_weights``, also each view's weight. Shapes: x [B, ...] -> [B, ...] (and weights [B, G])."""
        _refuse_extra_inputs(self, extra)
        self.check_first_call(x)
        return self.forward_views(views=self.views(x), return_weights=return_weights)

    def _sized_weight_net(self, example_input: Tensor | None, make: Callable[[tuple[int, ...]], nn.Module],
                          given: nn.Module | None = None) -> nn.Module:
        """``given``, or else a weighting network sized from the trunk's view of ``example_input`` (one image is
        run, in evaluation mode, without gradients; module modes are restored), on the view's device and dtype."""
        if given is not None:
            if example_input is not None:  # it would be ignored: a wrong-sized image would pass unseen
                raise ValueError(f"{type(self).__name__}: give weight_net= or example_input= (which only sizes the "
                                 "default weighting network), not both")
            if not isinstance(given, nn.Module):
                # LambdaEquitune(model, "d4", x) puts the images in the third parameter, weight_net
                images = (": images go in as example_input=images (a keyword argument)"
                          if isinstance(given, Tensor) else "")
                raise TypeError(f"weight_net must be a torch.nn.Module, got {type(given).__name__}{images}")
            return given
        if example_input is None:
            raise ValueError(f"{type(self).__name__} needs weight_net=, or example_input= (a few images [B, C, H, W] "
                             "the model accepts) to size the default weighting network from the model's views")
        self._check_images(example_input)
        with evaluation_mode(self.trunk), torch.no_grad():
            with self._model_failure_named(f"example_input {tuple(example_input.shape)} (its first image alone sizes "
                                           "the default weighting network)", images=example_input):
                view = self.view_outputs(example_input[:1, None])[0, 0]
        return make(tuple(view.shape)).to(device=view.device, dtype=view.dtype)


class Equitune(OrbitWrapper):
    """Equitune: the mean over the orbit, ``M_G(x) = 1/|G| sum_k g_k^-1 M(g_k x)`` (Basu et al. eq. 2), where
    ``g_k^-1`` acts only on feature maps with ``align_views=True`` (a classifier's logits are invariant to it).

    See ``OrbitWrapper`` for the arguments. Shapes: x [B, C, H, W] -> [B, K], or [B, C, h, w] for feature maps.
    """

    method = "equitune"

    def view_weights(self, views: Tensor) -> Tensor:
        b, g = views.shape[:2]
        return torch.full((b, g), 1.0 / g, dtype=views.dtype, device=views.device)


class EquiZero(OrbitWrapper):
    """Equizero: keep the single view that a proxy prefers (Basu et al. eq. 4).

    The proxy scores each view's head output (computed from the unaligned view): ``max_prob``
    (the article's code), ``entropy`` (lowest entropy) or ``max_logit`` (the largest logit; on one logit [B, 1]
    it picks the most positive view, not the most confident: ``output=lambda z: torch.cat([-z, z], -1)`` picks the
    most confident and returns its two-class logits [B, 2], ``z`` in column 1). Views tied at the top score are
    averaged (the article's code takes one of them; any fixed pick among tied views breaks invariance).

    Args (besides ``OrbitWrapper``'s):
        proxy: one of ``PROXIES``. Default ``"max_prob"``.
        straight_through: in training mode, return ``mean + (selected - mean).detach()`` so gradients
            flow to every view (the article's finetuning trick). Default False.
        elementwise_max: as published in the article's zero-shot code, return the element-wise max of
            per-view probabilities over G instead of the selected view's probabilities (requires
            ``output_softmax=True``; its top-1 equals selection by ``max_prob``). Default False.

    Shapes: x [B, C, H, W] -> [B, K]; weights one-hot [B, G] (uniform over tied views).
    """

    method = "equizero"

    def __init__(self, model: nn.Module, group: Group | str, *, proxy: str = "max_prob", straight_through: bool = False,
                 elementwise_max: bool = False, **kwargs: Any) -> None:
        super().__init__(model, group, **kwargs)
        proxy = check_choice(proxy, PROXIES, "proxy", any_case=True)
        self.straight_through = check_flag(straight_through, "straight_through")
        self.elementwise_max = check_flag(elementwise_max, "elementwise_max")
        if self.elementwise_max and not self.output_softmax:
            raise ValueError("elementwise_max=True is the article's max over probabilities; set output_softmax=True")
        if self.elementwise_max and self.straight_through:  # the max over probabilities selects no view to pass
            raise ValueError("straight_through=True passes the mean's gradient through a selected view; "
                             "elementwise_max=True selects none: choose one of them")
        self.proxy = proxy

    def _options(self) -> dict[str, Any]:
        return dict(proxy=self.proxy, straight_through=self.straight_through, elementwise_max=self.elementwise_max,
                    **super()._options())

    def view_weights(self, views: Tensor) -> Tensor:
        with torch.no_grad():
            scores = proxy_scores(self.per_view_outputs(views), self.proxy)
        # views tied at the top score share the weight: picking the lowest index would pick another view after a
        # turn (bf16 logits tie often), and the tied set permutes with the views
        top = (scores == scores.amax(dim=1, keepdim=True)).to(views.dtype)
        return top / top.sum(dim=1, keepdim=True)

    def combine(self, views: Tensor, weights: Tensor) -> Tensor:
        if self.elementwise_max:
            return torch.softmax(self.per_view_outputs(self.align(views)), dim=2).amax(dim=1)
        selected = super().combine(views, weights)
        if self.straight_through and self.training:
            mean = super().combine(views, torch.full_like(weights, 1.0 / weights.shape[1]))
            return mean + (selected - mean).detach()
        return selected


class LambdaEquitune(OrbitWrapper):
    """Lambda-equitune: views weighted by a learned network, ``sum_k lambda(V_k) g_k^-1 V_k / Z``.

    Args (besides ``OrbitWrapper``'s):
        weight_net: maps unaligned views [B, G, ...] to raw lambda [B, G], each view's lambda from that view alone
            (the first call checks that the weights roll with the views; ``equinb.weighting``). Default None:
            built from the model's views of ``example_input`` (``equinb.weighting.default_weight_net``:
            ``EmbeddingWeightNet`` for views [D], ``FeatureMapWeightNet`` for maps [C, h, w]).
        normalisation: ``"softmax"`` (default; the article's feature-map code) | ``"sum"`` (the article's text,
            eq. 6: lambda / sum(lambda); a raw lambda can cross zero, and training then diverges on random data,
            so it is an as-published option) | ``"none"`` (the article's invariant code: lambda_k multiplies view
            k, which acts as a per-view inverse temperature of the logits, then a plain mean; with
            ``output_softmax`` the softmax sees the scaled logits; a raw lambda has no sign constraint, and a
            negative one reverses the order of its view's logits, as it can at initialisation).
            ``equinb.engine.TrainConfig`` names the article's code versions and passes its setting explicitly.
        frozen_copy: as published ("original" code), lambda is computed from the views of this frozen
            copy of the trunk instead of the trainable trunk. Default None (the trainable trunk).
        dropout_in_eval: as published, keep the weight network in training mode (dropout active)
            during evaluation too. Default False.
        example_input: a few images [B, C, H, W] that size the default ``weight_net`` (one is run).

    A weighting network of the wrong size, or one whose weights do not move with the views, fails with a message
    on the first call's check, which runs the first image's orbit (|G| images, one forward) before the batch's.

    Shapes: x [B, C, H, W] -> [B, K]; weights [B, G] (raw lambda for ``none``, else normalised).
    """

    method = "lambda_equitune"

    def __init__(self, model: nn.Module, group: Group | str, weight_net: nn.Module | None = None, *,
                 normalisation: str = "softmax", frozen_copy: nn.Module | None = None, dropout_in_eval: bool = False,
                 example_input: Tensor | None = None, **kwargs: Any) -> None:
        super().__init__(model, group, **kwargs)
        normalisation = check_choice(normalisation, NORMALISATIONS, "normalisation", any_case=True)
        weight_net = self._sized_weight_net(example_input, default_weight_net, weight_net)
        self.weight_net = weight_net
        self.normalisation = normalisation
        self.dropout_in_eval = check_flag(dropout_in_eval, "dropout_in_eval")
        if frozen_copy is not None:
            if not isinstance(frozen_copy, nn.Module):
                raise TypeError(f"frozen_copy must be an nn.Module (a copy of the trunk), got "
                                f"{type(frozen_copy).__name__}")
            shared = {id(t) for t in model.parameters()} & {id(t) for t in frozen_copy.parameters()}
            if shared:  # freezing it would freeze the trainable trunk too
                raise ValueError(f"frozen_copy shares {len(shared)} parameter tensors with the trunk; pass a separate "
                                 "copy, e.g. frozen_copy=copy.deepcopy(model)")
            frozen_copy.requires_grad_(False)
        self.frozen_copy = frozen_copy
        # the weighting network in the wrapper's mode (dropout as asked), the frozen copy in evaluation mode from the
        # start; the trunk's mode is left as the caller set it, as the other wrappers leave it
        self.weight_net.train(self.training or self.dropout_in_eval)
        if frozen_copy is not None:
            frozen_copy.eval()

    def _options(self) -> dict[str, Any]:
        return dict(normalisation=self.normalisation, dropout_in_eval=self.dropout_in_eval,
                    frozen_copy=self.frozen_copy is not None, **super()._options())

    def train(self, mode: bool = True) -> "LambdaEquitune":
        super().train(mode)
        if self.dropout_in_eval:
            self.weight_net.train(True)
        if self.frozen_copy is not None:
            self.frozen_copy.eval()
        return self

    def view_weights(self, views: Tensor) -> Tensor:
        lam = self.weight_net(views)
        return lam if self.normalisation == "none" else normalise_weights(lam, self.normalisation)

    def view_scales(self, views: Tensor, weights: Tensor) -> tuple[Tensor | None, Tensor]:
        """Without normalisation (the original code), λ scales each view and the views are averaged; otherwise the
        normalised λ are the combination weights. Shapes: views [B, G, ...], weights [B, G] -> ([B, G] or None,
        [B, G])."""
        if self.normalisation == "none":  # lambda scales each view; the combination is a plain mean
            return weights, torch.full_like(weights, 1.0 / weights.shape[1])
        return None, weights

    def forward(self, x: Tensor, *extra: Any, return_weights: bool = False) -> Tensor | tuple[Tensor, Tensor]:
        """As ``OrbitWrapper.forward``, with λ computed from each view (as published, from a frozen copy's views
        where the wrapper keeps one). Shapes: x [B, ...] -> [B, ...] (and weights [B, G])."""
        _refuse_extra_inputs(self, extra)
        self.check_first_call(x)
        frozen = None
        if self.frozen_copy is not None:  # as published: lambda sees a frozen copy's views, the head the trainable
            with torch.no_grad():
                frozen = self.views(x, trunk=self.frozen_copy)
        return self.forward_views(views=self.views(x), weight_views=frozen, return_weights=return_weights)


class EquiAttention(OrbitWrapper):
    """Equiattention: attention between the views; values are the (aligned) views.

    ``Z = mean_i (A V)_i = sum_j w_j V_j`` with ``w_j`` the column means of the attention matrix A
    (``equinb.weighting.ViewAttention``); ``A`` is computed from the unaligned views.

    Args (besides ``OrbitWrapper``'s):
        weight_net: a ``ViewAttention`` (or any module mapping views [B, G, ...] to weights [B, G] that
            permute with the views and sum to 1); the same attribute name as lambda-equitune's network.
            Default None: a ``ViewAttention`` sized from the model's views of ``example_input``.
        example_input: a few images [B, C, H, W] that size the default ``weight_net`` (one is run).

    Shapes: x [B, C, H, W] -> [B, K]; weights [B, G].
    """

    method = "equiattention"

    def __init__(self, model: nn.Module, group: Group | str, weight_net: nn.Module | None = None, *,
                 example_input: Tensor | None = None, **kwargs: Any) -> None:
        super().__init__(model, group, **kwargs)
        weight_net = self._sized_weight_net(example_input, default_view_attention, weight_net)
        self.weight_net = weight_net

    def view_weights(self, views: Tensor) -> Tensor:
        return self.weight_net(views)

    def _check_weight_sums(self, raw: Tensor) -> None:
        """A ValueError when the weighting network's weights of the first image's views do not sum to 1: the output
        would then be the views' mean scaled by that sum, still invariant, so no other check would see it."""
        if raw.device.type == "meta":
            return
        total = float(raw.detach().to(torch.promote_types(raw.dtype, torch.float32)).sum())
        if not abs(total - 1.0) <= 64 * torch.finfo(raw.dtype).eps * raw.shape[1]:
            raise ValueError(f"{type(self).__name__}: the weighting network {_short_repr(self.weight_net)} gives "
                             f"the first image's {raw.shape[1]} views weights that sum to {total:.4g}, not 1, so the "
                             "output would be scaled by that sum: normalise them over the views (a softmax over dim "
                             "1), or use LambdaEquitune, whose weights need no sum")
