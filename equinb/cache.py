"""Caches on disk: where they live, their keys, atomic writes, compute-once loading that survives damage.

One place decides the folders: ``data_root()`` (``$EQUINB_DATA``, else ``~/.cache/equinb``) holds the
datasets, ``cache_dir()`` (``$EQUINB_CACHE``, else ``<data root>/cache``) the computed features and heads,
``run_cache_dir()`` (``<cache>/runs``) the trained runs. A key (``cache_key``) hashes everything that changes a
result; for code, ``source_fingerprint`` hashes the syntax tree without docstrings, so editing prose does not
invalidate a cache while a changed statement does.
"""

from __future__ import annotations

import ast
import errno
import hashlib
import json
import os
import pickle
import re
import tempfile
import time
import types
import warnings
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Iterator, TypeVar

import torch

from .progress import report

__all__ = ["data_root", "cache_dir", "run_cache_dir", "cache_key", "atomic_save", "atomic_write_text", "load_saved",
           "ThrottledSave", "computing", "discard", "load_or_compute", "load_or_compute_resumable", "sha256_file",
           "tensor_fingerprint", "module_fingerprint", "class_code_fingerprint", "source_fingerprint",
           "package_code_fingerprint", "PACKAGE"]

T = TypeVar("T")
PACKAGE = Path(__file__).parent  # equinb/: the folder whose modules ``package_code_fingerprint`` names


def data_root() -> Path:
    """The folder that holds every dataset: ``$EQUINB_DATA`` if set and non-empty, else ``~/.cache/equinb``."""
    return Path(os.environ.get("EQUINB_DATA") or "~/.cache/equinb").expanduser()


CACHE_ENV = "EQUINB_CACHE"  # the caches apart from the datasets: another disk, or a folder of one's own experiments


def cache_dir(root: str | Path | None = None) -> Path:
    """Computed features, heads, logits and runs: ``<root>/cache``; with an empty or None root (a chapter's
    ``data_root`` left empty), ``$EQUINB_CACHE`` if set and non-empty, else ``<data_root()>/cache``."""
    if root:
        return Path(root).expanduser() / "cache"
    return Path(os.environ.get(CACHE_ENV) or data_root() / "cache").expanduser()


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
    """Hash of every parameter and buffer of a module (names, shapes, values), and of any plain extra state (an
    equinb wrapper's group and options)."""
    digest = hashlib.sha256()
    for name, value in sorted(module.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor_fingerprint(value).encode() if isinstance(value, torch.Tensor) else repr(value).encode())
    return digest.hexdigest()[:24]


def class_code_fingerprint(cls: type) -> str:
    """Hash of what a class's own methods do: the bytecode, names and constants of every function, property and
    static or class method defined in it and in its bases outside torch and equinb. Unlike its source file, this
    exists for a class defined in a notebook cell or a REPL, and it does not change with the file or the session
    (file names and line numbers are left out); the Python version does change it."""
    digest = hashlib.sha256()
    for base in cls.__mro__:
        if base is object or base.__module__.split(".")[0] in ("torch", "equinb", "builtins"):
            continue
        digest.update(f"{base.__module__}.{base.__qualname__}".encode())
        for name, member in sorted(vars(base).items()):
            function = getattr(member, "__func__", None) or getattr(member, "fget", None) or member
            code = getattr(function, "__code__", None)
            if isinstance(code, types.CodeType):
                digest.update(name.encode())
                _update_with_code(digest, code)
    return digest.hexdigest()[:24]


