# Two entry points for a new user: `make demo` (the main job) and `make test` (the suite).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: venv demo test test-fast quality style wheel-check bench-core bench-train bench-eval repro clean

venv: $(VENV)/.installed

$(VENV)/.installed: requirements-ci.txt setup.py pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-ci.txt
	$(PY) -m pip install --quiet --no-deps -e .
	touch $@

# The main job, offline: generate a tiny model and images in .demo/, post-train, export to out/demo.
demo: venv
	$(PY) -m paka_hf.apps.demo .demo
	rm -rf out/demo
	$(PY) scripts/train.py --config configs/demo.yaml  # plain python on a CPU: accelerate launch pins one thread

test: venv
	$(PY) -m pytest -q tests

# Everything but the tests marked slow (subprocesses, several processes, a browser, long end-to-end runs).
test-fast: venv
	$(PY) -m pytest -q -m "not slow" tests

# Lint and format check (ruff, settings in pyproject.toml) and the layer contracts (import-linter, same file);
# `make style` applies ruff's fixes and formatting.
quality: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports --no-cache

# The package as a user installs it: wheel, fresh virtual environment, demo, training, card, push (.ci/wheel_smoke.sh).
wheel-check:
	.ci/wheel_smoke.sh

style: venv
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

bench-core: venv
	$(PY) benchmarks/core_step.py

bench-train: venv
	$(PY) benchmarks/train_step.py

bench-eval: venv
	OMP_NUM_THREADS=1 $(PY) benchmarks/eval_camvid.py --model_dir ../shared/models/dinov2-small-imgfocus \
		--data_dir ../shared/datasets/camvid

# CamVid reproduction: PaKA on the real ViT-S/14 and CamVid in ../shared, controls and ablations (~1.5 h on 2 cores).
repro: venv
	$(PY) benchmarks/repro_camvid.py

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info .demo out
