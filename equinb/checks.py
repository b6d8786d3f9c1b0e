"""Measured symmetry: invariance and equivariance errors of any function, and how to print them.

Used by the tests (which assert the errors are at float rounding, or are not), by the chapters (which
print them) and by ``analysis`` and ``nlg`` (which measure trained and language models).
"""

from __future__ import annotations

import math
from typing import Callable

import torch

from .groups import Group

__all__ = ["invariance_error", "equivariance_error", "format_error"]

Tensor = torch.Tensor


@torch.no_grad()
def invariance_error(fn: Callable[[Tensor], Tensor], x: Tensor, group: Group) -> float:
    """``max_g max |fn(g x) - fn(x)|`` over the group's non-identity elements. Shapes: x [B, C, H, W]."""
    base = fn(x)
    return max((fn(group.act(x, k)) - base).abs().max().item() for k in range(1, group.order))


@torch.no_grad()
def equivariance_error(fn: Callable[[Tensor], Tensor], x: Tensor, group: Group,
                       act_output: Callable[[Tensor, int], Tensor] | None = None) -> float:
    """``max_g max |fn(g x) - g fn(x)|``; ``act_output(y, k)`` is g_k on outputs (default: the group's action).

    Shapes: x [B, C, H, W]; outputs of any shape ``act_output`` accepts.
    """
    act = act_output if act_output is not None else group.act
    base = fn(x)
    return max((fn(group.act(x, k)) - act(base, k)).abs().max().item() for k in range(1, group.order))


def format_error(err: float, scale: float = 1.0, rtol: float = 1e-5) -> str:
    """A symmetry error for printing: the value when it is real, else ``< bound`` (float rounding).

    Errors at float-rounding level differ between machines and runs (summation order), so a notebook that
    printed them would fail its regression test. ``bound = rtol * 10^ceil(log10(max(scale, 1)))``: a power of
    ten, so that a small change of the scale does not change the printed bound.
    """
    bound = rtol * 10.0 ** math.ceil(math.log10(max(abs(scale), 1.0)))
    return f"< {bound:.0e} (float rounding)" if err < bound else f"{err:.2g}"
