"""Prove that the README's two commands pass whatever the CPU: `make book`, then `make test`, per numerical mode.

Usage (from the repository root; `make test-portable` calls this):

    .venv/bin/python tools/test_portable.py [--modes MODE ...] [--skip-book]   # default: numerical_modes.PORTABLE

Each mode of `tools/numerical_modes.py` makes this machine compute as another CPU would (other vector kernels,
other thread counts). For each, with an empty data folder `_build/portable/<mode>/data` (features and trained runs
are computed again under that mode), it runs `make book` and then `make test` against the committed reference
outputs, which were made in the native mode. The book of a mode is built in `_build/portable/<mode>/build` (the one
in `_build/` stays as it is). Logs go to `_build/portable/<mode>.log`; a table of the results is
printed at the end, and the exit status is non-zero if any step failed.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from numerical_modes import HOLDOUT, MODES, PORTABLE, mode_env  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "_build" / "portable"


def run_step(target: str, env: dict, log: Path) -> tuple[bool, float]:
    """``make <target>`` with ``env``, output appended to ``log``; (passed, seconds)."""
    start = time.perf_counter()
    with log.open("a") as handle:
        handle.write(f"\n===== make {target} =====\n")
        handle.flush()
        code = subprocess.run(["make", target], cwd=ROOT, env=env, stdout=handle, stderr=subprocess.STDOUT).returncode
    return code == 0, time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--modes", nargs="*", default=list(PORTABLE), choices=list(MODES),
                        help=f"default: {' '.join(PORTABLE)} (held out from the measurement: "
                             f"{' '.join(HOLDOUT)})")
    parser.add_argument("--skip-book", action="store_true", help="only `make test` (its nbval run executes "
                                                                  "every chapter anyway)")
    args = parser.parse_args(argv)
    OUT.mkdir(parents=True, exist_ok=True)
    results = []
    for mode in args.modes:
        data = OUT / mode / "data"
        if data.exists():
            shutil.rmtree(data)  # a cache made under another mode would hide the difference
        data.mkdir(parents=True)
        log = OUT / f"{mode}.log"
        log.write_text(f"mode {mode}: {mode_env(mode)}; EQUINB_DATA={data}\n")
        # its own build folder: the book of a mode never replaces the one in _build/
        env = dict(os.environ, EQUINB_DATA=str(data), EQUINB_CACHE=str(data / "cache"),  # empty, whatever is set
                   EQUINB_BUILD=str(OUT / mode / "build"), **mode_env(mode))
        for target in ([] if args.skip_book else ["book"]) + ["test"]:
            print(f"test_portable: {mode}: make {target} (log: {log.relative_to(ROOT)})", flush=True)
            passed, seconds = run_step(target, env, log)
            results.append((mode, target, passed, seconds))
            print(f"test_portable: {mode}: make {target} {'passed' if passed else 'FAILED'} in {seconds:.0f} s",
                  flush=True)
    print("\nmode           step   result  seconds")
    for mode, target, passed, seconds in results:
        print(f"{mode:14s} {target:6s} {'passed' if passed else 'FAILED':7s} {seconds:7.0f}")
    return 0 if all(r[2] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
