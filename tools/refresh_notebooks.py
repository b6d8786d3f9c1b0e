"""Refresh the committed small-profile outputs: notebooks/<id>.py -> executed -> notebooks/<id>.ipynb.

Usage (from the repository root; `make notebooks` calls this):

    .venv/bin/python tools/refresh_notebooks.py [ID ...]      # default: every notebook listed in _toc.yml

For each notebook: execute `notebooks/<id>.py` with papermill (small profile = the notebook's own defaults, in
`notebooks/` as working directory) into a temporary file, strip papermill's per-cell timing metadata, put the
outputs under the inputs read from the `.py` (jupytext pairing metadata kept), and write `notebooks/<id>.ipynb`.
The `.py` is never modified; the script checks that the written `.ipynb` converts back to exactly the `.py`
(what `jupytext --sync` would keep) and sets the `.ipynb` mtime to the `.py`'s so jupytext sees the pair in step.
"""

from __future__ import annotations

import difflib
import hashlib
import os
import sys
import tempfile
from pathlib import Path

import jupytext
import nbformat
from jupytext.combine import combine_inputs_with_outputs
from jupytext.config import load_jupytext_config

sys.path.insert(0, str(Path(__file__).resolve().parent))
from build_book import ROOT, ChapterFailed, execute, fail, in_execution_order, notebook_ids  # noqa: E402

from equinb.cache import atomic_write_text  # noqa: E402

TEXT_FMT = "py:percent"


def strip_papermill(nb: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """Drop papermill's timing/status metadata and any injected-parameters cell."""
    nb.metadata.pop("papermill", None)
    cells = []
    for cell in nb.cells:
        if "injected-parameters" in cell.metadata.get("tags", []):
            continue
        cell.metadata.pop("papermill", None)
        cell.metadata.pop("execution", None)
        if cell.metadata.get("tags") == []:
            del cell.metadata["tags"]
        cells.append(cell)
    nb.cells = cells
    return nb


def stable_ids(nb: nbformat.NotebookNode, previous: Path) -> None:
    """Keep the cell ids of the committed notebook (jupytext would draw new random ones on every refresh)."""
    old = {}
    if previous.is_file():
        for cell in nbformat.read(previous, as_version=4).cells:
            old.setdefault((cell.cell_type, cell.source), cell.get("id"))
    used: set[str] = set()
    for i, cell in enumerate(nb.cells):
        cell_id = old.get((cell.cell_type, cell.source))
        if not cell_id or cell_id in used:  # new cell, or a repeated source: an id derived from position + text
            cell_id = hashlib.sha1(f"{i}:{cell.source}".encode()).hexdigest()[:8]
        used.add(cell_id)
        cell.id = cell_id


def refresh(nb_id: str) -> None:
    source = ROOT / "notebooks" / f"{nb_id}.py"
    target = ROOT / "notebooks" / f"{nb_id}.ipynb"
    with tempfile.TemporaryDirectory(prefix=f"refresh_{nb_id}_") as tmp:
        executed = Path(tmp) / f"{nb_id}.ipynb"
        try:
            execute(nb_id, "small", executed)
        except ChapterFailed as err:
            fail(str(err))
        outputs = strip_papermill(nbformat.read(executed, as_version=4))
    inputs = jupytext.read(source)  # inputs and pairing metadata, exactly as the .py holds them
    if "kernelspec" not in inputs.metadata:
        print(f"refresh_notebooks: warning: notebooks/{nb_id}.py has no kernelspec, so `papermill "
              f"--help-notebook` and papermill without -k fail on notebooks/{nb_id}.ipynb; add one with "
              f"`jupytext --set-kernel python3 notebooks/{nb_id}.py`", file=sys.stderr, flush=True)
    if len(inputs.cells) != len(outputs.cells):
        fail(f"{nb_id}: the executed notebook has {len(outputs.cells)} cells, the source {len(inputs.cells)}")
    combined = combine_inputs_with_outputs(inputs, outputs, fmt=TEXT_FMT)
    stable_ids(combined, target)
    text = source.read_text()
    config = load_jupytext_config(str(ROOT / "notebooks"))  # applies jupytext.toml's metadata filter
    roundtrip = jupytext.writes(combined, fmt=TEXT_FMT, config=config)
    if roundtrip != text:
        diff = "".join(difflib.unified_diff(text.splitlines(True), roundtrip.splitlines(True),
                                            f"{nb_id}.py", f"{nb_id}.ipynb as py:percent"))
        fail(f"{nb_id}: the refreshed .ipynb would not convert back to the .py (run `jupytext --sync "
             f"notebooks/{nb_id}.py` first); difference:\n{diff}")
    atomic_write_text(target, jupytext.writes(combined, fmt="ipynb"))  # a killed run leaves no half notebook
    st = source.stat()
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns))
    print(f"refresh_notebooks: wrote {target.relative_to(ROOT)}", flush=True)


def main(argv: list[str]) -> None:
    if {"-h", "--help"} & set(argv):
        print(__doc__)
        return
    ids = argv or notebook_ids()
    unknown = [i for i in ids if not (ROOT / "notebooks" / f"{i}.py").is_file()]
    if unknown:
        fail(f"no notebooks/<id>.py for: {', '.join(unknown)}; chapters: {', '.join(notebook_ids())}")
    for nb_id in in_execution_order(ids):  # the claim list reads the chapters refreshed before it
        refresh(nb_id)


if __name__ == "__main__":
    main(sys.argv[1:])
