"""Measured symmetry: invariance and equivariance errors of any function, and how to print them.

Used by the tests (which assert the errors are at float rounding, or are not), by the chapters (which
print them, the language-model chapter included) and by ``analysis`` (which measures trained models); the wrappers,
backbones, engine and setups use its seeding and mode helpers.

``check_invariance`` and ``check_equivariance`` (also ``equinb.check_invariance``) are the user-facing forms:
they take a group by name, pick the model's output tensor (``output=``, as the wrappers do), run a module in
evaluation mode (dropout off, BatchNorm on its running statistics; a ``LambdaEquitune`` built with
``dropout_in_eval=True`` keeps its dropout, as the article's code does, and the check measures that noise) and
restore its modes, and can assert a tolerance. A NaN output under any element gives NaN. ``invariance_error``
and ``equivariance_error`` measure a function exactly as given.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import numbers
import sys
import warnings
from typing import Any, Callable, Iterable, Iterator

import torch
from torch import nn

from .groups import Group, get_group
from .outputs import OutputSelector, check_selector, select_output

__all__ = ["invariance_error", "equivariance_error", "largest_error", "format_error", "check_invariance",
           "check_equivariance", "check_image_batch", "check_group_images", "channels_last_hint",
           "channels_last_maps_hint", "keeps_aspect", "modes_restored", "evaluation_mode", "training_modules",
           "warn_at_caller"]

Tensor = torch.Tensor


@contextlib.contextmanager
def modes_restored(module: nn.Module) -> Iterator[nn.Module]:
    """Inside the block ``module`` may switch modes (``eval()``, ``train()``); on exit every submodule's own
    train/eval flag is put back, also after an error. Each flag is restored, not ``module.train(mode)``, so a model
    with mixed modes (a trunk kept in evaluation mode inside a training wrapper) comes back exactly as it was."""
    modes = [(m, m.training) for m in module.modules()]
    try:
        yield module
    finally:
        for m, mode in modes:
            m.training = mode


@contextlib.contextmanager
def evaluation_mode(module: nn.Module) -> Iterator[nn.Module]:
    """``module`` in evaluation mode inside the block; every submodule's mode is restored on exit, also after an
    error (``modes_restored``)."""
    with modes_restored(module):
        module.eval()
        yield module


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """torch's global generators (the CPU's and every CUDA device's) seeded with ``seed`` inside the block, and put
    back as they were on exit: a computation's own draws never move the caller's stream (whether a training run
    trained or was read from a cache, say)."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        yield


@torch.no_grad()
def invariance_error(fn: Callable[[Tensor], Tensor], x: Tensor, group: Group | str) -> float:
    """``max_g max |fn(g x) - fn(x)|`` over the group's non-identity elements (0.0 for the trivial group).

    Shapes: x [B, C, H, W].
    """
    group = get_group(group)
    base = fn(x)
    return largest_error(float((fn(group.act(x, k)) - base).abs().max()) for k in range(1, group.order))


@torch.no_grad()
def equivariance_error(fn: Callable[[Tensor], Tensor], x: Tensor, group: Group | str,
                       act_output: Callable[[Tensor, int], Tensor] | None = None) -> float:
    """``max_g max |fn(g x) - g fn(x)|``; ``act_output(y, k)`` is g_k on outputs (default: the group's action).

    0.0 for the trivial group. Shapes: x [B, C, H, W]; outputs of any shape ``act_output`` accepts.
    """
    group = get_group(group)
    act = act_output if act_output is not None else group.act
    base = fn(x)
    return largest_error(float((fn(group.act(x, k)) - act(base, k)).abs().max()) for k in range(1, group.order))


def largest_error(errors: Iterable[float]) -> float:
    """The largest error, NaN if any is NaN (Python's ``max`` keeps a NaN only when it comes first, so a model
    whose output is NaN for one element would pass), 0.0 for none."""
    values = list(errors)
    return math.nan if any(math.isnan(v) for v in values) else max(values, default=0.0)


