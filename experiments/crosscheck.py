"""``make crosscheck``: the same base, task and query budget through both backends, several seeds each, tested
against what the theory predicts.

    python -m experiments.crosscheck --config configs/crosscheck.yaml

Every run trains the base's eval prompts (of its config's ``prompts.clusters``), so the base α of what it trains is
known exactly. An arm with 0/1 outcome rewards, sampled on-policy at temperature 1 without a KL term, learns nothing
before its first success (every advantage is 0), so each query succeeds with probability α(x) of a fresh prompt:
its discovery queries are geometric with rate λ = E_x α(x) over the trained prompts, and P(discovery within the
budget Q) = 1 − (1 − λ)^Q (to first order in α: the G responses of a group share their prompt). Such an arm is
tested per backend (the seeds that discovered against that probability, exact binomial; the censored rate MLE
against λ, exact Poisson; no run moved before its discovery) and the backends' rates against each other (exact
conditional binomial). Every other arm (process PG) must lift the off-support prompts above 0.5 in every seed, and
an arm that trains on-support prompts compares them across backends. Writes crosscheck.png, crosscheck.json and
report.md (the tests, verdicts, figure and report: ``experiments.crosscheck_analysis``).
"""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass, field
from pathlib import Path

from barrierlab.config import load_config, require, require_distinct, require_seeds
from barrierlab.errors import UserError, cli_entry
from barrierlab.loading import load_dataset_dir
from barrierlab.metrics import fmt_value
from barrierlab.rundir import atomic_write_text, claim_output_dir, last_row, read_metrics
from experiments.crosscheck_analysis import (
    OFF,
    analyse,
    discovery_lines,
    figure,
    final,
    first_success,
    likelihood_lines,
    report,
    summarise,
)
from experiments.stages import check_stage_args, check_trl_config, ensure_base, reuse_or_run
from posttrain.config import PosttrainConfig, load_posttrain_config
from pretrain.config import PretrainConfig


@dataclass
class CrosscheckConfig:
    out_dir: str = "runs/crosscheck"
    """Folder of the runs, crosscheck.png, crosscheck.json and report.md."""
    pretrain_config: str = "configs/crosscheck/pretrain.yaml"
    """The shared base (pretrained once)."""
    pretrain_args: list[str] = field(default_factory=list)
    """Overrides of the base's config."""
    posttrain_configs: dict[str, str] = field(default_factory=lambda: {"outcome": "configs/crosscheck/posttrain_outcome.yaml",
                                                             "process": "configs/crosscheck/posttrain_process.yaml"})
    """Reward arm → post-training config, run by both backends."""
    backends: list[str] = field(default_factory=lambda: ["native", "trl"])
    """Backends to compare."""
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    """Post-training seeds per (arm, backend), for arms whose discovery is not tested."""
    discovery_seeds: list[int] = field(default_factory=lambda: list(range(16)))
    """Seeds per backend of an arm whose discovery is tested (more: its tests count discoveries)."""
    max_queries: int = 40_000
    """Equal reward-query budget of every run (a multiple of the batch: the discovery is censored exactly there)."""
    confidence: float = 0.99
    """Confidence of each test's interval: a backend that follows the theory fails a test with at most 1 − this."""
    posttrain_args: list[str] = field(default_factory=list)
    """Overrides for every run, e.g. ['--optim.lr', '0.002']."""

    def check(self):
        require(len(self.backends) >= 1 and all(b in ("native", "trl") for b in self.backends), "backends",
                "list at least one of: native, trl")
        require(len(self.posttrain_configs) >= 1, "posttrain_configs", "must name at least one arm")
        require_distinct(self.backends, "backends")
        require_seeds(self.seeds)
        require_seeds(self.discovery_seeds, "discovery_seeds")
        require(self.max_queries >= 1, "max_queries", "must be ≥ 1")
        require(0.5 < self.confidence < 1, "confidence", "must be in (0.5, 1)")


def tests_discovery(run_cfg: PosttrainConfig) -> bool:
    """Whether a run learns nothing before its first success, so that its discovery queries are geometric with rate
    E α: 0/1 outcome rewards (an all-failure batch has advantages 0 under every baseline), sampled on-policy at
    temperature 1 (the samples are drawn from q0 itself), without a KL term."""
    a = run_cfg.algo
    return (run_cfg.reward.name == "outcome" and not run_cfg.reward.signed and a.behaviour == "on_policy"
            and a.temperature == 1 and a.kl_coef == 0)


