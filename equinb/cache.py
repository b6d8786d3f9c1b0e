"""Caches on disk: where they live, their keys, atomic writes, compute-once loading that survives damage.

One place decides the folders: ``data_root()`` (``$EQUINB_DATA``, else ``~/.cache/equinb``) holds the
datasets, ``cache_dir()`` (``<data root>/cache``) the computed features and heads, ``run_cache_dir()``
(``<cache>/runs``) the trained runs. A key (``cache_key``) hashes everything that changes a result; for
code, ``source_fingerprint`` hashes the syntax tree without docstrings, so editing prose does not
invalidate a cache while a changed statement does.
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any, Callable, TypeVar

import torch

__all__ = ["data_root", "cache_dir", "run_cache_dir", "cache_key", "atomic_save", "load_or_compute",
           "tensor_fingerprint", "module_fingerprint", "source_fingerprint"]

T = TypeVar("T")


def data_root() -> Path:
    """The folder that holds every dataset: ``$EQUINB_DATA`` if set and non-empty, else ``~/.cache/equinb``."""
    return Path(os.environ.get("EQUINB_DATA") or "~/.cache/equinb").expanduser()


def cache_dir(root: str | Path | None = None) -> Path:
    """Computed features, heads and logits: ``<root>/cache`` (empty or None root: ``data_root()``)."""
    return Path(root or data_root()) / "cache"


def run_cache_dir(root: str | Path | None = None) -> Path:
    """Trained runs (results, histories, module states): ``<root>/cache/runs``."""
    return cache_dir(root) / "runs"


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
    """Load ``path`` (weights_only) if it exists, else compute, save atomically and return.

    A file that cannot be read (truncated or empty, as after a full disk or a killed copy) is treated as
    missing: a warning names it, it is moved aside to ``<name>.damaged`` and the result is recomputed.
    """
    path = Path(path)
    if path.exists():
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except (KeyboardInterrupt, MemoryError):
            raise
        except Exception as err:  # noqa: BLE001 - any unreadable file is recomputed, never trusted
            aside = path.with_name(path.name + ".damaged")
            os.replace(path, aside)
            warnings.warn(f"cache file {path} could not be read ({type(err).__name__}: {str(err)[:120]}); "
                          f"moved it to {aside.name} and recomputing", RuntimeWarning, stacklevel=2)
    result = compute()
    atomic_save(result, path)
    return result


def _strip_docstrings(tree: ast.AST) -> ast.AST:
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) \
                    and isinstance(first.value.value, str):
                node.body = node.body[1:] or [ast.Pass()]
    return tree


def source_fingerprint(*paths: str | Path) -> str:
    """Hash of what Python files *do*: their syntax trees without docstrings, comments or layout.

    A cached result keyed by it survives edits of documentation and formatting, and is recomputed after
    any change of a statement, name or constant.
    """
    digest = hashlib.sha256()
    for path in paths:
        tree = _strip_docstrings(ast.parse(Path(path).read_text(), filename=str(path)))
        digest.update(ast.dump(tree, annotate_fields=False, include_attributes=False).encode())
    return digest.hexdigest()[:16]
