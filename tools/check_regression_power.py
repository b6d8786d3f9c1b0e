"""Check that the notebook regression still catches a real change: one parameter changed must fail it.

Usage (from the repository root):

    .venv/bin/python tools/check_regression_power.py [--chapter tab1_original_vs_updated] [--parameter prelr]
                                                     [--factor 10]

Copies the committed `notebooks/<chapter>.ipynb` (outputs are the reference) to a temporary folder, multiplies
the default of one parameter in its parameters cell by `--factor`, and runs the same nbval command as
`make test` on the copy. The tolerance-aware comparison must fail on it, with outputs that differ; the script exits
0 when it does, and 1 (with nbval's output) when the changed chapter passes, which would mean the tolerances hide
real changes, or when a cell raised an error instead (an error fails nbval whatever the tolerances).
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import nbformat

sys.path.insert(0, str(Path(__file__).resolve().parent))
from nbval_chapters import nbval_command, nbval_env  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
ANSI = re.compile(r"\x1b\[[0-9;]*m")  # nbval colours its report


def change_parameter(path: Path, name: str, factor: float) -> str:
    """Multiply the default of ``name`` in the parameters cell; returns the new line."""
    nb = nbformat.read(path, as_version=4)
    cell = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
    pattern = re.compile(rf"^({re.escape(name)}\s*:\s*\w+\s*=\s*)([-+0-9.eE]+)", re.MULTILINE)
    match = pattern.search(cell.source)
    if not match:
        raise SystemExit(f"{path.name}: no numeric parameter {name!r} in the parameters cell")
    value = float(match.group(2)) * factor
    cell.source = pattern.sub(lambda m: f"{m.group(1)}{value:g}", cell.source, count=1)
    nbformat.write(nb, path)
    return pattern.search(cell.source).group(0)


def failed_cells(nbval_stdout: str) -> tuple[list[int], list[int]]:
    """(cells whose outputs differ, cells that raised) in nbval's report; nbval titles both failures "Notebook cell
    execution failed", so the detail line tells them apart."""
    text = ANSI.sub("", nbval_stdout)
    differ = sorted({int(n) for n in re.findall(r"Cell (\d+): Cell outputs differ", text)})
    raised = sorted({int(n) for n in re.findall(r"Cell (\d+): (?:Cell execution caused an exception|Timeout)", text)})
    return differ, raised


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chapter", default="tab1_original_vs_updated", help="the chapter (default: Table 1)")
    parser.add_argument("--parameter", default="prelr", help="the parameter to perturb (default: prelr)")
    parser.add_argument("--factor", type=float, default=10.0, help="its value is multiplied by this (default: 10)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / f"{args.chapter}.ipynb"
        shutil.copy2(ROOT / "notebooks" / f"{args.chapter}.ipynb", copy)
        line = change_parameter(copy, args.parameter, args.factor)
        print(f"check_regression_power: {args.chapter} with `{line}`; nbval must fail", flush=True)
        result = subprocess.run([*nbval_command(copy), "-q"], cwd=ROOT / "notebooks", env=nbval_env(),
                                capture_output=True, text=True)
    differ, raised = failed_cells(result.stdout)
    if result.returncode == 0 or raised or not differ:
        print(result.stdout[-3000:])
        why = ("the changed chapter passed the regression" if result.returncode == 0 else
               f"cells {raised} raised an error, which proves nothing about the tolerances" if raised else
               "nbval failed without a cell whose outputs differ")
        print(f"check_regression_power: FAILED: {why}", file=sys.stderr)
        return 1
    print(f"check_regression_power: ok, the regression caught the change: the outputs of cells {differ} differ "
          "beyond their class's tolerance (or at all, in cells compared exactly)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
