"""``make paper``: the authors' Figures 1 and 2 on their own setting, with the linear model and with the transformer.

    python -m experiments.paper --config configs/paper.yaml      # or configs/gpu/paper.yaml

Figure 1 (per model class, per seed): the base is the supervised stage itself on the Gaussian-mixture task; from it,
on-policy outcome PG and process PG, evaluated exactly every ``eval_every`` steps: the test error 1 − mean p(y*|x) on
the base's test inputs and the likelihood of each mixture centre, whose base likelihood below the threshold makes it
off-support. Figure 2 (per model class): one supervised run on the Rademacher task with a checkpoint every
``checkpoint_every`` steps; each checkpoint's likelihoods of y* on fresh samples give the CDF, the LQ Q(ε) and the
α-tail α · P[q(y*|x) > α]. Every run is a stage run in its own folder under ``out_dir``, handed to Ray (experiments/cluster.py:
the bases at once, then the arms at once; a rerun reuses finished runs and resumes unfinished ones); the driver writes ``results.json``, the figures and ``report.md`` (eval/paper_report.py).
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from barrierlab.config import dump_yaml, load_config, require, require_distinct, require_seeds
from barrierlab.errors import UserError, cli_entry, loading_libraries
from experiments.cluster import Cluster, RayConfig
from experiments.stages import check_stage_args
from posttrain.config import PosttrainConfig
from pretrain.config import PretrainConfig, load_pretrain_config

# torch, Ray, matplotlib and the stages are imported once the config is parsed and checked: --help and a config error
# answer at once
MODELS = ("linear", "transformer")
ARMS = ("outcome", "process")


@dataclass
class Figure1Config:
    pretrain_config: str = "configs/paper/pretrain_linear.yaml"
    """The base: the supervised stage on the Gaussian mixture (its seed and task seed are set per run)."""
    outcome_config: str = "configs/paper/posttrain_outcome.yaml"
    """Outcome PG (its base, run folder and seed are set per run)."""
    process_config: str = "configs/paper/posttrain_process.yaml"
    """Process PG (its base, run folder and seed are set per run)."""
    pretrain_args: list[str] = field(default_factory=list)
    """Overrides of the base's pretraining config, e.g. ['--train.steps', '500']."""
    posttrain_args: list[str] = field(default_factory=list)
    """Overrides of both arms' configs, e.g. ['--optim.max_steps', '400'] (the transformer's CPU setting)."""


@dataclass
class Figure2Config:
    pretrain_config: str = "configs/paper/pretrain_cdf_linear.yaml"
    """The supervised run on the Rademacher task whose checkpoints Figure 2 measures."""
    pretrain_args: list[str] = field(default_factory=list)
    """Overrides of its config."""
    samples: int = 16384
    """Fresh samples on which each checkpoint's likelihoods of y* are measured."""

    def check(self):
        require(self.samples >= 1, "samples", "must be ≥ 1")


@dataclass
class PaperConfig:
    out_dir: str = "runs/paper"
    """Folder of every run, results.json, the figures and report.md."""
    models: list[str] = field(default_factory=lambda: list(MODELS))
    """Model classes to run: linear (the theory's, the authors' own) and transformer."""
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    """Figure 1 seeds: each draws its own rule (task.seed) and its own runs (run.seed)."""
    linear: Figure1Config = field(default_factory=Figure1Config)
    """Figure 1 with the linear model."""
    transformer: Figure1Config = field(default_factory=lambda: Figure1Config(
        "configs/paper/pretrain_transformer.yaml", "configs/paper/posttrain_outcome_transformer.yaml",
        "configs/paper/posttrain_process_transformer.yaml"))
    """Figure 1 with the transformer."""
    cdf_linear: Figure2Config = field(default_factory=Figure2Config)
    """Figure 2 with the linear model."""
    cdf_transformer: Figure2Config = field(default_factory=lambda: Figure2Config("configs/paper/pretrain_cdf_transformer.yaml"))
    """Figure 2 with the transformer."""
    ray: RayConfig = field(default_factory=RayConfig)
    """Where the runs go (a local Ray by default, or a cluster) and what each reserves: CPU threads, GPUs."""

    def check(self):
        require(len(self.models) >= 1 and all(m in MODELS for m in self.models), "models",
                "list at least one of: linear, transformer")
        require_distinct(self.models, "models")
        require_seeds(self.seeds)
        require(len(self.seeds) >= 1, "seeds", "must list at least one seed")


def base_overrides(seed: int, args: list[str]) -> list[str]:
    return ["--run.seed", str(seed), "--task.seed", str(seed), *args]


