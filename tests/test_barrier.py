"""The base model barrier at test size: a linear base, k = 4, N = 12, an off-support cluster (base α ≈ 3.5e-7).

At equal reward queries, outcome PG never sees a correct response there (0.014 expected in 40,000 samples), so the
off-support likelihood stays where the base has it, while process PG (one verdict per prefix) climbs to y*. About
15 s on 2 CPU cores.
"""

from __future__ import annotations

from posttrain.__main__ import main as posttrain
from pretrain.__main__ import main as pretrain
from tests.conftest import TINY, metrics

BASE = """run: {checkpoint_every: 0, progress: false, report_to: []}
task: {d: 8, k: 4, N: 12, flip_prob: 0.02}
profile:
  - {coverage: exact}
  - {coverage: sequence, p: 0.0}
model: {kind: linear}
data: {corpus_size: 4000, eval_prompts_per_cluster: 32}
train: {steps: 100, batch_size: 128, warmup_steps: 5, eval_every: 100}
support: {offsupport_threshold: 0.001}
"""


def test_outcome_rewards_stay_behind_the_barrier_and_process_rewards_cross_it(tmp_path):
    (tmp_path / "pretrain.yaml").write_text(BASE)
    pretrain(["--config", str(tmp_path / "pretrain.yaml"), "--run.run_dir", str(tmp_path / "base")])
    final = {}
    for reward in ("outcome", "process"):  # the same optimiser, batch and budget; only the reward differs
        run_dir = tmp_path / reward
        posttrain(["--config", str(TINY / "posttrain_outcome.yaml"), "--base", str(tmp_path / "base"),
                   "--run.run_dir", str(run_dir), "--reward.name", reward, "--prompts.clusters", "[1]",
                   "--optim.lr", "0.03", "--optim.batch_size", "64", "--optim.max_steps", "100000",
                   "--optim.max_queries", "40000", "--eval.eval_every", "100000", "--run.checkpoint_every", "0",
                   "--run.report_to", "[]"])
        rows = metrics(run_dir)
        evals = [r for r in rows if "eval/offsupport_likelihood" in r]
        assert rows[-1]["done/stop_reason"] == "max_queries" and 40000 <= rows[-1]["done/reward_queries"] < 40000 + 64 * 10
        final[reward] = evals[0]["eval/offsupport_likelihood"], evals[-1]["eval/offsupport_likelihood"]
        if reward == "outcome":  # the premise: not one correct response sampled, so not one non-zero gradient
            assert sum(r["train/success_rate"] for r in rows if "train/success_rate" in r) == 0
    base_alpha, outcome = final["outcome"]
    assert final["process"][0] == base_alpha < 1e-4  # both start from the base, off-support
    assert outcome == base_alpha  # outcome PG: no correct response sampled in 40,000 tries, no signal
    assert final["process"][1] > 0.5  # process PG: y* learnt token by token