def format_error(err: float, scale: float = 1.0, rtol: float = 1e-5) -> str:
    """A symmetry error for printing: the value when it is real, else ``< bound`` (float rounding).

    Errors at float-rounding level differ between machines and runs (summation order), so a notebook that
    printed them would fail its regression test. ``bound = rtol * 10^ceil(log10(max(scale, 1)))``: a power of
    ten, so that a small change of the scale does not change the printed bound. A scale that is not finite (the
    outputs of a diverged model) gives no bound: the error prints as it is.
    """
    if not math.isfinite(scale):
        return f"{err:.2g}"
    bound = rtol * 10.0 ** math.ceil(math.log10(max(abs(scale), 1.0)))
    return f"< {bound:.0e} (float rounding)" if err < bound else f"{err:.2g}"


def check_image_batch(x: object, name: str = "input") -> None:
    """A TypeError (not a tensor, not floating point) or ValueError (not 4-D) saying what to do, when ``x`` is not
    a floating-point image batch [B, C, H, W]. The groups act on the last two dims of anything, so a [B, D] batch
    would be turned as a matrix and an [H, W, C] image on its W and C; the wrappers and the checks refuse both."""
    if not isinstance(x, Tensor):
        # a NumPy or PIL image is [H, W, C] (uint8 0-255) as image libraries give it
        shape = getattr(x, "shape", None)
        hint = ("; a NumPy image [H, W, C] goes in as torch.from_numpy(a).permute(2, 0, 1)[None].float() / 255 "
                "(then normalised as the model expects), a batch [B, H, W, C] as .permute(0, 3, 1, 2)"
                if shape is not None and len(shape) in (3, 4) else "")
        raise TypeError(f"{name} must be a torch.Tensor image batch [B, C, H, W], got {type(x).__name__}{hint}")
    if x.ndim != 4:
        # [B, H, W] is how one-channel batches (MNIST) often arrive: x[None] would make them one B-channel image
        grey = "a batch of one-channel images [B, H, W] goes in as x[:, None]; "
        one = "for one image [C, H, W] pass x[None] (a batch of one); "
        hint = (f"; {grey + one if x.shape[0] not in (1, 3, 4) else one + grey}a batch of 1-D signals [B, C, L] "
                "goes in as [B, C, 1, L] (x[:, :, None]) under a group without quarter turns (hflip reverses L)"
                if x.ndim == 3 else "")
        raise ValueError(f"{name} must be an image batch [B, C, H, W] (the group acts on H and W), got shape "
                         f"{tuple(x.shape)}{hint}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be floating-point images, got {x.dtype}: convert them as the model expects "
                        "first (for uint8 images typically x.float() / 255, then the model's normalisation)")


def channels_last_hint(x: Tensor) -> str:
    """``"; these look like channels-last images ..."`` when a batch read as [B, C, H, W] looks like [B, H, W, C]
    images (from numpy or PIL): its last dim is a channel count (1, 3 or 4) and its second is not; else ""."""
    if x.ndim == 4 and x.shape[-1] in (1, 3, 4) and x.shape[1] not in (1, 3, 4):
        return (f"; these look like channels-last images [B, H, W, C] = {list(x.shape)}: permute them to "
                "[B, C, H, W] with x.permute(0, 3, 1, 2)")
    return ""


def warn_at_caller(message: str, category: type[Warning] = UserWarning) -> None:
    """A warning attributed to the first caller outside torch and equinb (the user's ``load_state_dict``, forward
    or check line, however deep the wrapper sits in their model)."""
    frame, level = sys._getframe(1), 2
    while frame is not None and frame.f_globals.get("__name__", "").split(".")[0] in ("torch", "equinb"):
        frame, level = frame.f_back, level + 1
    warnings.warn(message, category, stacklevel=level)


def _aspect_mismatch(h: int, w: int, image_size: tuple[int, int] | None) -> float:
    """How far h : w is from the image's H : W (None: square), as the absolute log of their ratio."""
    height, width = image_size or (1, 1)
    return abs(math.log(h * width / (w * height)))


def keeps_aspect(h: int, w: int, image_size: tuple[int, int] | None = None) -> bool:
    """Whether a map of h x w keeps the aspect ratio of images of ``image_size`` (H, W; None: square) within one
    cell of rounding on its shorter side, as a convolutional trunk's maps do (Swin: 64 x 96 -> 2 x 3). Tokens
    [T, D] of a vision transformer do not (197 x 768)."""
    return min(h, w) > 0 and _aspect_mismatch(h, w, image_size) <= math.log1p(1 / min(h, w)) + 1e-12