def arm_overrides(seed: int, args: list[str]) -> list[str]:
    return ["--run.seed", str(seed), "--run.progress", "false", *args]


def arm_config(f1: Figure1Config, arm: str) -> str:
    return f1.outcome_config if arm == "outcome" else f1.process_config


def check_configs(cfg: PaperConfig) -> None:
    """Every stage's config and overrides, before any run is reused or started; a model's bases must be of the
    Gaussian-mixture task (Figure 1 tracks its centres) and its Figure 2 run of one with checkpoints to measure."""
    for m in cfg.models:
        f1, f2 = getattr(cfg, m), getattr(cfg, f"cdf_{m}")
        base = check_stage_args(PretrainConfig, f1.pretrain_config, base_overrides(cfg.seeds[0], f1.pretrain_args),
                                user_args=f1.pretrain_args, config_key=f"{m}.pretrain_config", user_key=f"{m}.pretrain_args")
        if base.task.name != "gaussian_mixture" or base.model.kind != m:
            raise UserError(f"{m}.pretrain_config: '{f1.pretrain_config}' must pretrain the {m} model on the "
                            f"gaussian_mixture task (it has {base.model.kind} on {base.task.name})")
        for arm in ARMS:
            check_stage_args(PosttrainConfig, arm_config(f1, arm), arm_overrides(cfg.seeds[0], f1.posttrain_args),
                             user_args=f1.posttrain_args, config_key=f"{m}.{arm}_config", user_key=f"{m}.posttrain_args")
        cdf = check_stage_args(PretrainConfig, f2.pretrain_config, base_overrides(0, f2.pretrain_args),
                               user_args=f2.pretrain_args, config_key=f"cdf_{m}.pretrain_config",
                               user_key=f"cdf_{m}.pretrain_args")
        if cdf.model.kind != m or not cdf.run.checkpoint_every or \
                cdf.run.keep_checkpoints * cdf.run.checkpoint_every < cdf.train.steps:
            raise UserError(f"cdf_{m}.pretrain_config: '{f2.pretrain_config}' must pretrain the {m} model with a "
                            "checkpoint every run.checkpoint_every steps, all kept (run.keep_checkpoints × "
                            "checkpoint_every ≥ train.steps)")


def run_all(cfg: PaperConfig, out: Path, cluster: Cluster) -> None:
    """Every base (Figure 1's, one per model and seed, and Figure 2's) at once, then every PG arm at once; reused where
    finished; one line naming every failed run."""
    from experiments.stages import base_job, posttrain_job

    cluster.run([base_job(getattr(cfg, m).pretrain_config, out / m / f"base_s{seed}",
                          *base_overrides(seed, getattr(cfg, m).pretrain_args)) for m in cfg.models for seed in cfg.seeds]
                + [base_job(getattr(cfg, f"cdf_{m}").pretrain_config, out / m / "cdf_base",
                            *base_overrides(0, getattr(cfg, f"cdf_{m}").pretrain_args)) for m in cfg.models])
    arms = []
    for m in cfg.models:
        for seed in cfg.seeds:
            base = out / m / f"base_s{seed}"
            if (base / "support.json").exists():  # a failed base's arms wait for the next run
                arms += [posttrain_job(out / m / f"{arm}_s{seed}", "--config", arm_config(getattr(cfg, m), arm),
                                       "--base", str(base), "--run.run_dir", str(out / m / f"{arm}_s{seed}"),
                                       *arm_overrides(seed, getattr(cfg, m).posttrain_args)) for arm in ARMS]
    cluster.run(arms)
    cluster.check()


def figure1(cfg: PaperConfig, out: Path, m: str) -> dict:
    """What the figures need of model class ``m``'s bases and arms, seed by seed."""
    import torch

    from barrierlab.loading import load_dataset_dir, load_model_dir, prompt_tensors
    from barrierlab.policy import target_stats
    from barrierlab.rundir import read_metrics

    seeds = {}
    for seed in cfg.seeds:
        base, runs = out / m / f"base_s{seed}", {}
        for arm in ARMS:
            rows = [r for r in read_metrics(out / m / f"{arm}_s{seed}" / "metrics.jsonl") if "eval/expected_error" in r]
            runs[arm] = {"step": [r["step"] for r in rows], "queries": [r["train/reward_queries"] for r in rows],
                         "test_error": [r["eval/expected_error"] for r in rows],
                         "centres": [r["eval/tracked_likelihood"] for r in rows]}
        test = list(load_dataset_dir(base / "data" / "eval_prompts", ["base_alpha"])["base_alpha"])
        tracked = load_dataset_dir(base / "data" / "tracked_prompts", ["base_alpha"])
        model, _, info = load_model_dir(base / "model")
        with torch.no_grad():  # the base's worst next-token probability along each centre's y* (its token coverage)
            token_min = target_stats(model.eval(), *prompt_tensors(tracked), info["task"]["k"])[1].exp()
        threshold = json.loads((base / "support.json").read_text())["offsupport_threshold"]
        seeds[seed] = {"base_test_error": 1 - sum(test) / len(test), "centre_alpha": list(tracked["base_alpha"]),
                       "centre_token_min": token_min.tolist(), "threshold": threshold, "runs": runs}
    return seeds


