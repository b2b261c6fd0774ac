"""Runs one arm of the authors' own Figure 1 (github mousavih/rlvr-base-model-barrier) and records what make paper's
report puts beside ours (docs/paper/authors_fig1.json). Not part of the project: run it with their code and its venv,

    python3 -m venv /tmp/authors-venv && /tmp/authors-venv/bin/pip install torch==2.13.0 omegaconf hydra-core matplotlib
    git clone https://github.com/mousavih/rlvr-base-model-barrier /tmp/authors
    /tmp/authors-venv/bin/python docs/authors_fig1.py /tmp/authors {outcome,process} SEED [docs/paper/authors_fig1.json]

It is their run_{outcome,process}_reward_experiment on their configs/{outcome,process}_reward.yaml (the supervised
base, then 4,000 PG steps), seeded as their main.py seeds it, with the tracked prompts chosen as their off-support
comparison plot chooses them: the mixture centres whose base likelihood is below 1e-12. Their seed s draws the hidden
rule that our task seed s draws (tests/test_continuous_task.py), so the two runs of a seed share a rule."""

import json
import random
import sys
import time
from pathlib import Path

import torch

root, arm, seed = sys.argv[1], sys.argv[2], int(sys.argv[3])
out = Path(sys.argv[4] if len(sys.argv) > 4 else "docs/paper/authors_fig1.json").resolve()
sys.path.insert(0, root)
from hydra.utils import instantiate  # noqa: E402
from utils.config import load_config  # noqa: E402
from utils.data_generator import GroundTruth  # noqa: E402
from utils.experiments import run_outcome_reward_experiment, run_process_reward_experiment  # noqa: E402

torch.set_num_threads(1)
cfg = load_config(Path(root) / "configs" / f"{arm}_reward.yaml")
g, exp = cfg["global"], cfg.experiment
exp.likelihood_tracking_type, exp.initial_likelihood_threshold = "threshold", 1e-12
random.seed(seed)
torch.manual_seed(seed)
run = run_outcome_reward_experiment if arm == "outcome" else run_process_reward_experiment
started = time.perf_counter()
try:
    data = run(exp=exp, d=g.d, k=g.k, seq_length=g.seq_length, gt=GroundTruth(), device=torch.device("cpu"),
               test_set_size=g.test_set_size, track_set_size=g.track_set_size, track_source=g.track_source,
               data_generator=instantiate(g.data_generator))["data"]
    history = torch.stack(data["likelihood_history"]).double()  # (steps + 1, off-support centres)
    record = {"base_test_error": float(data["pg_errors"][0]), "test_error": data["pg_errors"].tolist(),
              "test_every": int(exp.pg.test_every), "offsupport_centres": history.shape[1],
              "off_max_ever": history.max().item(), "off_final": history[-1].tolist()}
except ValueError as err:  # their code refuses a draw without an off-support centre
    if "No track_set samples found below threshold" not in str(err):
        raise
    record = {"offsupport_centres": 0}
record["seconds"] = round(time.perf_counter() - started, 1)
results = json.loads(out.read_text()) if out.exists() else {}
results[f"{arm}_s{seed}"] = record
out.write_text(json.dumps(results, indent=1) + "\n")
print(arm, seed, {k: v for k, v in record.items() if k != "test_error"})
