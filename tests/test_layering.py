"""The package's layering: every module imports only modules below it in the module map of ``equinb``."""

import ast
import re
from pathlib import Path

import pytest

import equinb

PACKAGE = Path(equinb.__file__).parent


def _layers() -> list[str]:
    """The module map of ``equinb/__init__.py``'s docstring, bottom first."""
    doc = equinb.__doc__ or ""
    return re.findall(r"^    ([a-z_]+) {2,}", doc, flags=re.M)


def _imported_modules(path: Path) -> set[str]:
    """Every ``equinb`` module a file imports, at module level or inside functions."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level == 1 and node.module:
                found.add(node.module.split(".")[0])
            elif node.level == 1 or node.module == "equinb":  # from . import x, from equinb import x
                found.update(alias.name for alias in node.names)
            elif node.module and node.module.startswith("equinb."):
                found.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            found.update(a.name.split(".")[1] for a in node.names if a.name.startswith("equinb."))
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")) == "import_module":
            name = node.args[0].value if node.args and isinstance(node.args[0], ast.Constant) else ""
            if isinstance(name, str) and name.startswith(("equinb.", ".")):
                found.add(name.removeprefix("equinb.").lstrip(".").split(".")[0])
    return found


def test_the_module_map_lists_every_module_once() -> None:
    layers = _layers()
    modules = sorted(p.stem for p in PACKAGE.glob("*.py") if p.stem != "__init__")
    assert sorted(layers) == modules and len(set(layers)) == len(layers)


def test_every_module_imports_only_modules_below_it() -> None:
    layers = _layers()
    rank = {name: i for i, name in enumerate(layers)}
    upward = [(name, dep) for name in layers for dep in _imported_modules(PACKAGE / f"{name}.py")
              if dep in rank and rank[dep] >= rank[name]]
    assert not upward, f"imports that point up (module, imported): {upward}"


def test_training_does_not_import_the_zeroshot_experiment() -> None:
    for name in ("engine", "setups"):
        assert "zeroshot" not in _imported_modules(PACKAGE / f"{name}.py")


@pytest.mark.parametrize("line", ["from .setups import build_setup", "from . import setups",
                                  "from equinb import setups", "import equinb.setups",
                                  "importlib.import_module('equinb.setups')", "import_module('.setups', 'equinb')"])
def test_the_check_catches_an_upward_import(tmp_path: Path, line: str) -> None:
    bad = tmp_path / "groups.py"
    bad.write_text(f"def f():\n    {line}\n")
    assert "setups" in _imported_modules(bad)
