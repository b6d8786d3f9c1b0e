"""The symmetry checkers measure what they document: the largest error over every element of the group, and fail
exactly above ``atol``. A checker that skipped an element would call any model symmetric under a group of order 2."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from torch import nn

from equinb import check_equivariance, check_invariance, get_group


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Tanh()).double()  # neither invariant nor equivariant


def _images() -> torch.Tensor:
    return torch.randn(3, 3, 6, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("name", ["rot90", "rot180", "hflip", "vflip", "d4"])
def test_checkers_return_the_largest_error_over_every_element(name: str) -> None:
    group, f, x = get_group(name), _net(), _images()
    with torch.no_grad():
        invariance = max((f(group.act(x, k)) - f(x)).abs().max().item() for k in range(1, group.order))
        equivariance = max((f(group.act(x, k)) - group.act(f(x), k)).abs().max().item() for k in range(1, group.order))
    assert check_invariance(f, x, name) == invariance > 1e-3
    assert check_equivariance(f, x, name) == equivariance > 1e-3


def test_atol_is_the_boundary() -> None:
    f, x = _net(), _images()
    error = check_invariance(f, x, "hflip")
    assert check_invariance(f, x, "hflip", atol=error) == error
    with pytest.raises(AssertionError):
        check_invariance(f, x, "hflip", atol=0.99 * error)
    error = check_equivariance(f, x, "hflip")
    assert check_equivariance(f, x, "hflip", atol=error) == error
    with pytest.raises(AssertionError):
        check_equivariance(f, x, "hflip", atol=0.99 * error)


@pytest.mark.parametrize("check", [check_invariance, check_equivariance])
def test_a_nan_under_any_element_is_reported_not_skipped(check) -> None:
    x = torch.randn(2, 3, 6, 6)
    calls = []

    def model(z: torch.Tensor) -> torch.Tensor:  # NaN under the third call only (the second non-identity element)
        calls.append(1)
        return z * float("nan") if len(calls) == 3 else z

    assert math.isnan(check(model, x, "rot90"))
    calls.clear()
    with pytest.raises(AssertionError, match="nan"):
        check(model, x, "rot90", atol=1e-3)


def test_an_empty_batch_or_a_non_numeric_atol_is_refused_with_a_message() -> None:
    with pytest.raises(ValueError, match="empty batch"):
        check_invariance(nn.Identity(), torch.zeros(0, 3, 4, 4), "rot90")
    with pytest.raises(TypeError, match="atol must be a number"):
        check_equivariance(nn.Identity(), torch.zeros(1, 3, 4, 4), "rot90", atol="1e-5")


def test_a_check_names_the_devices_when_the_images_are_elsewhere() -> None:
    model = torch.nn.Conv2d(3, 2, 3).to("meta")
    with pytest.raises(ValueError, match=r"x is on cpu and the model on meta; move x first: x.to\('meta'\)"):
        check_invariance(model, torch.zeros(1, 3, 8, 8), "rot90")


class Scaled(nn.Module):
    """A random linear classifier whose logits are multiplied by ``scale`` (a random network whose logits vanish,
    or a head initialised at zero for 0), or that ignores its input (``constant``). Shapes: [B, 3, H, W] -> [B, 4]."""

    def __init__(self, scale: float = 1.0, constant: bool = False) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc, self.scale, self.constant = nn.LazyLinear(4).double(), scale, constant

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.fc(x.flatten(1)) * self.scale
        return logits[:1].expand_as(logits) if self.constant else logits


@pytest.mark.parametrize("check", [check_invariance, check_equivariance])
def test_a_check_whose_model_cannot_fail_says_so(check) -> None:
    """Outputs within the tolerance of zero, or the same for every image: any model would pass, so the check warns
    (the bare model is not symmetric, and its error is small only because its outputs are)."""
    x = _images()
    maps = check is check_equivariance
    wrap = (lambda m: nn.Sequential(m, nn.Unflatten(1, (1, 2, 2)))) if maps else (lambda m: m)  # [B, 1, 2, 2]
    with pytest.warns(UserWarning, match=r"outputs on x are at most [0-9.]+e-09 in size, within the float-rounding "
                                         r"bound \(1e-05\) of zero: any model's .* error would be that small"):
        assert check(wrap(Scaled(1e-9)), x, "rot90") < 1e-8
    with pytest.warns(UserWarning, match=r"outputs on x are at most 0 in size, within atol \(0.001\) of zero"):
        check(wrap(Scaled(0.0)), x, "rot90", atol=1e-3)
    with pytest.warns(UserWarning, match="same outputs for every image of x"):
        check(wrap(Scaled(constant=True)), x, "rot90")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # outputs that vary: the check can tell, and does
        assert check(wrap(Scaled()), x, "rot90") > 1e-3
        assert check(wrap(Scaled(1e-9)), x, "trivial") == 0.0  # no other element: nothing to tell


def test_a_model_of_another_dtype_is_named_with_its_cast() -> None:
    model = nn.Conv2d(3, 2, 3).double()
    with pytest.raises(RuntimeError, match=r"x is float32 and the model's weights float64: pass "
                                           r"x\.to\(torch\.float64\)"):
        check_equivariance(model, _images().float(), "hflip")


def test_another_error_of_a_model_of_another_dtype_gets_no_cast() -> None:
    """The model fails for a reason that is not the dtype (its own bug): the error passes as it is."""
    class Broken(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 2, 3).double()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            raise RuntimeError("shape mismatch in the user's code")

    with pytest.raises(RuntimeError) as info:
        check_invariance(Broken(), _images().float(), "hflip")
    assert str(info.value) == "shape mismatch in the user's code"


def test_a_check_of_a_scalar_output_runs() -> None:
    """A function of the batch that returns one number (a loss, a mean) is checked as it is."""
    assert check_invariance(lambda z: z.mean(), _images(), "rot90") < 1e-12


def test_a_numpy_image_is_shown_the_conversion() -> None:
    import numpy as np

    image = np.zeros((6, 6, 3), dtype=np.uint8)
    with pytest.raises(TypeError, match=r"got ndarray; a NumPy image \[H, W, C\] goes in as torch\.from_numpy\(a\)"
                                        r"\.permute\(2, 0, 1\)\[None\]\.float\(\) / 255"):
        check_invariance(_net(), image, "rot90")
    converted = torch.from_numpy(image).permute(2, 0, 1)[None].double() / 255
    assert check_invariance(_net(), converted, "rot90") == 0.0  # the fix runs (a blank image is invariant)
    with pytest.raises(TypeError) as info:
        check_invariance(_net(), [1, 2], "rot90")
    assert "NumPy" not in str(info.value)  # no shape: the plain message

