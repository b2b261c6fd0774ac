"""``make prm``: which learned process reward models break the base model barrier, at equal verifier-query budgets
with their labelling included.

    python -m experiments.prm --config configs/prm.yaml

From one base: four PRMs trained with ``python -m rewards.train_prm``, each spending the whole budget on its labels
(``exact`` on every cluster, ``exact`` on the on-support clusters only, ``monte_carlo``, ``implicit``); then, for
each seed, outcome PG and process PG (Algorithm 2) with the exact verifiers spending the same budget in
post-training, and process PG (the same Algorithm 2) with each PRM as ``learned_prm``, which asks the verifier
nothing and runs as many steps as the exact process arm of its seed. ``eval`` measures each PRM's prefix verdicts.
Writes prm.png, prm.json and report.md (``experiments.prm_analysis``).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

from barrierlab.config import load_config, require, require_distinct, require_seeds
from barrierlab.errors import cli_entry, loading_libraries
from eval.config import EvalStageConfig
from experiments.cluster import Cluster, Job, RayConfig
from experiments.stages import check_stage_args
from posttrain.config import PosttrainConfig
from pretrain.config import PretrainConfig
from rewards.train_prm.config import TrainPRMConfig, load_prm_config

# torch, Ray, matplotlib and the stages are imported once the config is parsed and checked: --help and a config error
# answer at once


@dataclass
class PRMExperimentConfig:
    out_dir: str = "runs/prm"
    """Folder of the base, the PRMs, the post-training runs, prm.png, prm.json and report.md."""
    pretrain_config: str = "configs/prm/pretrain.yaml"
    """The shared base (pretrained once)."""
    pretrain_args: list[str] = field(default_factory=list)
    """Overrides of the base's config."""
    budget: int = 20_000
    """Verifier queries of every arm, labelling included: a PRM's labels, or an exact arm's post-training."""
    prm_configs: dict[str, str] = field(default_factory=lambda: {
        "exact_all": "configs/prm/train_exact.yaml", "exact_onsupport": "configs/prm/train_exact_onsupport.yaml",
        "monte_carlo": "configs/prm/train_monte_carlo.yaml", "implicit": "configs/prm/train_implicit.yaml"})
    """PRM name → its training config (python -m rewards.train_prm)."""
    prm_args: list[str] = field(default_factory=list)
    """Overrides of every PRM's training config, e.g. ['--train.steps', '100']."""
    outcome_config: str = "configs/prm/posttrain_outcome.yaml"
    """Post-training config of the outcome arm (exact outcome verifier)."""
    process_config: str = "configs/prm/posttrain_process.yaml"
    """Post-training config of the process arms: the exact process verifier's, and each PRM's (as learned_prm)."""
    posttrain_args: list[str] = field(default_factory=list)
    """Overrides of every post-training run."""
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    """Post-training seeds of every arm."""
    eval_config: str = "configs/prm/eval.yaml"
    """The eval run that measures the PRMs' prefix verdicts."""
    ray: RayConfig = field(default_factory=RayConfig)
    """Where the runs go (a local Ray by default, or a cluster) and what each reserves: CPU threads, GPUs."""

    def check(self):
        require(self.budget >= 1, "budget", "must be ≥ 1")
        require(len(self.prm_configs) >= 1, "prm_configs", "must name at least one PRM")
        require(not {"outcome", "process"} & set(self.prm_configs), "prm_configs",
                "'outcome' and 'process' name the exact arms; call the PRMs something else")
        require_distinct(list(self.prm_configs.values()), "prm_configs")
        require_seeds(self.seeds)


def prm_overrides(cfg: PRMExperimentConfig) -> list[str]:
    """What every PRM's training gets on top of its config (besides its base and run folder): the budget."""
    return ["--labels.query_budget", str(cfg.budget), "--run.progress", "false", *cfg.prm_args]


def posttrain_args(cfg: PRMExperimentConfig, config: str, base: Path, run_dir: Path, seed: int, *arm: str) -> list[str]:
    return ["--config", config, "--base", str(base), "--run.run_dir", str(run_dir), "--run.seed", str(seed),
            "--run.progress", "false", *arm, *cfg.posttrain_args]


def exact_arm(budget: int) -> list[str]:
    return ["--optim.max_queries", str(budget)]


def prm_arm(prm_dir: Path, steps: int) -> list[str]:
    return ["--reward.name", "learned_prm", "--reward.params", f"{{run: {prm_dir}}}", "--optim.max_steps", str(steps),
            "--optim.max_queries", "null"]


def check(cfg: PRMExperimentConfig) -> None:
    """Every stage config and override, before anything runs (a missing file or a bad key is one line)."""
    check_stage_args(PretrainConfig, cfg.pretrain_config, cfg.pretrain_args, user_args=cfg.pretrain_args,
                     config_key="pretrain_config", user_key="pretrain_args")
    for config in cfg.prm_configs.values():
        check_stage_args(TrainPRMConfig, config, prm_overrides(cfg), user_args=cfg.prm_args,
                         config_key="prm_configs", user_key="prm_args")
    user = dict(user_args=cfg.posttrain_args, config_key="posttrain configs", user_key="posttrain_args")
    check_stage_args(PosttrainConfig, cfg.outcome_config, [*exact_arm(cfg.budget), *cfg.posttrain_args], **user)
    check_stage_args(PosttrainConfig, cfg.process_config, [*exact_arm(cfg.budget), *cfg.posttrain_args], **user)
    for prm_dir in prm_dirs(cfg, Path(cfg.out_dir)).values():  # what each PRM's arm gets: its reward and steps
        check_stage_args(PosttrainConfig, cfg.process_config, [*prm_arm(prm_dir, 1), *cfg.posttrain_args], **user)
    check_stage_args(EvalStageConfig, cfg.eval_config, [], user_args=[], config_key="eval_config", user_key="eval_config")


