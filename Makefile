# kernel-attention — `make help` lists the targets.
SHELL := /bin/bash
PYTHON ?= python3
TASK ?= multi30k
KERNEL ?= edp
export KA_DATA_ROOT ?= $(abspath ../shared/data)

.DEFAULT_GOAL := help

help: ## Show this help
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  \033[36m%-12s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)

install: ## Install torch==2.13.0 (CPU wheel) then this package (editable) with dev extras
	$(PYTHON) -m pip install -q torch==2.13.0
	$(PYTHON) -m pip install -q -e ".[dev,cluster]"

test: install ## Run the test suite (installs first: a no-op when up to date)
	$(PYTHON) -m pytest -q

lint: ## ruff check
	$(PYTHON) -m ruff check .

data: ## Prepare a corpus: make data TASK=multi30k
	$(PYTHON) scripts/prepare_data.py task=$(TASK)

train: ## Train one model: make train KERNEL=rbf TASK=multi30k
	$(PYTHON) train.py kernel=$(KERNEL) task=$(TASK)

report: ## Build tables and plots from outputs/: make report [SWEEP=outputs/...]
	$(PYTHON) scripts/report.py $(or $(SWEEP),outputs)

demo: install ## The whole spine on CPU (~10 min): prepare Multi30k, train edp + linear, evaluate, report
	$(PYTHON) train.py -m experiment=demo
	$(PYTHON) scripts/report.py outputs/sweeps/demo

diagnose: ## Kernel diagnostics of every completed run: make diagnose SWEEP=outputs/sweeps/... (→ diagnostics.json)
	$(PYTHON) scripts/diagnose.py $(or $(SWEEP),outputs)

bench: ## Attention and training benchmarks (prints tables, writes experiments/benchmarks/)
	$(PYTHON) scripts/benchmark_attention.py
	$(PYTHON) scripts/benchmark_training.py

clean: ## Remove caches (keeps data/ and outputs/)
	rm -rf .pytest_cache .ruff_cache build dist src/*.egg-info

.PHONY: help install test lint data train report diagnose demo bench clean
