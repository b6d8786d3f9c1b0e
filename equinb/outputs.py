"""Which tensor of a model's output the wrappers and checks use: the ``output=`` selector.

Models return a tensor, a dict, a tuple, a namedtuple or an output object (Hugging Face's ``ModelOutput``
and others carry ``.logits``). A selector names the tensor to use:

- ``None`` (default): the output itself when it is a tensor, else its ``.logits`` (attribute or key);
- a string: a key of a mapping, or an attribute (a namedtuple field, a dataclass field);
- an integer: an index of a tuple or list (a namedtuple included), or of a Hugging Face ``ModelOutput``;
- a callable: ``output(out) -> Tensor``.

Anything else, or a selection that does not give a tensor, raises a ``TypeError`` that names the selector
and describes what the model returned.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Callable, Union

import torch

__all__ = ["OutputSelector", "check_selector", "select_output", "describe_output"]

OutputSelector = Union[None, str, int, Callable[[Any], torch.Tensor]]


def check_selector(output: Any) -> OutputSelector:
    """Refuse a selector that is not None, a string, an integer or a callable (at construction)."""
    if output is None or isinstance(output, str) or callable(output):
        return output
    if isinstance(output, int) and not isinstance(output, bool):
        return output
    raise TypeError(f"output={output!r} is not a selector; pass None (a tensor, or its .logits), a key or attribute "
                    "name (str), an index (int), or a callable that maps the model's output to a tensor")


def _a(name: str) -> str:
    return f"an {name}" if name[:1].lower() in "aeiou" else f"a {name}"


def describe_output(out: Any) -> str:
    """A short description of a model output for error messages: its type and its keys, fields or length."""
    name = type(out).__name__
    if isinstance(out, torch.Tensor):
        return f"a tensor of shape {tuple(out.shape)}"
    if isinstance(out, Mapping):
        return f"{_a(name)} with keys {list(out)[:12]}"
    if isinstance(out, tuple) and hasattr(out, "_fields"):
        return f"a namedtuple {name} with fields {list(out._fields)}"
    if isinstance(out, (tuple, list)):
        kinds = [type(v).__name__ for v in out[:8]]
        return f"{_a(name)} of length {len(out)} ({', '.join(kinds)}{', ...' if len(out) > 8 else ''})"
    fields = [k for k in vars(out) if not k.startswith("_")][:12] if hasattr(out, "__dict__") else []
    return _a(name) + (f" with attributes {fields}" if fields else "")


def _pick(out: Any, output: OutputSelector) -> Any:
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
    what = describe_output(out)
    if output is None:
        raise TypeError(f"the model returned {what}, not a tensor, and it has no .logits; pass output= to say which "
                        "tensor to use: a key or attribute name (output='logits'), an index (output=0) or a "
                        "callable (output=lambda out: out['scores'])")
    got = "nothing" if picked is None else f"a {type(picked).__name__}"
    # a wrapper returns the tensor its own output= selected: the selector copied into a check finds nothing to pick
    fix = (": the model already returns a tensor (a wrapper returns the one its output= selected), so leave output= "
           "out here" if isinstance(out, torch.Tensor) else "; pass output= a key, attribute, index or callable that "
           "gives a tensor")
    raise TypeError(f"output={output!r} selected {got} from the model's output, which is {what}{fix}")
