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
from typing import TYPE_CHECKING

from barrierlab.config import load_config, require, require_distinct, require_seeds
from barrierlab.errors import UserError, cli_entry, loading_libraries
from experiments.cluster import Cluster, RayConfig
from experiments.stages import check_trl_run

if TYPE_CHECKING:
    from posttrain.config import PosttrainConfig

# torch, transformers, Ray, the stages and the analysis are imported where they are used, once the config is parsed
# and checked: --help and a config error answer at once


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
    ray: RayConfig = field(default_factory=RayConfig)
    """Where the runs go (a local Ray by default, or a cluster) and what each reserves: CPU threads, GPUs."""

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
    from posttrain.config import PosttrainConfig

    run_cfg = load_config(PosttrainConfig, ["--config", config, *cfg.posttrain_args])
    return ["--backend", backend, "--run.seed", str(seed), "--optim.max_queries", str(cfg.max_queries),
            "--optim.max_steps", str(steps_within(run_cfg, cfg)), "--prompts.dataset", str(eval_prompts(cfg)),
            "--run.progress", "false", "--run.checkpoint_every", "0", *cfg.posttrain_args]


def eval_prompts(cfg: CrosscheckConfig) -> Path:
    return Path(cfg.out_dir) / "base" / "data" / "eval_prompts"


def check_configs(cfg: CrosscheckConfig) -> dict:
    """Every stage call's config and overrides, checked before any run is reused or started; arm → backend → the config
    of its runs (seed 0's)."""
    from experiments.stages import check_stage_args
    from posttrain.config import PosttrainConfig
    from pretrain.config import PretrainConfig

    check_stage_args(PretrainConfig, cfg.pretrain_config, cfg.pretrain_args, user_args=cfg.pretrain_args,
                     config_key="pretrain_config", user_key="pretrain_args")
    user = dict(user_args=cfg.posttrain_args, config_key="posttrain_configs", user_key="posttrain_args")
    run_cfgs = {}
    for arm, config in cfg.posttrain_configs.items():
        # the overrides alone first (the run's step count is read through them), then every run's whole command line
        check_stage_args(PosttrainConfig, config, cfg.posttrain_args, **user)
        run_cfgs[arm] = {backend: check_stage_args(PosttrainConfig, config, run_overrides(cfg, config, backend, 0), **user)
                         for backend in cfg.backends}
    return run_cfgs


def arm_facts(cfg: CrosscheckConfig, arm_cfgs: dict, support: dict) -> dict:
    """Per arm, from the base: how many eval prompts it trains, whether any is on-support, and the discovery rate the
    theory predicts (E α over them) for an arm whose discovery is tested (else None). ``arm_cfgs``: arm → a config
    of its runs (what is read from it is the same for every backend and seed)."""
    from barrierlab.loading import load_dataset_dir

    prompts = load_dataset_dir(eval_prompts(cfg), ["base_alpha", "cluster"])
    arms = {}
    for arm, run_cfg in arm_cfgs.items():
        clusters = run_cfg.prompts.clusters
        alpha = [a for a, c in zip(prompts["base_alpha"], prompts["cluster"]) if clusters is None or c in clusters]
        if not alpha:
            raise UserError(f"posttrain_configs '{arm}': the base has no eval prompts of prompts.clusters {clusters}")
        arms[arm] = {"prompts": len(alpha), "trains_onsupport": max(alpha) >= support["offsupport_threshold"],
                     "rate": statistics.fmean(alpha) if tests_discovery(run_cfg) else None}
    return arms


def run_all(cfg: CrosscheckConfig, out: Path, cluster: Cluster, arm_cfgs: dict) -> tuple[dict, dict]:
    """The base, then every (arm, backend, seed) run at once (finished ones reused); the arms' facts and the runs'
    metrics rows, (arm, backend) → seed → rows."""
    from barrierlab.rundir import read_metrics
    from experiments.stages import base_job, posttrain_job

    base = out / "base"
    cluster.run([base_job(cfg.pretrain_config, base, *cfg.pretrain_args)])
    cluster.check()
    arms = arm_facts(cfg, arm_cfgs, json.loads((base / "support.json").read_text()))
    folders = {(arm, backend, seed): out / f"{arm}_{backend}_s{seed}" for arm in cfg.posttrain_configs
               for backend in cfg.backends for seed in (cfg.discovery_seeds if arms[arm]["rate"] is not None else cfg.seeds)}
    cluster.run([posttrain_job(run_dir, "--config", cfg.posttrain_configs[arm], "--base", str(base), "--run.run_dir",
                               str(run_dir), *run_overrides(cfg, cfg.posttrain_configs[arm], backend, seed))
                 for (arm, backend, seed), run_dir in folders.items()])  # every folder checked before any run starts
    cluster.check()
    runs: dict = {}
    for (arm, backend, seed), run_dir in folders.items():
        runs.setdefault((arm, backend), {})[seed] = read_metrics(run_dir / "metrics.jsonl")
    return arms, runs


@cli_entry
def main(argv):
    cfg = load_config(CrosscheckConfig, argv, default_config="configs/crosscheck.yaml", prog="experiments.crosscheck")
    run_cfgs = check_configs(cfg)
    for arm, by_backend in run_cfgs.items():
        if "trl" in by_backend:
            check_trl_run(by_backend["trl"], f"posttrain_configs '{cfg.posttrain_configs[arm]}' with posttrain_args")
    with loading_libraries():  # torch and the analysis: seconds, once the configs pass
        from barrierlab.metrics import fmt_value
        from barrierlab.rundir import atomic_write_text, claim_output_dir
        from experiments import crosscheck_analysis as analysis
    out = claim_output_dir(cfg.out_dir, "out_dir", "make crosscheck")
    with Cluster(cfg.ray, out) as cluster:
        arms, runs = run_all(cfg, out, cluster, {arm: next(iter(by.values())) for arm, by in run_cfgs.items()})
    for (arm, backend), seeds in runs.items():
        for seed, rows in seeds.items():
            print(f"{arm} {backend} seed {seed}: first success {analysis.first_success(rows)}, off-support "
                  f"{fmt_value(analysis.final(rows, analysis.OFF))}", flush=True)
    table = analysis.summarise(runs)
    results = analysis.analyse(runs, arms, cfg.max_queries, cfg.confidence)
    lines = [line for r in results for line in analysis.discovery_lines(r, cfg.max_queries, cfg.confidence)]
    lines += analysis.likelihood_lines(table, arms)
    analysis.figure(runs, results, cfg.max_queries, lines, out / "crosscheck.png")
    atomic_write_text(out / "crosscheck.json", json.dumps({"max_queries": cfg.max_queries, "confidence": cfg.confidence,
                                                           "arms": arms, "discovery": results, "table": table,
                                                           "verdicts": lines}, indent=2))
    text = analysis.report(cfg, table, results, lines)
    atomic_write_text(out / "report.md", text)
    print(text.split("<details>")[0].rstrip())


if __name__ == "__main__":
    main()