def channels_last_maps_hint(y: Tensor, image_size: tuple[int, int] | None = None) -> str:
    """``"look like channels-last maps ..."`` when outputs read as maps [..., C, h, w] look like [..., h, w, C]
    (torchvision's and timm's Swin give those), so that the group, which acts on the last two dims, would move the
    channels as if they were a width; else "". The map's height and width keep the image's aspect ratio H : W
    (``image_size``; None: square images): the hint applies where dims -3, -2 match that ratio (within one cell of
    rounding) and more closely than dims -2, -1 do. For square images that is [h, h, C] with C != h, and a
    channels-first map [C, h, w] with C == h != w (the hint then says which layout it assumed); square maps [C, h, h]
    never match, nor does [h, w, C] with C == w, which no shape can tell apart."""
    if y.ndim < 4 or 0 in y.shape[-3:]:
        return ""
    a, b, c = (int(n) for n in y.shape[-3:])
    if keeps_aspect(a, b, image_size) and _aspect_mismatch(a, b, image_size) < _aspect_mismatch(b, c, image_size):
        return (f"look like channels-last maps [..., h, w, C] = {list(y.shape)}, and the group acts on the "
                "last two dims (here w and C): permute them to [..., C, h, w] where the model's output is selected, "
                "e.g. output=lambda out: out.permute(0, 3, 1, 2)")
    return ""


def check_group_images(x: Tensor, group: Group, name: str = "input") -> None:
    """``check_image_batch``, and a ValueError where ``group`` has quarter turns and the images are not square
    (a turn would change their shape), with the channels-last hint first where it applies."""
    check_image_batch(x, name)
    if x.shape[-2] != x.shape[-1] and group.needs_square:
        layout = channels_last_hint(x)
        raise ValueError(f"{group.name} turns an image by 90 degrees, which makes an H x W = {x.shape[-2]} x "
                         f"{x.shape[-1]} image {x.shape[-1]} x {x.shape[-2]}"
                         + (f"{layout}; or, if they are [B, C, H, W], " if layout else ": ")
                         + "crop or pad the images to a square, or use a group without quarter turns (rot180, "
                         "hflip, vflip)")


def _checked(model: Callable[..., Any], x: Tensor, group: Group | str, output: OutputSelector, atol: float | None,
             measure: Callable[[Callable[[Tensor], Tensor], Group], float], what: str) -> float:
    if not callable(model):
        raise TypeError(f"model must be callable (an nn.Module or a function), got {type(model).__name__}")
    group = get_group(group)
    check_group_images(x, group, "x")  # an image batch, square under quarter turns (a turn keeps its shape)
    if x.shape[0] == 0:
        raise ValueError("x is an empty batch: a check needs at least one image")
    if atol is not None and (isinstance(atol, bool) or not isinstance(atol, numbers.Real)):
        raise TypeError(f"atol must be a number (the largest error allowed) or None, got {atol!r}")
    check_selector(output)
    if isinstance(model, nn.Module):
        _check_model_takes(model, x)
    with modes_restored(model) if isinstance(model, nn.Module) else contextlib.nullcontext():
        if isinstance(model, nn.Module):
            training = training_modules(model)
            with contextlib.suppress(NotImplementedError):  # a torch.export program has no modes: measured as it is
                model.eval()
            _warn_if_switched_off(training - training_modules(model), what)
        seen: list[Tensor] = []

        def f(z: Tensor) -> Tensor:
            y = select_output(model(z), output)
            if z is x and not seen:  # f(x): what the outputs look like decides whether the check can tell
                seen.append(y)
            return y

        try:
            err = measure(f, group)
        except RuntimeError as error:
            # only a dtype error gets the cast: a wrapper casts its input itself, and an out-of-memory error passes
            # as it is (a caller may catch it to shrink its batch)
            dtype_error = "type" in str(error) and not isinstance(error, torch.cuda.OutOfMemoryError)
            hint = _dtype_hint(model, x) if dtype_error and isinstance(model, nn.Module) else ""
            if not hint:
                raise
            raise RuntimeError(f"{error}\n{hint}") from error
    if seen and group.order > 1:
        _warn_if_powerless(seen[0], atol, what)
    if atol is not None and not err <= atol:
        raise AssertionError(f"{what} error over {group.name} is {err:.3g}, above atol={atol:g}")
    return err