def steps_within(run_cfg: PosttrainConfig, cfg: CrosscheckConfig) -> int:
    """A step count the query budget always reaches first: every response costs at least one query, so B
    responses a step spend the budget within ceil(max_queries / B) steps. (TRL materialises max_steps batches
    of prompts up front: no larger number than needed.)"""
    return -(-cfg.max_queries // run_cfg.optim.batch_size) + 1


def run_overrides(cfg: CrosscheckConfig, config: str, backend: str, seed: int) -> list[str]:
    """What each run gets on top of its post-training config (besides its base and run folder): it trains the
    base's eval prompts, whose exact α is known."""
    run_cfg = load_config(PosttrainConfig, ["--config", config, *cfg.posttrain_args])
    return ["--backend", backend, "--run.seed", str(seed), "--optim.max_queries", str(cfg.max_queries),
            "--optim.max_steps", str(steps_within(run_cfg, cfg)), "--prompts.dataset", str(eval_prompts(cfg)),
            "--run.progress", "false", "--run.checkpoint_every", "0", *cfg.posttrain_args]


def eval_prompts(cfg: CrosscheckConfig) -> Path:
    return Path(cfg.out_dir) / "base" / "data" / "eval_prompts"


@cli_entry
def main(argv):
    cfg = load_config(CrosscheckConfig, argv, default_config="configs/crosscheck.yaml", prog="experiments.crosscheck")
    check_stage_args(PretrainConfig, cfg.pretrain_config, cfg.pretrain_args, user_args=cfg.pretrain_args,
                     config_key="pretrain_config", user_key="pretrain_args")
    user = dict(user_args=cfg.posttrain_args, config_key="posttrain_configs", user_key="posttrain_args")
    arm_cfgs = {}
    for arm, config in cfg.posttrain_configs.items():
        # the overrides alone first (the run's step count is read through them), then every run's whole command line
        check_stage_args(PosttrainConfig, config, cfg.posttrain_args, **user)
        for backend in cfg.backends:
            run_cfg = check_stage_args(PosttrainConfig, config, run_overrides(cfg, config, backend, 0), **user)
            if backend == "trl":
                check_trl_config(run_cfg, f"posttrain_configs '{config}' with posttrain_args")
        arm_cfgs[arm] = run_cfg
    out = claim_output_dir(cfg.out_dir, "out_dir", "make crosscheck")
    base = out / "base"
    support = ensure_base(cfg.pretrain_config, base, *cfg.pretrain_args)
    prompts = load_dataset_dir(eval_prompts(cfg), ["base_alpha", "cluster"])
    arms = {}
    for arm, run_cfg in arm_cfgs.items():
        clusters = run_cfg.prompts.clusters
        alpha = [a for a, c in zip(prompts["base_alpha"], prompts["cluster"]) if clusters is None or c in clusters]
        if not alpha:
            raise UserError(f"posttrain_configs '{arm}': the base has no eval prompts of prompts.clusters {clusters}")
        arms[arm] = {"prompts": len(alpha), "trains_onsupport": max(alpha) >= support["offsupport_threshold"],
                     "rate": statistics.fmean(alpha) if tests_discovery(run_cfg) else None}
    runs: dict = {}
    for arm, config in cfg.posttrain_configs.items():
        for backend in cfg.backends:
            for seed in cfg.discovery_seeds if arms[arm]["rate"] is not None else cfg.seeds:
                run_dir = out / f"{arm}_{backend}_s{seed}"
                reuse_or_run("posttrain", load_posttrain_config, run_dir, last_row(run_dir, "done/steps") is not None,
                             "--config", config, "--base", str(base), "--run.run_dir", str(run_dir),
                             *run_overrides(cfg, config, backend, seed))
                rows = runs.setdefault((arm, backend), {})[seed] = read_metrics(run_dir / "metrics.jsonl")
                print(f"{arm} {backend} seed {seed}: first success {first_success(rows)}, off-support "
                      f"{fmt_value(final(rows, OFF))}", flush=True)
    table = summarise(runs)
    results = analyse(runs, arms, cfg.max_queries, cfg.confidence)
    lines = [line for r in results for line in discovery_lines(r, cfg.max_queries, cfg.confidence)]
    lines += likelihood_lines(table, arms)
    figure(runs, results, cfg.max_queries, lines, out / "crosscheck.png")
    atomic_write_text(out / "crosscheck.json", json.dumps({"max_queries": cfg.max_queries, "confidence": cfg.confidence,
                                                           "arms": arms, "discovery": results, "table": table,
                                                           "verdicts": lines}, indent=2))
    text = report(cfg, table, results, lines)
    atomic_write_text(out / "report.md", text)
    print(text.split("<details>")[0].rstrip())


if __name__ == "__main__":
    main()
