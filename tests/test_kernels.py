"""equinb.kernels: the GPU kernel settings change nothing on a CPU, and on CUDA change only the layout and the
autotuner flag, both restored afterwards (the CUDA tests run where a GPU is present)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from equinb.kernels import tuned_kernels, uses_tuned_kernels

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def _convnet() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 4, 3),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten()).eval()


def test_nothing_changes_on_a_cpu() -> None:
    net, x = _convnet(), torch.randn(2, 3, 12, 12)
    before, flag = net(x), torch.backends.cudnn.benchmark
    assert not uses_tuned_kernels(net, "cpu")
    with tuned_kernels(net, "cpu"):
        assert torch.backends.cudnn.benchmark == flag
        assert net[0].weight.is_contiguous()
        assert torch.equal(net(x), before)


def test_a_model_without_convolutions_is_left_alone() -> None:
    assert not uses_tuned_kernels(nn.Linear(3, 2), "cuda")


@cuda
def test_on_cuda_layout_and_autotuner_are_set_and_restored_after_an_error() -> None:
    net = _convnet().cuda()
    weight, flag = net[0].weight, torch.backends.cudnn.benchmark
    with pytest.raises(RuntimeError, match="inside"):
        with tuned_kernels(net, "cuda"):
            assert torch.backends.cudnn.benchmark
            assert net[0].weight.is_contiguous(memory_format=torch.channels_last)
            assert net[0].weight is weight  # the same Parameter: an optimiser built before keeps stepping it
            raise RuntimeError("inside")
    assert torch.backends.cudnn.benchmark == flag and net[0].weight.is_contiguous()


@cuda
def test_on_cuda_outputs_move_by_float_rounding_only() -> None:
    net, x = _convnet().cuda(), torch.randn(4, 3, 32, 32, device="cuda")
    before = net(x)
    with tuned_kernels(net, "cuda"):
        after = net(x)
    assert torch.allclose(after, before, rtol=1e-4, atol=1e-5)
