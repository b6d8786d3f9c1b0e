#!/bin/bash
# The paper smoke on an offline GPU machine that has torch but not the book's packages. Run from the root of a
# copy of the checkout that includes .gpu/ (made here by `make gpu-bundle`):
#
#   bash tools/gpu_smoke.sh [paper_smoke.py options, e.g. --budget-s 420]
#
# Installs .gpu/whl into a private folder (nothing of the machine's own Python changes), puts it and the checkout
# first on PYTHONPATH (the chapters' kernels inherit it), and runs tools/paper_smoke.py with its executed notebooks
# under /tmp/paper_smoke. Its log and summary.json are copied to $OUT when the variable is set (a device runner's
# result folder). PYTHON picks the interpreter (default python3). Exit status: paper_smoke.py's, or 2 when the
# bundle is missing or does not install.
set -u
PYTHON=${PYTHON:-python3}
SITE=${EQUINB_GPU_SITE:-/tmp/equinb-gpu-site}
WORK=/tmp/paper_smoke
shopt -s nullglob
wheels=(.gpu/whl/*.whl)
if [ ${#wheels[@]} -eq 0 ]; then
    echo "gpu_smoke: no wheels in .gpu/whl: run 'make gpu-bundle' where PyPI can be reached, and carry .gpu" >&2
    exit 2
fi
rm -rf "$SITE"  # pip --target keeps what a folder already holds: an earlier bundle must not shadow this one
"$PYTHON" -m pip install --quiet --no-index --no-deps --no-compile --target "$SITE" "${wheels[@]}" || exit 2
export PYTHONPATH="$SITE:$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
mkdir -p "$WORK"
"$PYTHON" tools/paper_smoke.py --out "$WORK" "$@" 2>&1 | tee "$WORK/paper_smoke.log"
status=${PIPESTATUS[0]}
if [ -n "${OUT:-}" ]; then
    cp "$WORK/paper_smoke.log" "$OUT/"
    cp "$WORK/summary.json" "$OUT/" 2>/dev/null || true
fi
exit "$status"