ROUNDING_RTOL = 1e-5  # format_error's default: errors below this (times the outputs' scale) print as float rounding


def _warn_if_powerless(base: Tensor, atol: float | None, what: str) -> None:
    """A UserWarning when the model's outputs on x, ``base``, make any model pass: all of them within ``atol`` (or
    the float-rounding bound) of zero (a head initialised at zero, a random network whose logits vanish, weights
    that did not load), or the same for every image of the batch (a model that ignores its input is invariant and
    equivariant to anything). The error is absolute, so it cannot tell such a model from a symmetric one."""
    if not isinstance(base, Tensor) or not base.is_floating_point() or base.numel() == 0:
        return
    floor = atol if atol is not None else ROUNDING_RTOL
    scale = float(base.abs().max())
    if not math.isfinite(scale):
        return
    if scale <= floor:
        warnings.warn(f"the model's outputs on x are at most {scale:.2g} in size, within "
                      f"{'atol' if atol is not None else 'the float-rounding bound'} ({floor:g}) of zero: any model's "
                      f"{what} error would be that small, so this check cannot tell. Check a model whose outputs are "
                      "larger (a head initialised at zero, or weights that did not load?)", stacklevel=4)
    elif base.ndim > 0 and base.shape[0] > 1 and float((base - base[:1]).abs().max()) <= floor:
        warnings.warn(f"the model gives the same outputs for every image of x (within {floor:g}): a model that "
                      f"ignores its input passes any {what} check, so this one cannot tell. Check with images the "
                      "model tells apart (random ones), or a model whose outputs depend on them", stacklevel=4)


def _dtype_hint(model: nn.Module, x: Tensor) -> str:
    """Where every floating-point tensor of ``model`` has one dtype and ``x`` another, the cast that fixes it ("" if
    not): a model's own error ("Input type ... and weight type ...") names neither tensor."""
    dtypes = {t.dtype for t in itertools.chain(model.parameters(), model.buffers()) if t.is_floating_point()}
    if len(dtypes) != 1 or x.dtype in dtypes:
        return ""
    dtype = str(next(iter(dtypes))).removeprefix("torch.")
    return (f"x is {str(x.dtype).removeprefix('torch.')} and the model's weights {dtype}: pass x.to(torch.{dtype}) "
            f"(equinb's wrappers cast the images to their trunk's dtype themselves)")


# modules whose outputs differ between training and evaluation mode
_MODE_DEPENDENT = (nn.modules.dropout._DropoutNd, nn.modules.batchnorm._BatchNorm)


def training_modules(model: nn.Module, kinds: type | tuple[type, ...] = _MODE_DEPENDENT) -> set[nn.Module]:
    """The submodules of ``model`` (itself included) of ``kinds`` that are in training mode; by default the ones
    whose outputs depend on the mode (dropout and BatchNorm)."""
    return {m for m in model.modules() if m.training and isinstance(m, kinds)}


def _warn_if_switched_off(switched: set[nn.Module], what: str) -> None:
    """A UserWarning when the check's ``eval()`` switched dropout or BatchNorm modules of the model out of training
    mode: its error then says nothing of the outputs the model gives as it is (a wrapper starts in training mode,
    as any module, and ``LambdaEquitune``'s weighting network has dropout). Modules that stay in training mode
    through ``eval()`` (``dropout_in_eval=True``, as the article's code) are measured with their noise: no warning."""
    names = sorted({type(m).__name__ for m in switched})
    if names:
        warnings.warn(f"the {what} error is measured in evaluation mode, but the model is in training mode, in "
                      f"which its {' and '.join(names)} layers change the outputs; call model.eval() before using "
                      "it for inference", stacklevel=4)


def device_elsewhere(model: nn.Module, x: Tensor) -> torch.device | None:
    """The one device that every tensor of ``model`` is on, when ``x`` is on another; else None (a model split over
    devices, or one without tensors, is left to itself). Callers raise with it: PyTorch's own error names neither
    tensor and comes from deep inside the model."""
    devices = {t.device for t in itertools.chain(model.parameters(), model.buffers())}
    return next(iter(devices)) if len(devices) == 1 and x.device not in devices else None