def _update_with_code(digest: Any, code: types.CodeType) -> None:
    digest.update(code.co_code)
    digest.update(repr(code.co_names).encode())
    for const in code.co_consts:  # nested functions, lambdas and comprehensions are code constants
        if isinstance(const, types.CodeType):
            _update_with_code(digest, const)
        else:
            digest.update(repr(const).encode())


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """SHA256 hex digest of a file, read in chunks (a weight file or a dataset never sits in memory whole)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


@lru_cache(maxsize=1)  # read once: setting the umask to read it is process-wide
def _new_file_mode() -> int:
    """The mode ``open`` gives a new file (0o666 less the umask); ``mkstemp``'s own 0o600 would hide the result."""
    umask = os.umask(0o077)
    os.umask(umask)
    return 0o666 & ~umask


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` (UTF-8) to a temporary file in the same folder, then rename: a reader sees the old text or
    the new, never half of it; a failed write leaves no temporary file behind."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.chmod(tmp, _new_file_mode())  # as a plain write would have made it
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


_REFUSED = re.compile(r"Unsupported (?:global: GLOBAL|class) ([\w.]+)")  # torch >= 2.4, and older releases


def _weights_only_refusal(err: BaseException) -> str | None:
    """The global (``module.name``) that ``torch.load(weights_only=True)`` refused, when that is why it failed."""
    found = _REFUSED.search(str(err)) if isinstance(err, pickle.UnpicklingError) else None
    return found.group(1) if found else None


def _not_cacheable(where: str, refused: str) -> str:
    return (f"{where} holds a {refused} object, which torch.load(weights_only=True) refuses to read: a cached "
            "value must hold only tensors, numbers, strings, None and dicts, lists or tuples of them (convert it, "
            "e.g. float(x) or torch.as_tensor(x))")


def _check_weights_only(saved: Path, path: Path) -> None:
    """Refuse (TypeError) a just-saved file that ``torch.load(weights_only=True)`` could never read back."""
    scan = getattr(torch.serialization, "get_unsafe_globals_in_checkpoint", None)  # torch >= 2.5
    if scan is None or not scan(str(saved)):  # reads only the pickled structure, no tensor data: cheap
        return
    try:  # the scan is static; let the loader itself confirm the refusal before failing a computed result
        torch.load(saved, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        refused = _weights_only_refusal(err)
        if refused is not None:
            raise TypeError(_not_cacheable(f"the value to save to {path}", refused)) from None
        raise


def atomic_save(obj: Any, path: str | Path, *, weights_only: bool = True) -> Path:
    """``torch.save`` to a temporary file in the same folder, then rename: a killed run leaves no half file.

    With ``weights_only`` (the default: every file here is read with ``torch.load(weights_only=True)``), an
    object that such a load would refuse (a numpy scalar, an instance of a class of one's own) raises a
    TypeError naming its type, and nothing is written.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            torch.save(obj, handle)
        if weights_only:
            _check_weights_only(Path(tmp), path)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load_or_compute(path: str | Path, compute: Callable[[], T], progress_label: str = "") -> T:
    """Load ``path`` (weights_only) if it exists, else compute, save atomically and return. With
    ``progress_label``, a result that was loaded says so in the progress file (``equinb.progress.report``).

    A file that cannot be read (truncated or empty, as after a full disk or a killed copy) is treated as
    missing: a warning names it, it is moved aside to ``<name>.damaged`` and the result is recomputed. An error
    of the machine rather than of the file (a permission or I/O error, or memory that ran out) is raised and the
    file kept. Temporary files that a killed save left (untouched for an hour) are removed. A value
    that a weights-only load refuses (a numpy scalar, say) is a TypeError, when it is computed and for a file an
    older version wrote: recomputing it would only leave another unreadable file behind, on every run.
    """
    path = Path(path)
    found = load_saved(path)
    if found is None:
        with computing(path):
            found = load_saved(path)  # computed by another process while this one waited for it
            if found is None:
                result = compute()
                atomic_save(result, path)
                return result
    if progress_label:
        report(f"{progress_label}: read from the cache")
    return found


@contextmanager
def computing(path: str | Path) -> Iterator[None]:
    """Hold an exclusive lock on ``.<name>.lock`` beside ``path`` while its result is computed, so that another
    process that needs the same result (two chapters run at once by ``make book``) waits for it and reads it
    instead of computing it too. The lock goes with the process (a killed one holds nothing), and its file is
    removed when the lock is released. Where the platform has no ``fcntl`` (Windows), nothing is held."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = path.with_name(f".{path.name}.lock")
    while True:
        handle = open(lock, "a")
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:  # the holder before removed the file it locked: lock the one now at that name instead
            if os.stat(lock).st_ino == os.fstat(handle.fileno()).st_ino:
                break
        except FileNotFoundError:
            pass
        handle.close()
    try:
        yield
    finally:
        lock.unlink(missing_ok=True)  # before the lock is released: a waiter then finds it gone, and retries
        handle.close()


def load_saved(path: str | Path) -> Any | None:
    """What ``atomic_save`` wrote at ``path`` (read weights_only, onto the CPU), or None when there is nothing to
    read: no file, or one that cannot be read, which is moved aside to ``<name>.damaged`` with a warning (see
    ``load_or_compute`` for the errors that are raised instead). Also removes the temporaries a killed save left."""
    path = Path(path)
    _remove_stale_temporaries(path)
    if path.exists():
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except (KeyboardInterrupt, MemoryError):
            raise
        except Exception as err:  # noqa: BLE001 - any unreadable file is recomputed, never trusted
            if _machine_error(err):  # the machine's trouble, not the file's: keep the file
                raise
            refused = _weights_only_refusal(err)
            if refused is not None:
                raise TypeError(_not_cacheable(f"cache file {path}", refused)
                                + "; fix the computation that made it, then delete the file") from None
            aside = path.with_name(path.name + ".damaged")
            os.replace(path, aside)
            warnings.warn(f"cache file {path} could not be read ({type(err).__name__}: {str(err)[:120]}); "
                          f"moved it to {aside.name} and recomputing", RuntimeWarning, stacklevel=3)
    return None


class ThrottledSave:
    """Saves a long computation's progress to ``path`` (``atomic_save``) at most once every ``every_s`` seconds, so
    that a stopped run can go on from it (read it back with ``load_saved``, remove it with ``discard``) while short
    runs pay nothing: call it with a function of no arguments that builds what to save; it is called only when a
    save is due.

    The saves are a convenience, never the result: a save that fails for the machine (a full disk, a permission)
    warns and ends the saving, and the computation goes on; an earlier save, if any, stays a state to go on from.
    """

    def __init__(self, path: str | Path, every_s: float) -> None:
        if not every_s >= 0:
            raise ValueError(f"the interval between saves must be a number of seconds >= 0, got {every_s!r}")
        self.path, self.every_s = Path(path), every_s
        self.saved_at = time.monotonic()
        self.failed = False

    def __call__(self, progress: Callable[[], Any]) -> bool:
        """Save ``progress()`` if ``every_s`` seconds have passed since the start or the last save; whether it saved."""
        if self.failed or time.monotonic() - self.saved_at < self.every_s:
            return False
        try:
            atomic_save(progress(), self.path)
        except OSError as err:
            self.failed = True
            warnings.warn(f"could not save progress to {self.path} ({type(err).__name__}: {err}); going on without "
                          "saving it, so a stop would lose the work since the last save", RuntimeWarning,
                          stacklevel=2)
            return False
        self.saved_at = time.monotonic()
        return True


def discard(path: str | Path) -> None:
    """Remove ``path`` (a saved progress no longer needed) and the temporaries that killed saves of it left."""
    path = Path(path)
    path.unlink(missing_ok=True)
    _remove_stale_temporaries(path)


def load_or_compute_resumable(path: str | Path, compute: Callable[[Path], T], progress_label: str = "") -> T:
    """``load_or_compute`` for a computation that saves its progress as it goes: ``compute(partial)`` keeps what it
    has done so far in ``partial`` (``partial_<name>`` beside ``path``), where a computation stopped and started
    again finds it; once the result is saved whole, ``partial`` is removed (``discard``)."""
    path = Path(path)
    partial = path.with_name(f"partial_{path.name}")
    result = load_or_compute(path, lambda: compute(partial), progress_label)
    discard(partial)
    return result


# torch reads a truncated file as OSError(EINVAL), so only these errors say that the machine, not the file, failed
_MACHINE_ERRNOS = {errno.EIO, errno.ENOMEM, errno.EACCES, errno.EPERM, errno.ESTALE, errno.ENODEV, errno.ENXIO}


def _machine_error(err: Exception) -> bool:
    """True for an error that a good file also meets: permissions, I/O, a failed allocation."""
    if isinstance(err, OSError):
        return isinstance(err, PermissionError) or err.errno in _MACHINE_ERRNOS
    return isinstance(err, RuntimeError) and "DefaultCPUAllocator" in str(err)  # torch's failed CPU allocation


_STALE_AFTER_S = 3600.0


def _remove_stale_temporaries(path: Path) -> None:
    """Delete ``atomic_save``'s temporary files of ``path`` untouched for an hour: what a killed save left behind
    (a save in progress writes to its file all along). A paper profile's feature file is gigabytes."""
    for tmp in path.parent.glob(f".{path.name}.*.tmp"):
        try:
            if time.time() - tmp.stat().st_mtime > _STALE_AFTER_S:
                tmp.unlink()
        except FileNotFoundError:  # another process removed or renamed it meanwhile
            pass


def _strip_docstrings(tree: ast.AST) -> ast.AST:
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) \
                    and isinstance(first.value.value, str):
                node.body = node.body[1:] or [ast.Pass()]
    return tree


def _strip_signature_annotations(tree: ast.AST) -> ast.AST:
    # a function's parameter and return annotations never change what it does (under postponed evaluation they
    # are not even evaluated); annotated assignments stay, as a dataclass's fields are its annotations
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            node.returns = None
        elif isinstance(node, ast.arg):
            node.annotation = None
    return tree


def _is_text(node: ast.expr) -> bool:
    """A string literal, an f-string, or an expression that starts from one (``"a" + b``, ``"%s" % x``)."""
    if isinstance(node, ast.BinOp):
        return _is_text(node.left)
    return isinstance(node, ast.JoinedStr) or (isinstance(node, ast.Constant) and isinstance(node.value, str))


def _strip_raised_messages(tree: ast.AST) -> ast.AST:
    # the text of a raised error never reaches a result: a run that raises caches nothing, and no code here reads
    # a caught error's message; its class, its other arguments and the condition that raises it stay
    for node in ast.walk(tree):
        if isinstance(node, ast.Raise) and isinstance(node.exc, ast.Call):
            node.exc.args = [ast.Constant("") if _is_text(arg) else arg for arg in node.exc.args]
    return tree


def source_fingerprint(*paths: str | Path) -> str:
    """Hash of what Python files *do*: their syntax trees without docstrings, comments, layout, the type hints
    of function signatures or the messages of the errors they raise.

    A cached result keyed by it survives edits of documentation, formatting, signatures' type hints and error
    messages, and is recomputed after any change of a statement, name or constant.
    """
    digest = hashlib.sha256()
    for path in paths:
        digest.update(_syntax_dump(Path(path).read_text(), str(path)).encode())
    return digest.hexdigest()[:16]


@lru_cache(maxsize=64)
def _syntax_dump(text: str, filename: str) -> str:
    """What ``source_fingerprint`` hashes of one file's ``text``. Memoised by the text itself, so an edited file is
    parsed again: every training run fingerprints the same ten modules, and parsing them took 0.13 s a run."""
    tree = _strip_raised_messages(_strip_signature_annotations(_strip_docstrings(ast.parse(text, filename=filename))))
    return ast.dump(tree, annotate_fields=False, include_attributes=False)


def package_code_fingerprint(*modules: str) -> str:
    """``source_fingerprint`` of modules of this package, named without ``.py`` (``"engine"`` for
    ``equinb/engine.py``): the code part of a cache key, so that a cached result never outlives a change of what
    the modules that made it do."""
    return source_fingerprint(*(PACKAGE / f"{name}.py" for name in modules))
