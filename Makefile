# Two commands a new user needs: `make pipeline` and `make test`. Both build .venv from nothing.
VENV ?= .venv
PY := $(VENV)/bin/python
# torch first, at the versions pip finds on this machine's disk; any other version downloads gigabytes.
TORCH := torch==2.14.1 torchvision==0.29.1
export PATH := $(abspath $(VENV))/bin:$(PATH)

.PHONY: venv pipeline test lint format params clean-runs

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(TORCH)
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

pipeline: venv
	dvc repro

# two workers: each starts on its half of the suite in collection order (end-to-end tests first), then steals
test: venv
	$(PY) -m pytest -n 2 --dist worksteal

# ruff: lint and formatting, configured in pyproject.toml (CI runs `make lint` before `make test`)
lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: venv
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

# Regenerate params.yaml (what DVC tracks) after editing conf/.
params: venv
	$(PY) -m imgclf.config > params.yaml.tmp && mv params.yaml.tmp params.yaml

clean-runs:
	rm -rf outputs multirun
