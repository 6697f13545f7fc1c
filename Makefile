# adamp-repro: every target sets up .venv from pyproject.toml (with the pins of requirements/pins.txt) when it is
# missing.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
PINS := requirements/pins.txt

# Offline copies of the data sets (README, "Data"); empty: download instead.
CIFAR10_JPEG_DIR ?=
IMAGENETTE_ARCHIVE ?=
TABLE ?= default
SCALE ?= mini
SEEDS ?=
PREFLIGHT ?= 1
PYTEST_ARGS ?=
# pytest-xdist workers of `make test` (0: one process). Modules that share an expensive module fixture are grouped
# (pytest.mark.xdist_group) so the fixture is built once.
TEST_WORKERS ?= 2

.DEFAULT_GOAL := help

$(STAMP): pyproject.toml $(PINS)
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c $(PINS) -e '.[suite,dev]'
	@touch $(STAMP)

.PHONY: venv
venv: $(STAMP) ## create .venv and install the package with its suite and dev extras, pinned by requirements/pins.txt

.PHONY: help
help: ## list the targets
	@grep -E '^[a-zA-Z0-9_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  %-18s %s\n", $$1, $$2}'

.PHONY: test
test: lint-imports ## check the import contract, then run the fast test suite (what CI runs)
	$(PY) -m pytest -q -m "not slow" -n $(TEST_WORKERS) --dist loadgroup $(PYTEST_ARGS)

.PHONY: lint-imports
lint-imports: $(STAMP) ## check the import contract of pyproject.toml (floors and no circles)
	$(VENV)/bin/lint-imports --no-cache

.PHONY: test-full
test-full: $(STAMP) ## run every test, the slow ones included
	$(PY) -m pytest -q $(PYTEST_ARGS)

.PHONY: lint
lint: $(STAMP) ## ruff check and format check
	$(VENV)/bin/ruff check src tests scripts
	$(VENV)/bin/ruff format --check src tests scripts

.PHONY: reproduce-table
reproduce-table: $(STAMP) ## train TABLE at SCALE into results/local (OUT=results: the committed layout; SEEDS=n, FRESH=1, OPTIMIZERS=a,b, PREFLIGHT=0: no check of every run first), build its tables, compare with the committed records
	$(PY) scripts/reproduce_table.py --table $(TABLE) --scale $(SCALE) $(if $(OUT),--out $(OUT),) $(if $(SEEDS),--seeds $(SEEDS),) $(if $(FRESH),--fresh,) $(if $(OPTIMIZERS),--optimizers $(OPTIMIZERS),) $(if $(filter 0,$(PREFLIGHT)),--no-preflight,) $(if $(ARGS),-- $(ARGS),)

.PHONY: tables
tables: $(STAMP) ## rebuild results/tables from the run records alone
	$(PY) scripts/build_tables.py

.PHONY: figures
figures: $(STAMP) ## rebuild results/figures from the run records and the toy experiments
	$(PY) scripts/make_figures.py

.PHONY: bench
bench: $(STAMP) ## run the benchmarks (writes results/bench/)
	$(PY) scripts/bench_optim.py
	$(PY) scripts/bench_trainer.py

.PHONY: device-check
device-check: ## run the GPU check (scripts/device_check.py) on a CUDA device
	PYTHONPATH=src $(PYTHON) scripts/device_check.py $(ARGS)

.PHONY: data-cifar10
data-cifar10: $(STAMP) ## put CIFAR-10 in data/cifar10: link CIFAR10_JPEG_DIR's JPEG copy if set, else download
	@mkdir -p data/cifar10
	@if [ -n "$(CIFAR10_JPEG_DIR)" ]; then \
		test -f "$(CIFAR10_JPEG_DIR)/train_jpeg.npz" -a -f "$(CIFAR10_JPEG_DIR)/test_jpeg.npz" || \
			{ echo "CIFAR10_JPEG_DIR=$(CIFAR10_JPEG_DIR) holds no train_jpeg.npz and test_jpeg.npz"; exit 1; }; \
		ln -sf "$(abspath $(CIFAR10_JPEG_DIR))/train_jpeg.npz" "$(abspath $(CIFAR10_JPEG_DIR))/test_jpeg.npz" data/cifar10/ && \
		echo "data/cifar10 -> $(CIFAR10_JPEG_DIR) (JPEG copy)"; \
	else \
		$(PY) -c "import torchvision; torchvision.datasets.CIFAR10('data/cifar10', download=True)"; \
	fi

.PHONY: data-imagenette
data-imagenette: ## extract IMAGENETTE_ARCHIVE (a 96-px imagenette2-96.tar) into data/imagenette2-96
	@if [ -z "$(IMAGENETTE_ARCHIVE)" ] || [ ! -f "$(IMAGENETTE_ARCHIVE)" ]; then \
		echo "no IMAGENETTE_ARCHIVE=$(IMAGENETTE_ARCHIVE): set it to an imagenette2-96.tar, or download" \
		     "imagenette2-160 from fast.ai (github.com/fastai/imagenette), extract it and set dataset.root"; exit 1; fi
	@if [ -f "$(dir $(IMAGENETTE_ARCHIVE))SHA256SUMS" ]; then \
		cd "$(dir $(IMAGENETTE_ARCHIVE))" && sha256sum --check --quiet SHA256SUMS; fi
	@mkdir -p data
	tar xf "$(IMAGENETTE_ARCHIVE)" -C data

.PHONY: paper-numbers
paper-numbers: $(STAMP) ## regenerate results/paper/*.csv from results/paper/reference.csv (the paper's numbers)
	$(PY) -m adamp_repro.results.reference --reference results/paper/reference.csv

.PHONY: dashboards
dashboards: $(STAMP) ## write the W&B dashboard specs to results/dashboards (PUBLISH=1 also saves them to W&B)
	$(PY) scripts/wandb_dashboard.py $(if $(PUBLISH),--publish,)

.PHONY: dashboard
dashboard: dashboards ## alias of `make dashboards`

.PHONY: sync-wandb
sync-wandb: $(STAMP) ## upload the offline W&B runs under results/runs, ./wandb and $WANDB_DIR with `wandb sync`
	@files=$$(find results/runs wandb $${WANDB_DIR:+"$$WANDB_DIR"} -path '*/offline-run-*/*.wandb' 2>/dev/null | sort -u); \
	if [ -z "$$files" ]; then echo "no offline W&B runs under results/runs, ./wandb$${WANDB_DIR:+ or $$WANDB_DIR}"; exit 0; fi; \
	$(VENV)/bin/wandb sync $$files

.PHONY: tune
tune: $(STAMP) ## tuning study of TABLE (configs/studies/<TABLE>.yaml) at SCALE into results/local (STUDIES=, TRIALS=, SEEDS= replace the file's budget; PILOT=1: the default recipes only, and the gain their seeds detect; OUT=, ARGS= Hydra overrides)
	$(PY) -m adamp_repro.cli.tune --table $(TABLE) --scale $(SCALE) $(if $(OUT),--out $(OUT),) $(if $(STUDIES),--studies $(STUDIES),) $(if $(TRIALS),--trials $(TRIALS),) $(if $(SEEDS),--seeds $(SEEDS),) $(if $(filter 1,$(PILOT)),--pilot,) $(if $(ARGS),-- $(ARGS),)
