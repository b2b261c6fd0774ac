# barrierlab: every stage is `python -m <stage> --config FILE [--section.key value ...]`.
# Variables: PYTHON, CONFIG overrides per target, MODEL=transformer|linear, REWARD=outcome|process,
# ARGS="--key value ..." extra overrides, RUNS=runs.

PYTHON ?= .venv/bin/python
RUNS ?= runs
MODEL ?= transformer
REWARD ?= outcome
ARGS ?=
BASE ?= $(RUNS)/base$(if $(filter linear,$(MODEL)),_linear,)

.PHONY: help install pretrain posttrain eval pipeline scaling alpha crosscheck bench test test-all lint clean

help:
	@grep -E '^[a-z-]+:.*## ' Makefile | sed 's/:.*## /\t/'

.venv/bin/python:
	python3 -m venv .venv

install: .venv/bin/python  ## create .venv and install (CPU torch unless CUDA is present)
	$(PYTHON) -m pip install -q --upgrade pip
	@if $(PYTHON) -c "import torch" 2>/dev/null; then echo "torch already installed"; \
	elif command -v nvidia-smi >/dev/null 2>&1; then $(PYTHON) -m pip install -q "torch>=2.11"; \
	else $(PYTHON) -m pip install -q torch==2.13.0 || $(PYTHON) -m pip install -q torch --index-url https://download.pytorch.org/whl/cpu; fi
	$(PYTHON) -m pip install -q -e ".[dev]"

pretrain:  ## pretrain the default base model (MODEL=linear for the log-linear policy)
	$(PYTHON) -m pretrain --config configs/pretrain.yaml --model.kind $(MODEL) --run.run_dir $(BASE) $(ARGS)

posttrain:  ## post-train the base with REWARD=outcome|process
	$(PYTHON) -m posttrain --config configs/posttrain_$(REWARD).yaml --base $(BASE) --run.run_dir $(RUNS)/$(REWARD)$(if $(filter linear,$(MODEL)),_linear,) $(ARGS)

eval pipeline scaling alpha:  ## (filled by the evaluation issue)
	@echo "make $@: not implemented yet (see issue: Evaluation, the barrier experiments, figures and report)"; exit 1

crosscheck bench:  ## (filled by the TRL backend issue)
	@echo "make $@: not implemented yet (see issue: TRL backend, cross-check, make bench)"; exit 1

test:  ## the fast test suite (what CI runs)
	$(PYTHON) -m pytest -q

test-all:  ## every test, the slow ones too
	$(PYTHON) -m pytest -q -m ""

lint:
	$(PYTHON) -m ruff check .

clean:  ## remove runs and caches (keeps .venv)
	rm -rf $(RUNS) .pytest_cache .ruff_cache
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