def _check_model_takes(model: nn.Module, x: Tensor) -> None:
    """A ValueError naming both devices when ``x`` is not where ``model`` is (``device_elsewhere``); dtypes are
    left alone, since equinb's wrappers convert the images to their trunk's dtype themselves."""
    device = device_elsewhere(model, x)
    if device is not None:
        raise ValueError(f"x is on {x.device} and the model on {device}; move x first: x.to('{device}')")


def check_invariance(model: Callable[..., Any], x: Tensor, group: Group | str, *, output: OutputSelector = None,
                     atol: float | None = None) -> float:
    """How far ``model`` is from invariant on ``x``: ``max_g max |f(g x) - f(x)|`` (0.0 for the trivial group).

    ``group``: a ``Group`` or a name (``"rot90"``, any case). ``output``: which tensor of the model's output to
    compare (see ``equinb.outputs``). An ``nn.Module`` runs in evaluation mode, its modes restored afterwards.
    ``atol``: raise ``AssertionError`` when the error is larger. Print it with ``format_error``.

    Shapes: x [B, C, H, W]; outputs any shape.
    """
    return _checked(model, x, group, output, atol, lambda f, g: invariance_error(f, x, g), "invariance")


def check_equivariance(model: Callable[..., Any], x: Tensor, group: Group | str, *,
                       act_output: Callable[[Tensor, int], Tensor] | None = None, output: OutputSelector = None,
                       atol: float | None = None) -> float:
    """How far ``model`` is from equivariant on ``x``: ``max_g max |f(g x) - g f(x)|`` (0.0 for the trivial group).

    The group acts on the outputs as on the inputs (on their last two dims: feature maps [B, C, h, w]) unless
    ``act_output(y, k)`` says otherwise. Other arguments as ``check_invariance``.

    Shapes: x [B, C, H, W]; outputs [B, ..., h, w] (square for rotation groups).
    """
    def spatial(f: Callable[[Tensor], Tensor], group: Group) -> Callable[[Tensor], Tensor]:
        def checked(z: Tensor) -> Tensor:
            y = f(z)
            if act_output is None and y.ndim < 3:  # the group would act on [B, K] as on a matrix
                raise ValueError(f"check_equivariance moves the outputs by the group on their last two (spatial) "
                                 f"dims, but this model gives outputs of shape {tuple(y.shape)}, which have none: "
                                 f"use check_invariance for a classifier, or pass act_output=")
            if act_output is not None:
                return y
            image_size = (int(x.shape[-2]), int(x.shape[-1]))
            layout, keeps = channels_last_maps_hint(y, image_size), keeps_aspect(y.shape[-2], y.shape[-1], image_size)
            if y.ndim == 3 and not keeps:  # under a mirror the error would be measured on a flipped D axis
                raise ValueError(f"check_equivariance moves the model's outputs by the group on their last two dims as "
                                 f"a map's height and width, but outputs {tuple(y.shape)} of images "
                                 f"{image_size[0]} x {image_size[1]} do not keep the images' aspect ratio: they look "
                                 "like tokens [B, T, D], which are no map. Bring patch tokens to maps [B, D, h, w] "
                                 "first (output=lambda t: equinb.outputs.patch_tokens_to_map(t, prefix_tokens=1), 1 "
                                 "for a class token in front), or pass act_output= for outputs the group moves "
                                 "otherwise")
            if group.needs_square and y.shape[-1] != y.shape[-2]:
                why = f"; they {layout}" if layout else (": a padding, stride or kernel that treats height and width "
                                                         "differently cannot be equivariant to quarter turns")
                raise ValueError(f"check_equivariance turns the model's outputs as it turns the images, by quarter "
                                 f"turns under {group.name}, but the outputs of these square images are not square "
                                 f"(shape {tuple(y.shape)}){why}; use a group without quarter turns (rot180, hflip, "
                                 "vflip), or pass act_output= for outputs the group moves otherwise.")
            if layout:  # a mirror of [h, w, C] reverses the channels: the error measured would mean nothing
                warn_at_caller(f"check_equivariance: the model's outputs {layout}; else pass "
                               "act_output= for outputs the group moves otherwise")
            return y
        return checked

    return _checked(model, x, group, output, atol,
                    lambda f, g: equivariance_error(spatial(f, g), x, g, act_output), "equivariance")
