# adamp-repro: every target sets up .venv from pyproject.toml when it is missing.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

SHARED_DATA ?= ../shared/data
TABLE ?= default
SCALE ?= mini
SEEDS ?=
PYTEST_ARGS ?=

.DEFAULT_GOAL := help

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

.PHONY: venv
venv: $(STAMP) ## create .venv and install the package with its dev extra

.PHONY: help
help: ## list the targets
	@grep -E '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  %-18s %s\n", $$1, $$2}'

.PHONY: test
test: $(STAMP) ## run the fast test suite (what CI runs)
	$(PY) -m pytest -q -m "not slow" $(PYTEST_ARGS)

.PHONY: test-full
test-full: $(STAMP) ## run every test, the slow ones included
	$(PY) -m pytest -q $(PYTEST_ARGS)

.PHONY: lint
lint: $(STAMP) ## ruff check and format check
	$(VENV)/bin/ruff check src tests scripts
	$(VENV)/bin/ruff format --check src tests scripts

.PHONY: reproduce-table
reproduce-table: $(STAMP) ## train TABLE at SCALE into results/local (OUT=results: the committed layout; SEEDS=n, FRESH=1, OPTIMIZERS=a,b), build its tables, compare with the committed records
	$(PY) scripts/reproduce_table.py --table $(TABLE) --scale $(SCALE) $(if $(OUT),--out $(OUT),) $(if $(SEEDS),--seeds $(SEEDS),) $(if $(FRESH),--fresh,) $(if $(OPTIMIZERS),--optimizers $(OPTIMIZERS),) $(if $(ARGS),-- $(ARGS),)

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
data-cifar10: $(STAMP) ## put CIFAR-10 in data/cifar10: link the shared offline JPEG copy if present, else download
	@mkdir -p data/cifar10
	@if [ -f $(SHARED_DATA)/cifar10/train_jpeg.npz ]; then \
		ln -sf $(abspath $(SHARED_DATA))/cifar10/train_jpeg.npz $(abspath $(SHARED_DATA))/cifar10/test_jpeg.npz data/cifar10/ && \
		echo "data/cifar10 -> $(SHARED_DATA)/cifar10 (JPEG copy)"; \
	else \
		$(PY) -c "import torchvision; torchvision.datasets.CIFAR10('data/cifar10', download=True)"; \
	fi

.PHONY: data-imagenette
data-imagenette: ## extract the shared 96-px Imagenette copy into data/imagenette2-96
	@if [ ! -f $(SHARED_DATA)/imagenette/imagenette2-96.tar ]; then \
		echo "no $(SHARED_DATA)/imagenette/imagenette2-96.tar: download imagenette2-160 from fast.ai" \
		     "(github.com/fastai/imagenette), extract it and set dataset.root"; exit 1; fi
	cd $(SHARED_DATA)/imagenette && sha256sum --check --quiet SHA256SUMS
	@mkdir -p data
	tar xf $(SHARED_DATA)/imagenette/imagenette2-96.tar -C data

.PHONY: paper-numbers
paper-numbers: $(STAMP) ## regenerate results/paper/*.csv from ../shared/paper/reference.csv
	$(PY) -m adamp_repro.results.reference

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
