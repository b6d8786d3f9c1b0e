"""Which tensor of a model's output the wrappers and checks use: the ``output=`` selector.

Models return a tensor, a dict, a tuple, a namedtuple or an output object (Hugging Face's ``ModelOutput``
and others carry ``.logits``). A selector names the tensor to use:

- ``None`` (default): the output itself when it is a tensor, else its ``.logits`` (attribute or key);
- a string: a key of a mapping, or an attribute (a namedtuple field, a dataclass field);
- an integer: an index of a tuple or list (a namedtuple included), or of a Hugging Face ``ModelOutput``;
- a callable: ``output(out) -> Tensor``;
- a tuple of strings and integers: a path, each step applied to what the one before selected
  (``output=("hidden_states", -1)``: a Hugging Face model's last hidden layer); unlike a callable, it shows in
  ``repr`` and is saved in a wrapper's ``state_dict`` record.

Anything else, or a selection that does not give a tensor, raises a ``TypeError`` that names the selector
and describes what the model returned.

Several maps of one size (a segmentation model's ``out`` and ``aux``) go through one wrapper as one tensor:
``output=lambda out: torch.cat([out["out"], out["aux"]], dim=1)``, then ``y.split([c_out, c_aux], dim=1)``; the
group acts on each channel's map alike, so each part is as equivariant as the whole.

``patch_tokens_to_map`` turns a vision transformer's patch tokens [B, T, D] into feature maps [B, D, h, w], which
the group turns as it turns the image: ``output=lambda out: patch_tokens_to_map(out.last_hidden_state,
prefix_tokens=1)`` with ``align_views=True`` gives equivariant patch features (a class token in front).
"""

from __future__ import annotations

import difflib
import math
import numbers
from collections.abc import Mapping
from typing import Any, Callable, Union

import torch

__all__ = ["OutputSelector", "check_selector", "select_output", "describe_output", "patch_tokens_to_map"]

OutputSelector = Union[None, str, int, tuple[Union[str, int], ...], Callable[[Any], torch.Tensor]]


def _is_step(step: Any) -> bool:
    """A key or attribute name, or an index (not a bool): one step of a selector."""
    return isinstance(step, str) or (isinstance(step, int) and not isinstance(step, bool))


def check_selector(output: Any) -> OutputSelector:
    """Refuse a selector that is not None, a string, an integer, a tuple of those or a callable (at construction)."""
    if output is None or _is_step(output) or (callable(output) and not isinstance(output, tuple)):
        return output
    if isinstance(output, tuple) and output and all(_is_step(step) for step in output):
        return output
    raise TypeError(f"output={output!r} is not a selector; pass None (a tensor, or its .logits), a key or attribute "
                    "name (str), an index (int), a path of those (a non-empty tuple such as ('hidden_states', -1)), "
                    "or a callable that maps the model's output to a tensor")


def _a(name: str) -> str:
    return f"an {name}" if name[:1].lower() in "aeiou" else f"a {name}"


def _names(out: Any) -> list[Any]:
    """The keys of a mapping, the fields of a namedtuple, or the public attributes of an object (else none)."""
    if isinstance(out, Mapping):
        return list(out)
    if isinstance(out, tuple) and hasattr(out, "_fields"):
        return list(out._fields)
    if isinstance(out, (torch.Tensor, tuple, list)) or not hasattr(out, "__dict__"):
        return []
    return [k for k in vars(out) if not k.startswith("_")]


def describe_output(out: Any) -> str:
    """A short description of a model output for error messages: its type and its keys, fields or length."""
    name = type(out).__name__
    if isinstance(out, torch.Tensor):
        return f"a tensor of shape {tuple(out.shape)}"
    if isinstance(out, Mapping):
        return f"{_a(name)} with keys {_names(out)[:12]}"
    if isinstance(out, tuple) and hasattr(out, "_fields"):
        return f"a namedtuple {name} with fields {_names(out)}"
    if isinstance(out, (tuple, list)):
        kinds = [type(v).__name__ for v in out[:8]]
        return f"{_a(name)} of length {len(out)} ({', '.join(kinds)}{', ...' if len(out) > 8 else ''})"
    fields = _names(out)[:12]
    return _a(name) + (f" with attributes {fields}" if fields else "")