def setting(cfg: PaperConfig, out: Path, m: str) -> dict:
    """What model class ``m`` ran, from its first seed's resolved configs: for the report's comparison with the
    authors' setting (the PG settings of each arm)."""
    import yaml

    seed = cfg.seeds[0]
    base = yaml.safe_load((out / m / f"base_s{seed}" / "config.yaml").read_text())
    arms = {arm: yaml.safe_load((out / m / f"{arm}_s{seed}" / "config.yaml").read_text())["optim"] for arm in ARMS}
    return {"d": base["task"]["d"], "k": base["task"]["k"], "N": base["task"]["N"],
            "pretrain_steps": base["train"]["steps"], "components": len(base["profile"]),
            "unseen_components": sum(1 for c in base["profile"] if c.get("weight", 1.0) == 0),
            "arms": {arm: {key: o[key] for key in ("batch_size", "max_steps", "optimizer", "lr")} for arm, o in arms.items()}}


def figure2(cfg: PaperConfig, out: Path, m: str) -> dict:
    """The checkpoints of model class ``m``'s Figure 2 run: their log-likelihoods of y* on fresh samples, sorted."""
    import torch

    from barrierlab.loading import load_model_dir
    from barrierlab.models import build_model
    from barrierlab.policy import target_stats
    from barrierlab.tasks import task_from_info

    f2 = getattr(cfg, f"cdf_{m}")
    run = out / m / "cdf_base"
    pre = load_pretrain_config(["--config", f2.pretrain_config, *base_overrides(0, f2.pretrain_args)])
    _, _, info = load_model_dir(run / "model")
    task = task_from_info(info)
    inputs, clusters = task.sample_prompts(f2.samples, torch.Generator().manual_seed(2**31 - 1))
    prompts, targets = task.prompts(inputs), task.targets(inputs, clusters)
    models = {0: build_model(pre.model, d=task.d, k=task.k, seed=pre.run.seed, continuous=task.continuous)}
    for folder in sorted((run / "checkpoints").glob("step_*")):
        models[int(folder.name.split("_")[1])] = load_model_dir(folder)[0]
    with torch.no_grad():
        log_p = {step: torch.sort(target_stats(model.eval(), prompts, targets, task.k)[0].double()).values.tolist()
                 for step, model in sorted(models.items())}
    return {"k": task.k, "N": task.N, "d": task.d, "samples": f2.samples, "log_likelihood": log_p}


@cli_entry
def main(argv):
    cfg = load_config(PaperConfig, argv, default_config="configs/paper.yaml", prog="experiments.paper")
    check_configs(cfg)
    with loading_libraries():  # torch, matplotlib and the figures: seconds, once the configs pass
        import torch

        from barrierlab.rundir import atomic_write_text, claim_output_dir
        from eval import paper_report
    out = claim_output_dir(cfg.out_dir, "out_dir", "make paper")
    started, load_start = time.perf_counter(), os.getloadavg()
    with Cluster(cfg.ray, out) as cluster:
        run_all(cfg, out, cluster)
        threads = cluster.threads or torch.get_num_threads()  # no Ray started: every run was reused
    results = {"models": {m: figure1(cfg, out, m) for m in cfg.models},
               "settings": {m: setting(cfg, out, m) for m in cfg.models},
               "cdf": {m: figure2(cfg, out, m) for m in cfg.models},
               "stage_times_s": {str(run.relative_to(out)): t for run, t in cluster.seconds.items()},
               "cpus": len(os.sched_getaffinity(0)), "threads": threads, "load_average_start": load_start,
               "wall_time_s": round(time.perf_counter() - started, 1), "load_average_end": os.getloadavg()}
    atomic_write_text(out / "results.json", json.dumps(results))
    atomic_write_text(out / "config.yaml", dump_yaml(cfg))
    report = paper_report.write(out, results, cfg.seeds)
    print(report)
    print(f"report: {out / 'report.md'}; results: {out / 'results.json'}")


if __name__ == "__main__":
    main()
