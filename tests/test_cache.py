"""Caches: stable keys, atomic writes, compute-once loading that survives damaged files, code fingerprints."""

import math
from pathlib import Path

import pytest
import torch

import equinb.cache as cache
import equinb.setups as su
from equinb.cache import (atomic_save, atomic_write_text, cache_key, load_or_compute, module_fingerprint,
                          sha256_file, source_fingerprint)
from equinb.checks import format_error


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
    # a diverged model's outputs give a scale that is not finite: the error prints as it is, no bound
    assert format_error(0.1, math.nan) == "0.1" and format_error(math.nan, math.inf) == "nan"


@pytest.mark.parametrize("damage", ["truncated", "empty", "garbage"])
def test_a_damaged_cache_file_is_named_moved_aside_and_recomputed(tmp_path: Path, damage: str) -> None:
    path = tmp_path / "features.pt"
    load_or_compute(path, lambda: {"v": torch.arange(1000)})
    data = path.read_bytes()
    path.write_bytes({"truncated": data[: len(data) // 2], "empty": b"", "garbage": b"not a torch file"}[damage])
    with pytest.warns(RuntimeWarning, match="features.pt could not be read"):
        result = load_or_compute(path, lambda: {"v": torch.arange(5)})
    assert torch.equal(result["v"], torch.arange(5))  # recomputed, not the damaged content
    assert (tmp_path / "features.pt.damaged").exists()  # kept aside for inspection, not deleted
    assert torch.equal(torch.load(path, weights_only=True)["v"], torch.arange(5))  # the good result is saved


def test_a_value_a_weights_only_load_refuses_is_a_clear_error_not_a_damaged_file(tmp_path: Path) -> None:
    """A numpy scalar cannot be read back with weights_only=True: recomputing it on every run would leave a new
    ``.damaged`` file each time, so saving it is refused, and so is loading a file an older version wrote."""
    import numpy as np

    path = tmp_path / "scores.pt"
    with pytest.raises(TypeError, match=r"scores.pt holds a numpy\S*scalar object.*only tensors, numbers, strings"):
        load_or_compute(path, lambda: {"accuracy": np.float64(0.5)})
    assert not list(tmp_path.iterdir())  # nothing written, not even a temporary file
    torch.save({"accuracy": np.float64(0.5)}, path)  # as written before saving checked it
    with pytest.raises(TypeError, match=r"cache file .*scores.pt holds a numpy\S*scalar object.*delete the file"):
        load_or_compute(path, lambda: {"accuracy": 0.5})
    assert path.exists() and not (tmp_path / "scores.pt.damaged").exists()  # left for the user, not moved aside
    plain = {"accuracy": 0.5, "v": torch.arange(3), "names": ["a", "b"], "shape": (2, None)}
    atomic_save(plain, tmp_path / "plain.pt")  # numbers, strings and containers are fine
    assert torch.load(tmp_path / "plain.pt", weights_only=True)["names"] == ["a", "b"]


def test_atomic_write_text_replaces_whole_files_and_leaves_nothing_on_failure(tmp_path: Path, monkeypatch) -> None:
    import hashlib
    import os

    path = tmp_path / "sub" / "record.json"
    atomic_write_text(path, "old\n")
    atomic_write_text(path, "new \u2011 text\n")
    assert path.read_text(encoding="utf-8") == "new \u2011 text\n" and [p.name for p in path.parent.iterdir()] == [
        "record.json"]
    assert path.stat().st_mode & 0o777 == (tmp_path / "sub").stat().st_mode & 0o666  # a plain file's mode
    assert sha256_file(path) == hashlib.sha256(path.read_bytes()).hexdigest()
    assert sha256_file(path, chunk=3) == sha256_file(path)  # streamed: the chunk size changes nothing

    def fail(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(OSError, match="disk full"):
        atomic_write_text(path, "lost\n")
    assert path.read_text(encoding="utf-8") == "new \u2011 text\n"  # the old text, whole
    assert [p.name for p in path.parent.iterdir()] == ["record.json"]  # no temporary file left behind


def test_source_fingerprint_ignores_documentation_but_not_code(tmp_path: Path) -> None:
    source = tmp_path / "m.py"
    source.write_text('"""Module."""\n\ndef f(x):\n    """Doc."""\n    return x + 1  # comment\n')
    before = source_fingerprint(source)
    source.write_text('"""Another module text."""\n\n\ndef f(x):\n    """Rewritten doc."""\n'
                      '    # why\n    return x + 1\n')
    assert source_fingerprint(source) == before
    source.write_text('"""Module."""\n\ndef f(x):\n    """Doc."""\n    return x + 2\n')
    assert source_fingerprint(source) != before
    source.write_text('"""Module."""\n\ndef f(x: "list[int]") -> int:\n    return x + 1\n')
    assert source_fingerprint(source) == before  # type hints of a signature change nothing it does
    source.write_text('"""Module."""\n\nclass C:\n    x: int = 1\n')
    fields = source_fingerprint(source)
    source.write_text('"""Module."""\n\nclass C:\n    x: ClassVar[int] = 1\n')
    assert source_fingerprint(source) != fields  # an annotated assignment can decide a dataclass's fields


def test_source_fingerprint_ignores_error_messages_but_not_what_raises(tmp_path: Path) -> None:
    source = tmp_path / "m.py"

    def fingerprint(body: str) -> str:
        source.write_text(f"def f(x):\n    if x < 0:\n        {body}\n    return x\n")
        return source_fingerprint(source)

    before = fingerprint('raise ValueError("x must be >= 0")')
    assert fingerprint('raise ValueError(f"x must not be negative, got {x}")') == before
    assert fingerprint('raise ValueError("x must be " + "positive")') == before
    assert fingerprint('raise TypeError("x must be >= 0")') != before  # another class can be caught differently
    assert fingerprint('raise ValueError("x must be >= 0", x)') != before  # an argument that is not text stays
    assert fingerprint('raise ValueError(2)') != fingerprint('raise ValueError(3)')  # a number is no message
    source.write_text('def f(x):\n    if x <= 0:\n        raise ValueError("x must be >= 0")\n    return x\n')
    assert source_fingerprint(source) != before  # the condition that raises is code


def test_editing_the_engine_docstrings_keeps_the_run_cache(tmp_path: Path, monkeypatch) -> None:
    """The run-cache key hashes the training modules; prose edits in the real engine must not change it."""
    import shutil

    package = Path(su.__file__).parent
    copy = tmp_path / "equinb"
    copy.mkdir()
    for name in su.TRAINING_SOURCES:
        shutil.copy(package / f"{name}.py", copy / f"{name}.py")
    monkeypatch.setattr(cache, "PACKAGE", copy)
    before = su.training_code_fingerprint()
    engine = copy / "engine.py"
    text = engine.read_text()
    engine.write_text(text.replace('"""Top-1 accuracy (%)', '"""Top-1 accuracy in percent (%)', 1)
                      .replace("    was_training = model.training\n",
                               "    # remember the mode\n    was_training = model.training\n", 1))
    assert engine.read_text() != text
    assert su.training_code_fingerprint() == before
    code = "top1(predicted, data.labels[:len(predicted)])"
    assert code in text
    engine.write_text(text.replace(code, "top1(predicted, data.labels[:len(predicted) - 1])"))
    assert su.training_code_fingerprint() != before


@pytest.mark.parametrize("error", [PermissionError("permission denied"), OSError(5, "Input/output error"),
                                   RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: not enough "
                                                "memory")])
def test_a_machine_error_while_loading_keeps_the_cache_file(tmp_path: Path, monkeypatch, error: Exception) -> None:
    """An error of the machine, not of the file, is raised as it is: the good file is neither moved aside nor
    recomputed (a paper profile's features take hours)."""
    path = tmp_path / "features.pt"
    load_or_compute(path, lambda: {"v": torch.arange(3)})

    def failing_load(*args, **kwargs):
        raise error

    monkeypatch.setattr(torch, "load", failing_load)
    with pytest.raises(type(error)):
        load_or_compute(path, lambda: pytest.fail("recomputed a good file"))
    assert path.exists() and not (tmp_path / "features.pt.damaged").exists()


def test_a_killed_saves_temporary_file_is_removed_once_stale(tmp_path: Path) -> None:
    import os
    import time

    path = tmp_path / "features.pt"
    stale, fresh = tmp_path / ".features.pt.abc123.tmp", tmp_path / ".features.pt.def456.tmp"
    other = tmp_path / ".logits.pt.abc123.tmp"  # another file's: not this call's to remove
    for tmp in (stale, fresh, other):
        tmp.write_bytes(b"half a file")
    old = time.time() - 2 * 3600
    os.utime(stale, (old, old))
    os.utime(other, (old, old))
    load_or_compute(path, lambda: {"v": torch.arange(3)})
    assert not stale.exists() and fresh.exists() and other.exists()


def test_cache_folders_expand_the_home_folder(monkeypatch, tmp_path: Path) -> None:
    from equinb.cache import cache_dir, run_cache_dir

    monkeypatch.setenv("HOME", str(tmp_path))
    assert cache_dir("~/data") == tmp_path / "data" / "cache"
    assert run_cache_dir("~/data") == tmp_path / "data" / "cache" / "runs"


def test_discard_removes_the_file_and_what_killed_saves_of_it_left(tmp_path) -> None:
    import os
    import time

    from equinb.cache import atomic_save, discard

    path = atomic_save({"step": 1}, tmp_path / "partial_x.pt")
    stale, fresh = tmp_path / ".partial_x.pt.abc.tmp", tmp_path / ".partial_x.pt.def.tmp"
    for tmp in (stale, fresh):
        tmp.write_bytes(b"half")
    old = time.time() - 2 * 3600
    os.utime(stale, (old, old))
    discard(path)
    assert not path.exists() and not stale.exists()
    assert fresh.exists()  # a save in progress (written within the hour) is left alone


def test_two_processes_that_need_one_result_compute_it_once(tmp_path: Path) -> None:
    """``make book`` runs two chapters at once: one computes a shared feature cache, the other waits and reads it
    (without the lock both would compute it, each taking the minutes it takes)."""
    import subprocess
    import sys

    script = (
        "import sys, time\n"
        "from pathlib import Path\n"
        "from equinb.cache import load_or_compute\n"
        "def compute():\n"
        "    with open(sys.argv[2], 'a') as log:\n"
        "        log.write('computed\\n')\n"
        "    time.sleep(1.0)\n"
        "    return {'value': 7}\n"
        "ready = Path(sys.argv[2]).with_name('ready-' + sys.argv[3])\n"
        "ready.touch()\n"
        "while len(list(ready.parent.glob('ready-*'))) < 2:  # both imported torch: they ask at the same time\n"
        "    time.sleep(0.01)\n"
        "print(load_or_compute(Path(sys.argv[1]), compute)['value'])\n"
    )
    target, log = tmp_path / "shared.pt", tmp_path / "computations.log"
    root = Path(__file__).resolve().parent.parent
    env = {**__import__("os").environ, "PYTHONPATH": str(root)}
    procs = [subprocess.Popen([sys.executable, "-c", script, str(target), str(log), str(i)], env=env,
                              stdout=subprocess.PIPE, text=True) for i in range(2)]
    outputs = [p.communicate(timeout=120)[0].strip() for p in procs]
    assert [p.returncode for p in procs] == [0, 0] and outputs == ["7", "7"]
    assert log.read_text().count("computed") == 1