def _did_you_mean(output: OutputSelector, out: Any) -> str:
    """The hint ``" (did you mean 'logits'?)"`` for a misspelt key or attribute name, else an empty string."""
    if not isinstance(output, str):
        return ""
    # a key or attribute that is there but holds no tensor is no misspelling (a property or class attribute too)
    if output in out if isinstance(out, Mapping) else hasattr(out, output):
        return ""
    near = difflib.get_close_matches(output, [k for k in _names(out) if isinstance(k, str)], n=1)
    return f" (did you mean {near[0]!r}?)" if near else ""


def _tensor_selectors(out: Any) -> list[str | int]:
    """The keys, fields, attributes or indices of ``out`` that hold a tensor (at most 6), for a hint naming them."""
    names = _names(out)  # a Hugging Face ModelOutput is a mapping of the fields that are set
    if names:
        return [n for n in names if isinstance(_pick(out, n), torch.Tensor)][:6]
    if isinstance(out, (tuple, list)):
        return [i for i, v in enumerate(out) if isinstance(v, torch.Tensor)][:6]
    return []


def _asked_for_hint(step: Any, out: Any) -> str:
    """For a Hugging Face output without ``hidden_states`` or ``attentions``: those are returned only when asked."""
    if not (isinstance(step, str) and callable(getattr(out, "to_tuple", None))):
        return ""
    for field in ("hidden_states", "attentions"):
        if step.endswith(field) and _pick(out, step) is None:
            return (f"; a Hugging Face model returns {field} only when asked: set model.config.output_{field} = True "
                    "before wrapping it")
    return ""


def _pick(out: Any, output: OutputSelector) -> Any:
    if isinstance(output, tuple):  # a path: a step that finds nothing ends it (select_output names that step)
        for step in output:
            out = _pick(out, step)
            if out is None:
                return None
        return out
    if output is None:
        if isinstance(out, torch.Tensor):
            return out
        if isinstance(out, Mapping) and "logits" in out:
            return out["logits"]
        return getattr(out, "logits", None)
    if callable(output) and not isinstance(output, str):
        return output(out)
    if isinstance(output, str):
        if isinstance(out, Mapping):
            return out.get(output)
        return getattr(out, output, None)
    if isinstance(out, Mapping) and callable(getattr(out, "to_tuple", None)):
        out = out.to_tuple()  # a Hugging Face ModelOutput: out[0] is its first field that is set
    if isinstance(out, (tuple, list)) and -len(out) <= output < len(out):
        return out[output]
    return None


def select_output(out: Any, output: OutputSelector = None) -> torch.Tensor:
    """The tensor that ``output`` selects from a model's output ``out`` (see the module docstring).

    Raises ``TypeError`` naming the selector and what the model returned when the selection fails.
    Shapes: any -> the selected tensor, unchanged (the same object when ``out`` is a tensor).
    """
    picked = _pick(out, output)
    if isinstance(picked, torch.Tensor):
        return picked
    if isinstance(output, tuple):
        raise _path_error(out, output)
    what = describe_output(out)
    if output is None:
        found = _tensor_selectors(out)
        example = (f"output={found[0]!r} (its tensors: {', '.join(map(repr, found))})" if found else
                   "a key or attribute name, an index or a callable such as output=lambda out: out.pooler_output")
        raise TypeError(f"the model returned {what}, not a tensor, and it has no .logits; pass output= to say which "
                        f"tensor to use, e.g. {example}")
    got = "nothing" if picked is None else f"a {type(picked).__name__}"
    # a wrapper returns the tensor its own output= selected: the selector copied into a check finds nothing to pick
    fix = (": the model already returns a tensor (a wrapper returns the one its output= selected), so leave output= "
           "out here" if isinstance(out, torch.Tensor) else "; pass output= a key, attribute, index or callable that "
           "gives a tensor")
    raise TypeError(f"output={output!r}{_did_you_mean(output, out)} selected {got} from the model's output, "
                    f"which is {what}{_asked_for_hint(output, out) or fix}")


