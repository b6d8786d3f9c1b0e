"""The notebook regression of `make test`: nbval re-executes each committed chapter and compares its outputs.

Usage (from the repository root; `make test` calls it after the unit tests):

    .venv/bin/python tools/nbval_chapters.py [--jobs N] [ID ...]

Each chapter (every committed `notebooks/<id>.ipynb`, in the order of `_toc.yml`; or the ids given) runs in a
pytest process of its own with nbval and the tolerance plugin (`tests/nbval_tolerance.py`): trained numbers are
compared within their measured tolerance, everything else exactly. `--jobs N` runs N chapters at the same time,
each kernel on its share of the cores, as `make book` does and with its default (two on 2 cores or more, one where
the environment already sets the kernels' threads, as a numerical mode does): a chapter whose runs are not cached
trains them, and two at a time take about 0.6 of the wall time (`bench/two_at_a_time.py`). The chapters that time
code run alone first, the claim list last. A chapter run beside another writes its output to
`_build/nbval/<id>.log`, printed whole when it fails. Every chapter runs; the exit status is 1 if any failed.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import build_book  # noqa: E402

ROOT = build_book.ROOT
NOTEBOOKS = ROOT / "notebooks"  # the committed chapters, whose outputs are the reference
LOGS = build_book.BUILD / "nbval"


def nbval_command(notebook: Path) -> list[str]:
    """The pytest command that checks one notebook against its committed outputs (its kernel runs in the
    notebook's folder; run it under ``nbval_env``)."""
    return [sys.executable, "-m", "pytest", "-p", "nbval_tolerance", "--nbval", "--nbval-current-env",
            "--nbval-sanitize-with", str(ROOT / "tests" / "nbval_sanitize.cfg"), str(notebook),
            "-p", "no:cacheprovider"]


def nbval_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """This process's environment with ``tests/`` on ``PYTHONPATH`` (where the tolerance plugin lives) and
    ``extra`` (a kernel's threads) added."""
    python_path = os.pathsep.join(filter(None, [str(ROOT / "tests"), os.environ.get("PYTHONPATH")]))
    return dict(os.environ, PYTHONPATH=python_path, **(extra or {}))


def chapter_ids(requested: list[str]) -> list[str]:
    """The chapters to check: the committed notebooks in the order of ``_toc.yml`` (any not listed there last, so
    that none is skipped), or ``requested``, each of which must have a committed notebook."""
    committed = sorted(p.stem for p in NOTEBOOKS.glob("*.ipynb"))
    if not committed:
        raise SystemExit("nbval_chapters: no committed notebooks/*.ipynb to check (`make notebooks` makes them)")
    if requested:
        missing = [i for i in requested if i not in committed]
        if missing:
            raise SystemExit(f"nbval_chapters: no notebooks/<id>.ipynb for {', '.join(missing)}; "
                             f"committed: {', '.join(committed)}")
        return requested
    listed = [i for i in build_book.notebook_ids() if i in committed]
    return listed + [i for i in committed if i not in listed]


def check(nb_id: str, at_once: int, env: dict[str, str] | None) -> None:
    """nbval on one chapter; ``build_book.ChapterFailed`` if it fails. Alone, its output goes to the terminal;
    beside others, to ``_build/nbval/<id>.log``, printed whole on failure."""
    log = LOGS / f"{nb_id}.log" if at_once > 1 else None
    print(f"nbval: notebooks/{nb_id}.ipynb" + (f" (output in {build_book.rel(log)})" if log else ""), flush=True)
    start = time.perf_counter()
    if log is not None:
        log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") if log is not None else contextlib.nullcontext() as output:
        returncode = build_book._run_child(nbval_command(NOTEBOOKS / f"{nb_id}.ipynb"), None,
                                           nbval_env(env), None, output=output)
    seconds = time.perf_counter() - start
    if returncode != 0:
        text = "" if log is None else ":\n" + log.read_text(errors="replace")
        raise build_book.ChapterFailed(f"nbval failed on notebooks/{nb_id}.ipynb (exit {returncode}, "
                                       f"{seconds:.0f} s){text}")
    print(f"nbval: notebooks/{nb_id}.ipynb passed in {seconds:.0f} s", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("ids", nargs="*", metavar="ID", help="chapters to check (default: every committed one)")
    parser.add_argument("--jobs", type=int, default=None, metavar="N",
                        help="chapters at the same time (default: as make book on the small profile)")
    args = parser.parse_args(argv)
    if args.jobs is not None and args.jobs < 1:
        parser.error(f"--jobs must be 1 or more, got {args.jobs}")
    ids = chapter_ids(args.ids)
    jobs = build_book.default_jobs("small") if args.jobs is None else args.jobs
    if note := build_book.sharing_note(ids, jobs):
        print(f"nbval: {note} (--jobs 1: one at a time, on every core)", flush=True)
    start = time.perf_counter()
    failures = build_book.run_chapters(ids, jobs, keep_going=True, run_one=check)
    seconds = time.perf_counter() - start
    if failures:
        print(f"nbval: {len(failures)} of {len(ids)} chapter(s) failed in {seconds:.0f} s: {', '.join(failures)}",
              file=sys.stderr, flush=True)
        return 1
    print(f"nbval: {len(ids)} chapters passed in {seconds:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
