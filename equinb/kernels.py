"""Faster convolution kernels on a GPU: cuDNN's autotuner and channels-last memory for a convolutional trunk.

Both choose *which* kernels compute a convolution, not what the model is: the weights, their dtypes (CLIP's fp16)
and the optimiser's rounding stay as published. A kernel may sum in another order, so an output can differ from
the default kernels' in its last fp16 bits; ``bench/prefinetune.py`` prints the largest relative change of the
embeddings (``tuned_embedding_change``). On any device but CUDA nothing changes: on a CPU channels-last takes other
oneDNN kernels, and the committed small-profile numbers were made without it.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
from torch import nn

__all__ = ["tuned_kernels", "uses_tuned_kernels"]


def uses_tuned_kernels(module: nn.Module, device: str | torch.device) -> bool:
    """Whether ``tuned_kernels`` changes anything for ``module`` on ``device``: CUDA and at least one 2-d
    convolution (a ViT's patch embedding counts)."""
    return torch.device(device).type == "cuda" and any(isinstance(m, nn.Conv2d) for m in module.modules())


@contextmanager
def tuned_kernels(module: nn.Module, device: str | torch.device) -> Iterator[nn.Module]:
    """Inside the block, ``module``'s 4-d weights are channels-last and cuDNN autotunes its kernels (CUDA only).

    The autotuner picks the fastest kernel per input shape on first use (a few slow first steps); channels-last
    lets the fp16 tensor-core kernels run without layout conversions. On exit, also after an error, the autotuner
    setting is restored and the weights return to the default (contiguous) layout, the one CLIP builds. The
    parameters stay the same objects, so an optimiser built before or inside the block keeps working.
    On another device (or a trunk without convolutions) the block runs unchanged.
    """
    if not uses_tuned_kernels(module, device):
        yield module
        return
    benchmark = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = True
    module.to(memory_format=torch.channels_last)
    try:
        yield module
    finally:
        torch.backends.cudnn.benchmark = benchmark
        module.to(memory_format=torch.contiguous_format)