def prm_dirs(cfg: PRMExperimentConfig, out: Path) -> dict[str, Path]:
    """PRM name → its run folder."""
    return {name: out / f"prm_{name}" for name in cfg.prm_configs}


def prm_job(cfg: PRMExperimentConfig, name: str, base: Path, run_dir: Path) -> Job | None:
    """The training of PRM ``name`` in ``run_dir``, or None if it finished (its prm.json is written last)."""
    from experiments.stages import plan_run

    return plan_run("rewards.train_prm", load_prm_config, run_dir, (run_dir / "prm.json").exists(), "--config",
                    cfg.prm_configs[name], "--base", str(base), "--run.run_dir", str(run_dir), *prm_overrides(cfg))


def run_all(cfg: PRMExperimentConfig, out: Path, cluster: Cluster) -> tuple[dict, dict[str, Path]]:
    """The base, then the PRMs and the exact arms at once, then each PRM's arm (as many steps as its seed's exact
    process arm): every arm's metric rows by seed, and the PRMs' folders; one line naming every failed run."""
    from barrierlab.rundir import last_row, read_metrics
    from experiments.stages import base_job, posttrain_job

    base = out / "base"
    cluster.run([base_job(cfg.pretrain_config, base, *cfg.pretrain_args)])
    cluster.check()
    prms = prm_dirs(cfg, out)
    exact = {(arm, seed): out / f"{arm}_s{seed}" for seed in cfg.seeds for arm in ("outcome", "process")}
    configs = {"outcome": cfg.outcome_config, "process": cfg.process_config}
    cluster.run([prm_job(cfg, name, base, run_dir) for name, run_dir in prms.items()]
                + [posttrain_job(run_dir, *posttrain_args(cfg, configs[arm], base, run_dir, seed, *exact_arm(cfg.budget)))
                   for (arm, seed), run_dir in exact.items()])
    done = {seed: last_row(exact["process", seed], "done/steps") for seed in cfg.seeds}
    steps = {seed: row and row["done/steps"] for seed, row in done.items()}  # None where that run failed
    learned = {(name, seed): out / f"{name}_s{seed}" for seed in cfg.seeds for name in prms}
    cluster.run([posttrain_job(run_dir, *posttrain_args(cfg, cfg.process_config, base, run_dir, seed,
                                                        *prm_arm(prms[name], steps[seed])))
                 for (name, seed), run_dir in learned.items()
                 if steps[seed] is not None and (prms[name] / "prm.json").exists()])  # a failed run's arms wait
    cluster.check()
    runs: dict[str, dict[int, list[dict]]] = {}
    for (arm, seed), run_dir in {**exact, **learned}.items():
        runs.setdefault(arm, {})[seed] = read_metrics(run_dir / "metrics.jsonl")
    return runs, prms


@cli_entry
def main(argv):
    started = time.time()
    cfg = load_config(PRMExperimentConfig, argv, default_config="configs/prm.yaml", prog="experiments.prm")
    check(cfg)
    with loading_libraries():  # torch, matplotlib and the analysis: seconds, once the configs pass
        from barrierlab.metrics import fmt_value
        from barrierlab.rundir import atomic_write_text, claim_output_dir
        from experiments.prm_analysis import OFF, figure, final, label_stats, offsupport_clusters, report, summarise
    out = claim_output_dir(cfg.out_dir, "out_dir", "make prm")
    base, eval_dir = out / "base", out / "eval"
    with Cluster(cfg.ray, out) as cluster:
        runs, prms = run_all(cfg, out, cluster)
        cluster.run([Job("eval", eval_dir, ("--config", cfg.eval_config, "--base", str(base), "--out_dir", str(eval_dir),
                                            *[f"--prms.{name}={path}" for name, path in prms.items()]))])
        cluster.check()
    for name, run_dir in prms.items():
        info = json.loads((run_dir / "prm.json").read_text())
        print(f"PRM {name}: {info['label_source']} labels, {info['label_queries']} verifier queries", flush=True)
    for seed in cfg.seeds:
        print(f"seed {seed}: final off-support likelihood " + ", ".join(
            f"{arm} {fmt_value(final(by_seed[seed], OFF))}" for arm, by_seed in runs.items()), flush=True)
    support = json.loads((base / "support.json").read_text())
    quality = json.loads((eval_dir / "eval.json").read_text())["prms"]
    labels = {name: label_stats(path, offsupport_clusters(support)) for name, path in prms.items()}
    table = summarise(runs, quality, labels)
    figure(runs, labels, cfg.budget, out / "prm.png")
    atomic_write_text(out / "prm.json", json.dumps({"budget": cfg.budget, "seeds": cfg.seeds, "table": table,
                                                    "wall_time_s": round(time.time() - started, 1)}, indent=2))
    text = report(cfg, table, support, time.time() - started)
    atomic_write_text(out / "report.md", text)
    print(text.split("<details>")[0].rstrip())


if __name__ == "__main__":
    main()
