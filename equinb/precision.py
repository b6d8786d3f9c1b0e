"""The article's precision: CLIP's fp16 rule for any module, and fp16 storage emulated in fp32 on a CPU.

On CUDA, ``clip.load`` builds CLIP with ``clip.model.convert_weights``, which stores in fp16 only the weights and
biases of convolutions and linear layers, the input projections of multi-head attention, and the parameters
named ``text_projection`` and ``proj``. Norm layers, positional and class embeddings and every buffer stay fp32.
The article finetunes that model with plain SGD, so each fp16 weight is updated in place and an update smaller
than half its fp16 spacing is lost, while the fp32 parameters keep every update.

- ``clip_half_names``: the parameters that rule halves, for any module (CLIP, MobileNetV2, ...);
- ``apply_clip_precision``: give a module those dtypes (``emulate=False``: real fp16, as on the article's GPU),
  or keep fp32 tensors that hold fp16 values (``emulate=True``): fp16 arithmetic on a CPU is many times slower
  than fp32, so the small profile stores fp16 values and computes in fp32;
- ``HalfStorageSGD``: SGD with momentum whose step rounds the gradient, the momentum buffer and the weight to fp16
  exactly where PyTorch's SGD on fp16 tensors rounds them (``tests/test_engine.py`` checks it against real fp16).
"""

from __future__ import annotations

from typing import Any, Callable, Iterable

import torch
from torch import nn

__all__ = ["GROUPS", "parameter_dtype", "full_precision", "clip_half_names", "parameter_groups",
           "apply_clip_precision", "round_fp16", "HalfStorageSGD"]

Tensor = torch.Tensor
_ATTENTION_HALVES = ("in_proj_weight", "q_proj_weight", "k_proj_weight", "v_proj_weight", "in_proj_bias", "bias_k",
                     "bias_v")
_NAMED_HALVES = ("text_projection", "proj")
_NORMS = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm)
# What finetuning can change in a trunk, by how CLIP stores it (the labels of ``parameter_groups``).
GROUPS = ("fp16 weights", "norm affine (fp32)", "other fp32 parameters", "norm statistics")


def parameter_dtype(module: Any) -> torch.dtype | None:
    """The dtype of a module's first floating-point parameter (None for a function or a module without one)."""
    if not isinstance(module, nn.Module):
        return None
    return next((t.dtype for t in module.parameters() if t.is_floating_point()), None)


def full_precision(x: Tensor | None) -> Tensor | None:
    """A half-precision tensor (fp16 or bf16, as an fp16 trunk's views on CUDA) in float32, any other (or None) as
    it is: views are combined, and views or logits compared, in float32, whether computed now or read from a cache
    of an fp16 trunk's outputs."""
    return x.float() if x is not None and x.dtype in (torch.float16, torch.bfloat16) else x


def clip_half_names(module: nn.Module) -> list[str]:
    """Names (as ``named_parameters`` gives them) of the parameters that ``clip.model.convert_weights`` would cast to
    fp16: weight and bias of every ``Conv1d``, ``Conv2d`` and ``Linear`` (attention output projections included),
    the input projections and key/value biases of every ``MultiheadAttention``, and parameters named
    ``text_projection`` or ``proj``. Everything else stays fp32."""
    names = []
    for prefix, sub in module.named_modules():
        dot = f"{prefix}." if prefix else ""
        if isinstance(sub, (nn.Conv1d, nn.Conv2d, nn.Linear)):
            names += [f"{dot}{n}" for n in ("weight", "bias") if getattr(sub, n, None) is not None]
        if isinstance(sub, nn.MultiheadAttention):
            names += [f"{dot}{n}" for n in _ATTENTION_HALVES if getattr(sub, n, None) is not None]
        names += [f"{dot}{n}" for n in _NAMED_HALVES if isinstance(getattr(sub, n, None), nn.Parameter)]
    own = {name for name, _ in module.named_parameters()}
    return [n for n in dict.fromkeys(names) if n in own]


def parameter_groups(module: nn.Module) -> dict[str, str]:
    """The group of each parameter and floating-point buffer of ``module`` (``GROUPS``): the weights CLIP stores in
    fp16 (``clip_half_names``), the affine parameters of norm layers, the other fp32 parameters (positional and
    class embeddings, ...), and the running statistics of BatchNorm (which change only in training mode)."""
    half = set(clip_half_names(module))
    norms = {prefix for prefix, sub in module.named_modules() if isinstance(sub, _NORMS)}
    out = {}
    for name, _ in module.named_parameters():
        owner = name.rsplit(".", 1)[0] if "." in name else ""
        out[name] = GROUPS[0] if name in half else GROUPS[1] if owner in norms else GROUPS[2]
    for name, b in module.named_buffers():
        if b.is_floating_point():
            out[name] = GROUPS[3]
    return out


def round_fp16(x: Tensor) -> Tensor:
    """``x`` rounded to the nearest fp16 value (inf where fp16 overflows), in ``x``'s dtype."""
    return x.to(torch.float16).to(x.dtype)


@torch.no_grad()
def apply_clip_precision(module: nn.Module, *, emulate: bool) -> list[str]:
    """Give ``module`` CLIP's parameter dtypes: fp16 for ``clip_half_names``, fp32 for the rest (buffers fp32).

    ``emulate=True`` keeps every parameter fp32 and rounds the halved ones to fp16 values (fp16 storage, fp32
    arithmetic). Returns the halved names. Idempotent.
    """
    half = set(clip_half_names(module))
    for name, p in module.named_parameters():
        if name in half and not emulate:
            p.data = p.data.to(torch.float16)
        else:
            p.data = p.data.float()
            if name in half:
                p.copy_(round_fp16(p))
    for b in module.buffers():
        if b.is_floating_point():
            b.data = b.data.float()
    return sorted(half)


class HalfStorageSGD(torch.optim.Optimizer):
    """SGD with momentum (no dampening, no weight decay) for fp32 tensors that hold fp16 values.

    Each step does what ``torch.optim.SGD`` does to an fp16 parameter, rounding where fp16 storage rounds:
    ``g = fp16(grad)``; ``buf = g`` on the first step, else ``buf = fp16(fp16(buf * momentum) + g)``;
    ``w = fp16(w - lr * buf)``. An update below half the fp16 spacing of a weight therefore leaves it unchanged,
    as on the article's GPU. Each operation is computed in fp32 and rounded once, as CUDA and ATen's vector kernels
    compute fp16 (ATen's plain CPU kernels round ``lr * buf`` to fp16 first, which no GPU does).
    """

    def __init__(self, params: Iterable[Tensor], lr: float, momentum: float = 0.0) -> None:
        super().__init__(params, dict(lr=lr, momentum=momentum))

    @torch.no_grad()
    def step(self, closure: Callable[[], Tensor] | None = None) -> Tensor | None:  # noqa: D102 (see the class)
        loss = None
        if closure is not None:  # the optimiser API: re-evaluate the loss, with gradients, before the step
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, momentum = group["lr"], group["momentum"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = round_fp16(p.grad)
                state = self.state[p]
                if momentum:
                    buf = state.get("momentum_buffer")
                    buf = g.clone() if buf is None else round_fp16(round_fp16(buf * momentum) + g)
                    state["momentum_buffer"] = buf
                    g = buf
                p.copy_(round_fp16(p - lr * g))
        return loss
