"""Caches and printing helpers: stable keys, atomic writes, compute-once, float-rounding errors."""

from pathlib import Path

import pytest
import torch

from equinb.report import atomic_save, cache_key, format_error, load_or_compute, module_fingerprint


def test_cache_key_is_stable_and_sensitive() -> None:
    assert cache_key(a=1, b=[1, 2]) == cache_key(b=[1, 2], a=1)
    assert cache_key(a=1, b=[1, 2]) != cache_key(a=1, b=[2, 1])
    layer = torch.nn.Linear(2, 2)
    before = module_fingerprint(layer)
    with torch.no_grad():
        layer.weight[0, 0] += 1e-6
    assert module_fingerprint(layer) != before


def test_atomic_save_and_load_or_compute(tmp_path: Path) -> None:
    calls = []
    path = tmp_path / "sub" / "x.pt"
    first = load_or_compute(path, lambda: calls.append(1) or {"v": torch.arange(3)})
    second = load_or_compute(path, lambda: calls.append(1) or {"v": torch.zeros(3)})
    assert calls == [1] and torch.equal(first["v"], second["v"])

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError, match="interrupted"):
        atomic_save(Unpicklable(), tmp_path / "broken.pt")
    assert not list(tmp_path.glob("*broken*"))  # no half-written file is left for a later run to trust


def test_format_error_hides_only_float_rounding() -> None:
    assert format_error(1e-9, 9.2) == "< 1e-04 (float rounding)"
    assert format_error(1e-9, 9.0) == format_error(1e-9, 9.9)  # the bound is a power of ten
    assert format_error(0.15, 1.5) == "0.15"
    assert format_error(2e-3, 0.5) == "0.002"
