#!/bin/bash
# The paper smoke on an offline GPU machine that has torch but not the book's packages. Run from the root of a
# copy of the checkout that includes .gpu/ (made here by `make gpu-bundle`):
#
#   bash tools/gpu_smoke.sh [paper_smoke.py options, e.g. --budget-s 360 --stop-s 450]
#
# Installs .gpu/whl into a private folder (nothing of the machine's own Python changes), puts it and the checkout
# first on PYTHONPATH (the chapters' kernels inherit it), and runs tools/paper_smoke.py with its executed notebooks
# under /tmp/paper_smoke. When $OUT is set (a device runner's result folder), the log is written there as it
# grows, and summary.json and each executed chapter are copied there after every chapter, so that a run stopped
# at the runner's limit still returns them. PYTHON picks the interpreter (default python3). Exit status:
# paper_smoke.py's, or 2 when the bundle is missing, is for another Python or does not install.
set -u
export EQUINB_SMOKE_STARTED=$(date +%s)  # paper_smoke.py's --stop-s counts from here, the install included
PYTHON=${PYTHON:-python3}
SITE=${EQUINB_GPU_SITE:-/tmp/equinb-gpu-site}
WORK=/tmp/paper_smoke
shopt -s nullglob
wheels=(.gpu/whl/*.whl)
if [ ${#wheels[@]} -eq 0 ]; then
    echo "gpu_smoke: no wheels in .gpu/whl: run 'make gpu-bundle' where PyPI can be reached, and carry .gpu" >&2
    exit 2
fi
tag=$("$PYTHON" -c 'import sys; print("cp%d%d" % sys.version_info[:2])') || exit 2
other=()
for wheel in "${wheels[@]}"; do
    # a wheel built for one CPython ABI (cp312-cp312) must be this Python's; abi3 and pure wheels are left to pip
    case "$wheel" in *-cp3[0-9]*-cp3[0-9]*-*) [[ "$wheel" == *"-$tag-$tag-"* ]] || other+=("$wheel");; esac
done
if [ ${#other[@]} -gt 0 ]; then
    echo "gpu_smoke: $PYTHON is $tag but ${#other[@]} wheels are for another Python (${other[0]}): make the bundle" \
         "with 'make gpu-bundle ARGS=\"--python X.Y\"' for this machine's version" >&2
    exit 2
fi
rm -rf "$SITE"  # pip --target keeps what a folder already holds: an earlier bundle must not shadow this one
"$PYTHON" -m pip install --quiet --no-index --no-deps --no-compile --target "$SITE" "${wheels[@]}" || exit 2
export PYTHONPATH="$SITE:$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
mkdir -p "$WORK"
report=()
[ -n "${OUT:-}" ] && report=(--report "$OUT")
"$PYTHON" tools/paper_smoke.py --out "$WORK" ${report[@]+"${report[@]}"} "$@" 2>&1 | tee "${OUT:-$WORK}/paper_smoke.log"
exit "${PIPESTATUS[0]}"
