# Two entry points for a new user: `make demo` (the main job) and `make test` (the suite).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: venv test bench-core clean

venv: $(VENV)/.installed

$(VENV)/.installed: requirements-ci.txt setup.py
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-ci.txt
	$(PY) -m pip install --quiet --no-deps -e .
	touch $@

test: venv
	$(PY) -m pytest -q tests

bench-core: venv
	$(PY) benchmarks/core_step.py

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
