"""The package as a user installs it: a wheel (not the editable checkout) holds every module and data file."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_wheel_installs_and_its_modules_and_data_import(tmp_path: Path) -> None:
    import shutil

    source = tmp_path / "source"  # a copy, so that the build leaves nothing in the checkout
    shutil.copytree(ROOT / "equinb", source / "equinb", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md", "LICENSE", "NOTICE"):
        shutil.copy2(ROOT / name, source / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(tmp_path / "dist"), str(source)], check=True, capture_output=True)
    wheel = next((tmp_path / "dist").glob("equinb-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    modules = sorted(p.name for p in (ROOT / "equinb").glob("*.py"))
    assert sorted(n.split("/")[1] for n in names if n.startswith("equinb/") and n.endswith(".py")) == modules
    for data in ("equinb/article_numbers.csv", "equinb/noise_measured.json"):
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
