"""Results and caches: cache keys, atomic saving and loading, printing of symmetry errors."""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, TypeVar

import torch

__all__ = ["cache_key", "atomic_save", "load_or_compute", "tensor_fingerprint", "module_fingerprint",
           "format_error"]

T = TypeVar("T")


def cache_key(**parts: Any) -> str:
    """A short stable hash of everything that changes a cached result (JSON of sorted keys)."""
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:24]


def tensor_fingerprint(tensor: torch.Tensor) -> str:
    """SHA256 (shortened) of a tensor's bytes, dtype and shape."""
    t = tensor.detach().cpu().contiguous()
    digest = hashlib.sha256(f"{t.dtype}{tuple(t.shape)}".encode())
    digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()[:24]


def module_fingerprint(module: torch.nn.Module) -> str:
    """Hash of every parameter and buffer of a module (names, shapes, values)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor_fingerprint(tensor).encode())
    return digest.hexdigest()[:24]


def atomic_save(obj: Any, path: str | Path) -> Path:
    """``torch.save`` to a temporary file in the same folder, then rename: a killed run leaves no half file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            torch.save(obj, handle)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load_or_compute(path: str | Path, compute: Callable[[], T]) -> T:
    """Load ``path`` (weights_only) if it exists, else compute, save atomically and return."""
    path = Path(path)
    if path.exists():
        return torch.load(path, map_location="cpu", weights_only=True)
    result = compute()
    atomic_save(result, path)
    return result


def format_error(err: float, scale: float = 1.0, rtol: float = 1e-5) -> str:
    """A symmetry error for printing: the value when it is real, else ``< bound`` (float rounding).

    Errors at float-rounding level differ between machines and runs (summation order), so a notebook that
    printed them would fail its regression test. ``bound = rtol * 10^ceil(log10(max(scale, 1)))``: a power of
    ten, so that a small change of the scale does not change the printed bound.
    """
    bound = rtol * 10.0 ** math.ceil(math.log10(max(abs(scale), 1.0)))
    return f"< {bound:.0e} (float rounding)" if err < bound else f"{err:.2g}"
