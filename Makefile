# graphexec developer entry points. Every target bootstraps what it needs:
#   .venv      the dev venv: `pip install -e .` (base) or `-e '.[test]'`, redone whenever
#              pyproject.toml is newer than the stamp .venv/.stamp-<extra>
#   .venv-ref  a separate venv with Ray and Dask distributed, for `make bench-compare` only
# Needs only a Python >= 3.10 with pip and venv (PYTHON=python3.11 make test, to choose).

PYTHON ?= python3
VENV := .venv
VENV_REF := .venv-ref
PY := $(VENV)/bin/python
PY_REF := $(VENV_REF)/bin/python
PIP_FLAGS ?= --disable-pip-version-check

# Lint what exists: empty folders do not survive a git clone.
LINT_PATHS := $(wildcard graphexec tests benchmarks examples)

.PHONY: help demo test lint fmt bench bench-compare clean distclean

help:
	@echo "make demo           run the end-to-end demo (python -m graphexec demo)"
	@echo "make test           run the test suite and the graph/ doctests"
	@echo "make lint           ruff check, ruff format --check, mypy"
	@echo "make fmt            apply ruff format and ruff's safe fixes (then review the diff)"
	@echo "make bench          run the benchmark suite (graphexec only)"
	@echo "make bench-compare  benchmarks side by side with Ray and Dask (venv .venv-ref)"
	@echo "make clean          remove caches and build output; distclean also the venvs"

# --------------------------------------------------------------------------- venvs
# $(PY) exists once the venv does; the stamps record which extras were installed from
# which pyproject.toml.
$(PY):
	$(PYTHON) -m venv $(VENV)

# An up-to-date test install includes the base one.
$(VENV)/.stamp-base: pyproject.toml | $(PY)
	if [ ! $(VENV)/.stamp-test -nt pyproject.toml ]; then \
		$(PY) -m pip install $(PIP_FLAGS) -e . ; fi
	touch $@

$(VENV)/.stamp-test: pyproject.toml | $(PY)
	$(PY) -m pip install $(PIP_FLAGS) -e '.[test]'
	touch $@

$(PY_REF):
	$(PYTHON) -m venv $(VENV_REF)

$(VENV_REF)/.stamp-ref: pyproject.toml | $(PY_REF)
	$(PY_REF) -m pip install $(PIP_FLAGS) ray dask distributed -e .
	touch $@

# --------------------------------------------------------------------------- targets
demo: $(VENV)/.stamp-base
	$(PY) -m graphexec demo

test: $(VENV)/.stamp-test
	$(PY) -m pytest tests --doctest-modules graphexec/graph graphexec/scheduler/messages.py -q

lint: $(VENV)/.stamp-test
	$(VENV)/bin/ruff check $(LINT_PATHS)
	$(VENV)/bin/ruff format --check $(LINT_PATHS)
	$(VENV)/bin/mypy graphexec

fmt: $(VENV)/.stamp-test
	$(VENV)/bin/ruff format $(LINT_PATHS)
	$(VENV)/bin/ruff check --fix $(LINT_PATHS)

bench: $(VENV)/.stamp-base
	$(PY) benchmarks/run.py

bench-compare: $(VENV_REF)/.stamp-ref
	$(PY_REF) benchmarks/run.py --compare

clean:
	rm -rf build dist *.egg-info .pytest_cache .hypothesis .ruff_cache .mypy_cache
	rm -rf benchmarks/results benchmarks/.scratch
	find . -path ./$(VENV) -prune -o -path ./$(VENV_REF) -prune -o \
		-name __pycache__ -type d -prune -exec rm -rf {} +

distclean: clean
	rm -rf $(VENV) $(VENV_REF)
