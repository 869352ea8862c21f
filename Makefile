# Two commands a new user needs: `make pipeline` and `make test`. Both build .venv from nothing.
VENV ?= .venv
PY := $(VENV)/bin/python
# torch first, at the versions pip finds on this machine's disk; any other version downloads gigabytes.
TORCH := torch==2.14.1 torchvision==0.29.1
export PATH := $(abspath $(VENV))/bin:$(PATH)
WORKERS ?= $(shell n=$$(nproc 2>/dev/null || echo 2); echo $$(( n < 2 ? 2 : n > 8 ? 8 : n )))

.PHONY: venv bytecode pipeline test test-fast docs docs-serve lint format params dvc-deps clean-runs postgres chromium slurm mlflow-server serve exps

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(TORCH)
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

# The package's bytecode, compiled as pip compiles an installed package's: an editable install's is not, and where
# PYTHONDONTWRITEBYTECODE is set every process (each stage, each one a test starts) compiled it again. Only what
# changed is compiled; __pycache__/ is ignored by git.
bytecode: venv
	$(PY) -m compileall -q src >/dev/null

pipeline: venv bytecode
	dvc repro

# The tests' temporary folders (checkpoints of hundreds of MB, DVC repos, stores, clusters) are kept in memory when
# /dev/shm has 8 GB free: written to disk they cost tens of seconds of the kernel's CPU (docs/benchmarks.md). A session
# peaks near 3 GB there, and pytest keeps only the folders of failed tests. `make test TEST_TMP=` keeps them on disk.
TEST_TMP ?= $(shell [ -d /dev/shm ] && [ "$$(df -Pk /dev/shm | awk 'NR == 2 {print $$4}')" -gt 8000000 ] && echo /dev/shm/imgclf-tests-$$(id -u))
TEST_TMPDIR = $(if $(TEST_TMP),mkdir -p $(TEST_TMP) && TMPDIR=$(TEST_TMP))

# pytest-xdist's worksteal, one worker per core (2 to 8; `make test WORKERS=4` to choose): the suite is CPU-bound,
# so more workers than cores only share them. Each worker starts on its share of the order tests/conftest.py
# arranges (the longest end-to-end files one per worker), then steals. Four workers peak near 9 GB of memory.
# The tracking-server tests need PostgreSQL, the browser test Chromium, the cluster tests SLURM: installed here when
# missing, and required (not skipped) under make.
test: venv bytecode postgres chromium slurm
	$(TEST_TMPDIR) IMGCLF_REQUIRE_SERVERS=1 $(PY) -m pytest -n $(WORKERS) --dist worksteal

# the edit-test loop: everything that neither trains a project nor starts a process or server (tests/conftest.py
# marks the rest slow); no PostgreSQL or Chromium needed
test-fast: venv
	$(TEST_TMPDIR) $(PY) -m pytest -n $(WORKERS) --dist worksteal -m "not slow"

# The manual (mkdocs.yml, docs/): built into site/ with --strict, so a broken link, a missing page or a Reference page
# that fails to generate (docs/hooks/reference.py: from conf/, the parsers, dvc.yaml, imgclf.metric_names) fails it
export NO_MKDOCS_2_WARNING := 1
docs: venv
	$(VENV)/bin/mkdocs build --strict --site-dir site

docs-serve: venv
	$(VENV)/bin/mkdocs serve --strict --dev-addr 127.0.0.1:8000

# PostgreSQL from Debian's packages (as root, or through sudo), unless its programs are already there
postgres:
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null || { \
	  SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends postgresql; }

# Debian's Chromium and its driver, for the browser test of `imgclf serve` (Selenium drives them; nothing downloaded)
chromium:
	@{ [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; } || { \
	  SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends chromium chromium-driver; }

# SLURM's controller, node daemon, client commands and munge from Debian's packages, for the cluster tests
# (tests/e2e/slurm.py starts a one-node cluster of its own; nothing is started here)
slurm:
	@{ command -v sbatch >/dev/null && [ -x /usr/sbin/slurmctld ] && [ -x /usr/sbin/slurmd ] && [ -x /usr/sbin/munged ]; } || { \
	  SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends slurmctld slurmd slurm-client munge; }

# The web page: Classify One / Many, the model card of the exported model, the runs, and the Review of the data set's
# label issues (fixes written to relabel/), on http://127.0.0.1:7860
serve: venv
	$(VENV)/bin/imgclf serve --model models/export --allow-root data --allow-root relabel \
	  --review $$($(PY) -c "import yaml; print(yaml.safe_load(open('params.yaml'))['data']['name'])")

# A team's tracking server on this machine: PostgreSQL backend store, proxied artifacts, both under .mlflow-server/,
# bound to 127.0.0.1 (HOST=0.0.0.0 to share it; put it behind authentication first). Ctrl-C stops both.
HOST ?= 127.0.0.1
PORT ?= 5000
MLFLOW_WORKERS ?= 2
mlflow-server: venv postgres
	$(PY) -m imgclf.tracking.server --dir .mlflow-server --host $(HOST) --port $(PORT) --workers $(MLFLOW_WORKERS)

# ruff: lint and formatting, configured in pyproject.toml (CI runs `make lint` before `make test`)
lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: venv
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

# `dvc exp show` narrowed to what tells experiments apart (it shows every param and metric: 240 columns);
# KEEP=... for other columns (a regex of column names)
KEEP ?= Experiment|Created|data\.name|data\.path|data\.subset|model\.name|optim\.lr|trainer\.(epochs|batch_size)|finetune\.strategy|augment\.preset$$|^test/(acc|macro_f1)$$|^val/acc$$|epochs_run
exps:
	dvc exp show --no-pager --drop '.*' --keep '$(KEEP)'

# Regenerate params.yaml (what DVC tracks) after editing conf/: checked first, as `imgclf check` checks a dvc exp run
params: venv
	$(VENV)/bin/imgclf check >/dev/null && $(PY) -m imgclf.config > params.yaml.tmp && mv params.yaml.tmp params.yaml \
	  || { rm -f params.yaml.tmp; exit 1; }

# Regenerate dvc.yaml's code deps (each stage's import closure) after moving or importing modules.
dvc-deps: venv
	$(PY) -m imgclf.deps

clean-runs:
	rm -rf outputs multirun