def _path_error(out: Any, path: tuple[str | int, ...]) -> TypeError:
    """The error of a path ``output=`` that gave no tensor: the step where it failed, what that step was applied to
    and what it found (a misspelt name gets its nearest one)."""
    for i, step in enumerate(path):
        picked = _pick(out, step)
        if picked is None or (i == len(path) - 1 and not isinstance(picked, torch.Tensor)):
            where = "the model's output" if i == 0 else f"what {path[:i]!r} selected"
            got = "nothing" if picked is None else f"a {type(picked).__name__}"
            end = ("; end the path before this step, or select from the tensor with a callable" if
                   isinstance(out, torch.Tensor) else "")
            return TypeError(f"output={path!r}: step {i + 1}, {step!r}{_did_you_mean(step, out)}, selected {got} "
                             f"from {where}, which is {describe_output(out)}{end}{_asked_for_hint(step, out)}")
        out = picked
    return TypeError(f"output={path!r} selected no tensor")  # not reached: a path that ends in a tensor returns it


def _is_count(value: Any) -> bool:
    """An integer >= 0 (NumPy's included), not a bool."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool) and value >= 0


def patch_tokens_to_map(tokens: torch.Tensor, *, prefix_tokens: int,
                        grid: tuple[int, int] | None = None) -> torch.Tensor:
    """A vision transformer's patch tokens as feature maps, which ``align_views=True`` turns back view by view.

    ``prefix_tokens``: the tokens in front of the patches, dropped: 1 for a class token (torchvision's, CLIP's and
    Hugging Face's ViT), 1 + r with r register tokens, 0 for none. It has no default because the count of tokens
    cannot tell (9 tokens are 3 x 3 patches, or a class token, 4 registers and 2 x 2 patches), and a wrong layout
    still passes ``check_equivariance`` of the wrapper: the orbit average makes any fixed layout equivariant.
    ``grid``: the patch grid (h, w), for an image that is not square; default square. The patches must be in
    row-major order, as torchvision's, timm's, Hugging Face's and CLIP's are (CLIP's transformer is sequence-first,
    [T, B, D]: permute it to [B, T, D] first). The image must be whole patches, so that the group moves whole
    patches (torchvision's ViT refuses other sizes; Hugging Face's, with interpolate_pos_encoding=True, drops the
    remainder without a word). The maps are a view of ``tokens``, not a copy.

    Shapes: tokens [B, T, D] -> maps [B, D, h, w], T = prefix_tokens + h * w.
    """
    if not isinstance(tokens, torch.Tensor):
        raise TypeError(f"patch_tokens_to_map takes tokens [B, T, D], got {describe_output(tokens)}: select the token "
                        "tensor first (a Hugging Face model's out.last_hidden_state, a timm model's "
                        "forward_features(x))")
    if tokens.ndim != 3:
        hint = (": a channels-last map [B, h, w, C], as torchvision's Swin gives, needs .permute(0, 3, 1, 2) "
                "instead" if tokens.ndim == 4 else "")
        raise ValueError(f"patch_tokens_to_map takes tokens [B, T, D], got shape {tuple(tokens.shape)}{hint}")
    if not _is_count(prefix_tokens):
        raise TypeError(f"prefix_tokens must be an integer >= 0 (1 for a class token), got {prefix_tokens!r}")
    if grid is not None and not (isinstance(grid, (tuple, list)) and len(grid) == 2
                                 and all(_is_count(n) and n >= 1 for n in grid)):
        raise TypeError(f"grid must be (h, w), two integers >= 1, got {grid!r}")
    count = tokens.shape[1]
    patches = count - prefix_tokens
    h, w = grid if grid is not None else (math.isqrt(max(patches, 0)),) * 2
    if patches < 1:
        raise ValueError(f"patch_tokens_to_map: prefix_tokens={prefix_tokens} leaves no patch of the {count} tokens; "
                         "pass the number of tokens in front of the patches (a class token: 1; a class token and r "
                         "registers: 1 + r)")
    if patches != h * w:
        fits = (f"but grid={tuple(grid)} holds {h * w}" if grid is not None else "which fill no square grid; pass "
                "grid=(h, w) for an image that is not square, or check prefix_tokens (a class token: 1; a class "
                "token and r registers: 1 + r)")
        raise ValueError(f"patch_tokens_to_map: {count} tokens less prefix_tokens={prefix_tokens} leave {patches} "
                         f"patch tokens, {fits}")
    return tokens[:, prefix_tokens:].transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], h, w)
