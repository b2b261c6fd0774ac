# barrierlab: every stage is `python -m <stage> --config FILE [--section.key value ...]`.
# Variables: CONFIGS=configs (configs/gpu for one GPU, configs/tiny for a smoke run), RUNS=runs,
# MODEL=transformer|linear, REWARD=outcome|process|noisy_outcome|noisy_process or an import path
# package.module:ClassName, ARGS="--key value ..." (extra overrides), LAUNCH
# (e.g. LAUNCH=".venv/bin/accelerate launch --multi_gpu --num_processes 4" for 4 GPUs, or
# LAUNCH=".venv/bin/torchrun --standalone --nproc_per_node 2" for 2 CPU processes).

PYTHON ?= .venv/bin/python
LAUNCH ?= $(PYTHON)
CONFIGS ?= configs
RUNS ?= runs
MODEL ?= transformer
REWARD ?= outcome
SOURCE ?= exact
ARGS ?=
# one word, one of the allowed ones ("1" is what a good value gives); a reward is a built-in name or an import path
ifneq ($(words $(REWARD))$(if $(filter outcome process noisy_outcome noisy_process learned_prm,$(REWARD))$(findstring :,$(REWARD)),,x),1)
$(error REWARD='$(REWARD)': use REWARD=outcome, process, noisy_outcome, noisy_process, learned_prm or package.module:ClassName)
endif
ifneq ($(words $(MODEL))$(filter-out transformer linear,$(MODEL)),1)
$(error MODEL='$(MODEL)': use MODEL=transformer or MODEL=linear)
endif
SUFFIX := $(if $(filter linear,$(MODEL)),_linear,)
BASE := $(RUNS)/base$(SUFFIX)

.PHONY: help install pretrain posttrain outcome process eval pipeline scaling alpha crosscheck bench paper train-prm prm test test-all lint clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' Makefile | sed 's/:.*## /\t/'

.venv/bin/python:
	python3 -m venv .venv

# +cpu names the CPU build: a local wheel or PyTorch's CPU index has it, PyPI never (its Linux torch is the CUDA build)
install: .venv/bin/python  ## create .venv and install the project (CPU torch unless a GPU is present)
	$(PYTHON) -m pip install -q --upgrade pip
	@if $(PYTHON) -c "import torch" 2>/dev/null; then echo "torch already installed"; \
	elif command -v nvidia-smi >/dev/null 2>&1; then $(PYTHON) -m pip install -q "torch>=2.11"; \
	else $(PYTHON) -m pip install -q "torch==2.13.0+cpu" \
		|| $(PYTHON) -m pip install -q torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu \
		|| $(PYTHON) -m pip install -q torch==2.13.0; fi
	$(PYTHON) -m pip install -q -e ".[dev]"

pretrain:  ## pretrain the base model (MODEL=linear for the log-linear policy)
	$(LAUNCH) -m pretrain --config $(CONFIGS)/pretrain.yaml --model.kind $(MODEL) --run.run_dir $(BASE) $(ARGS)

# a reward's run folder is named after it, an import path's after its class, lowercased (mylab.rewards:ParityReward:
# parityreward); its config is the built-in arm's of its granularity (one that cannot be imported gets outcome's,
# and posttrain says in one line what is wrong with it)
REWARD_RUN = $(shell echo '$(lastword $(subst :, ,$(REWARD)))' | tr '[:upper:]' '[:lower:]')
REWARD_ARM = $(if $(filter outcome process,$(REWARD)),$(REWARD),$(shell $(PYTHON) -c 'import sys; from rewards import \
	resolve_class; print(resolve_class(sys.argv[1]).granularity)' '$(REWARD)' 2>/dev/null || echo outcome))

posttrain:  ## post-train the base with REWARD=outcome|process|noisy_outcome|noisy_process|learned_prm|pkg.module:MyReward, into $(RUNS)/REWARD ($(RUNS)/myreward for an import path)
	$(LAUNCH) -m posttrain --config $(CONFIGS)/posttrain_$(REWARD_ARM).yaml --reward.name $(REWARD) --base $(BASE) \
		--run.run_dir $(RUNS)/$(REWARD_RUN)$(SUFFIX) $(ARGS)

outcome process:
	$(MAKE) posttrain REWARD=$@

eval:  ## evaluate base, outcome and process checkpoints; figures and report.md in $(RUNS)/eval
	$(PYTHON) -m eval --config $(CONFIGS)/eval.yaml --base $(BASE) --out_dir $(RUNS)/eval$(SUFFIX) \
		--checkpoints.outcome $(RUNS)/outcome$(SUFFIX) --checkpoints.process $(RUNS)/process$(SUFFIX) $(ARGS)

pipeline:  ## pretrain -> outcome PG and process PG at equal query budgets -> eval -> figures -> report
	$(MAKE) pretrain outcome process eval

scaling:  ## discovery and queries to target against N: outcome, process, Algorithms 1 and 2 (fits with intervals, figure, report.md in $(RUNS)/scaling)
	$(PYTHON) -m experiments.sweep --config $(CONFIGS)/scaling.yaml --out_dir $(RUNS)/scaling $(ARGS)

alpha:  ## outcome-PG discovery and queries to target against the base α of on-support clusters (log-log slopes with intervals)
	$(PYTHON) -m experiments.sweep --config $(CONFIGS)/alpha.yaml --out_dir $(RUNS)/alpha $(ARGS)

bench:  ## native engine vs TRL, then the linear engine on the authors' Figure 1 workload: completions/s, queries/s, s/update, peak memory (bench.json in $(RUNS)/bench, $(RUNS)/bench_linear)
	$(PYTHON) -m experiments.bench --config $(CONFIGS)/bench.yaml --out_dir $(RUNS)/bench $(ARGS)
	$(PYTHON) -m experiments.bench --config $(CONFIGS)/bench_linear.yaml --out_dir $(RUNS)/bench_linear $(ARGS)

paper:  ## the authors' Figures 1 and 2 on their own task, linear model and transformer, with report.md beside their numbers ($(RUNS)/paper)
	$(PYTHON) -m experiments.paper --config $(CONFIGS)/paper.yaml --out_dir $(RUNS)/paper $(ARGS)

crosscheck:  ## the same base, task and budget through the native engine and TRL, several seeds; figure + table
	$(PYTHON) -m experiments.crosscheck --config $(CONFIGS)/crosscheck.yaml --out_dir $(RUNS)/crosscheck $(ARGS)

train-prm:  ## train a PRM on the base from SOURCE=exact|exact_onsupport|monte_carlo|implicit labels (configs/prm/train_SOURCE.yaml), into $(RUNS)/prm_SOURCE
	$(PYTHON) -m rewards.train_prm --config configs/prm/train_$(SOURCE).yaml --base $(BASE) --run.run_dir $(RUNS)/prm_$(SOURCE) $(ARGS)

prm:  ## which learned PRMs (exact, exact on on-support clusters, Monte Carlo, implicit) break the barrier at equal verifier-query budgets, labelling included
	$(PYTHON) -m experiments.prm --config $(CONFIGS)/prm.yaml --out_dir $(RUNS)/prm $(ARGS)

test:  ## the fast test suite (what CI runs)
	$(PYTHON) -m pytest -q

test-all:  ## every test, the slow ones too
	$(PYTHON) -m pytest -q -m ""

lint:  ## ruff
	$(PYTHON) -m ruff check .

clean:  ## remove runs and caches (keeps .venv)
	rm -rf $(RUNS) .pytest_cache .ruff_cache
	find . \( -path ./.venv -o -path ./.git \) -prune -o -name __pycache__ -type d -prune -exec rm -rf {} +
