# bindspace: `make help` lists the targets.
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# torch/torchvision first, pinned, so pip takes the builds on this machine's disk instead of a fresh download.
TORCH_PINS := torch==2.14.1 torchvision==0.29.1

.DEFAULT_GOAL := help
.PHONY: help install train test test-fast lint format bench clean

help: ## Show this help
	@grep -hE '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk -F':.*?## ' '{printf "  \033[36m%-12s\033[0m %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	test -d $(VENV) || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(TORCH_PINS)
	# setuptools (84 here) tells every editable install, as a warning box, that same-named folders may shadow the
	# package; bindspace's is the package itself, so that notice (and only it) is silenced.
	PYTHONWARNINGS='ignore:Editable installation' $(BIN)/pip install -q -e '.[dev,imagebind]'
	touch $(STAMP)

install: $(STAMP) ## Create .venv and install bindspace (editable) with its dev and imagebind (test reference) extras (re-runs only when pyproject.toml changes)

train: install ## Train the six-modality model on the built-in synthetic benchmark (CPU, ~5 min) and print the retrieval matrix
	WANDB_MODE=offline $(BIN)/bindspace-train $(ARGS)

# One pytest worker per core, whole files per worker (module fixtures stay in one process); JOBS=1 runs serially.
JOBS ?= auto
test: install ## Run the whole test suite (what CI runs)
	$(BIN)/pytest -q -n $(JOBS) --dist loadfile $(ARGS)

test-fast: install ## Run the tests not marked slow
	$(BIN)/pytest -q -n $(JOBS) --dist loadfile -m "not slow" $(ARGS)

lint: install ## ruff check + format check
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install ## ruff fix + format
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

bench: install ## Run the benchmarks and update docs/benchmarks.md (machine, date and command in each section)
	$(BIN)/python -m benchmarks.bench_data
	$(BIN)/python -m benchmarks.bench_manifest
	$(BIN)/python -m benchmarks.bench_retrieval
	$(BIN)/python -m benchmarks.bench_training
	$(BIN)/python -m benchmarks.bench_ddp
	$(BIN)/python -m benchmarks.bench_cli

clean: ## Remove run folders and caches (keeps .venv)
	rm -rf runs .pytest_cache .ruff_cache
