"""The barrier experiments: reward queries to reach a target likelihood, against N and against α.

    python -m experiments.sweep --config configs/scaling.yaml     # make scaling
    python -m experiments.sweep --config configs/alpha.yaml       # make alpha

``scaling``: for each N (and seed) pretrain a base whose off-support cluster has α ≈ k^-N, then run
outcome PG and process PG on that cluster's prompts until their mean likelihood of y* reaches the target
or the query budget runs out (censored). Fits the outcome growth factor per unit N and the process
growth in N. ``alpha``: one base with clusters of different designed α; outcome PG on each cluster that the base
puts on-support (measured α), alone; the log-log slope of queries against the base α (the theory's is -1).

Every run is a stage process writing its own run folder, run as a Ray task (``experiments.cluster``: the bases
first, then every post-training run at once as far as the CPUs or GPUs go), so a killed experiment resumes:
finished runs are reused (only if of the same config), unfinished ones resume from their checkpoints.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from barrierlab.config import dump_yaml, load_config, require, require_distinct, require_seeds
from barrierlab.errors import UserError, cli_entry, loading_libraries
from experiments.cluster import Cluster, Job, RayConfig

# torch, transformers, Ray and the stages are imported where they are used, once the config is parsed and checked:
# --help and a config error answer at once


@dataclass
class ExperimentConfig:
    experiment: Literal["scaling", "alpha"] = "scaling"
    """scaling: queries to target against N (outcome and process); alpha: against the base α (outcome)."""
    out_dir: str = "runs/scaling"
    """Folder of the experiment: one sub-folder per run, results.json, the figure and report.md."""
    pretrain_config: str = "configs/scaling/pretrain.yaml"
    """Pretraining config of the bases (N is overridden per run in the scaling experiment)."""
    posttrain_configs: dict[str, str] = field(default_factory=lambda: {"outcome": "configs/scaling/posttrain_outcome.yaml",
                                                             "process": "configs/scaling/posttrain_process.yaml"})
    """Arm name → post-training config. Scaling fits arms with a process reward ∝ N^b, those with an outcome reward
    ∝ e^{bN}."""
    Ns: list[int] = field(default_factory=lambda: [4, 5, 6, 7, 8])
    """Response lengths (scaling only)."""
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    """Post-training seeds. Each base is pretrained once (its config's seed): the spread that matters is
    when outcome PG first samples y*, a geometric waiting time, so seeds go to post-training."""
    clusters: list[int] | None = None
    """Clusters to post-train on: scaling, their prompts together (null: every cluster whose base α, the
    geometric mean over its eval prompts, is below the base's off-support threshold);
    alpha, each on-support cluster alone (null: every cluster whose base α, the geometric mean over its eval
    prompts, is at least the base's off-support threshold)."""
    target_likelihood: float = 0.5
    """A run reaches the target when the mean likelihood of y* on its trained prompts gets here."""
    max_queries: int = 300_000
    """Query budget of every post-training run; a run that spends it without reaching the target is censored."""
    extra_args: list[str] = field(default_factory=list)
    """Extra overrides passed to every stage, e.g. ['--run.mixed_precision', 'bf16']."""
    ray: RayConfig = field(default_factory=RayConfig)
    """Where the runs go (a local Ray by default, or a cluster) and what each reserves: CPU threads, GPUs."""

    def check(self):
        require(len(self.Ns) >= 1 and all(n >= 1 for n in self.Ns), "Ns", "must list response lengths ≥ 1")
        require_distinct(self.Ns, "Ns")
        require_distinct(self.clusters or [], "clusters")
        require_seeds(self.seeds)
        require(0 < self.target_likelihood <= 1, "target_likelihood", "must be in (0, 1]")
        require(self.max_queries >= 1, "max_queries", "must be ≥ 1")
        require(len(self.posttrain_configs) >= 1, "posttrain_configs", "must name at least one arm")
        require(self.experiment != "alpha" or len(self.posttrain_configs) == 1, "posttrain_configs",
                f"the alpha experiment runs one arm (outcome PG); name exactly one, not {len(self.posttrain_configs)}")


def pretrain_overrides(cfg: ExperimentConfig, N: int | None) -> list[str]:
    """What a base's pretraining gets on top of its config (besides its run folder): N, in the scaling experiment."""
    return [*(["--task.N", str(N)] if N is not None else []), *cfg.extra_args]


def posttrain_overrides(cfg: ExperimentConfig, seed: int, clusters: list[int]) -> list[str]:
    """What every post-training run gets on top of its arm's config (besides its base and run folder)."""
    return ["--run.seed", str(seed), "--run.progress", "false", "--prompts.clusters", json.dumps(clusters),
            "--optim.target_likelihood", str(cfg.target_likelihood), "--optim.stop_on", "trained",
            "--optim.max_queries", str(cfg.max_queries), "--optim.max_steps", "1000000000", *cfg.extra_args]


def check_overrides(cfg: ExperimentConfig) -> None:
    """Every stage call's config and overrides, and the clusters to post-train on, checked before any run is reused
    or started."""
    from experiments.stages import check_stage_args
    from posttrain.config import PosttrainConfig
    from pretrain.config import PretrainConfig
    from pretrain.profile import designed_alpha

    for N in cfg.Ns if cfg.experiment == "scaling" else [None]:
        base = check_stage_args(PretrainConfig, cfg.pretrain_config, pretrain_overrides(cfg, N), user_args=cfg.extra_args,
                                config_key="pretrain_config", user_key="extra_args (given to the bases' pretraining too)")
        n = len(base.profile)
        bad = [c for c in cfg.clusters or [] if not 0 <= c < n]
        if bad or cfg.clusters == []:
            raise UserError(f"clusters: {bad or 'empty list'} not in 0..{n - 1} (the clusters of "
                            f"pretrain_config '{cfg.pretrain_config}')")
        threshold = base.support.offsupport_threshold
        if cfg.clusters is None and cfg.experiment == "scaling" and not any(
                designed_alpha(c, base.task.k, base.task.N) < threshold for c in base.profile):
            raise UserError(f"clusters: pretrain_config '{cfg.pretrain_config}' has no cluster designed off-support "
                            f"(designed α < {threshold:g}) at N = {base.task.N} to train on by default; add "
                            "{coverage: sequence, p: 0.0}, or list clusters")
    for config in cfg.posttrain_configs.values():
        check_stage_args(PosttrainConfig, config, posttrain_overrides(cfg, cfg.seeds[0], cfg.clusters or [0]),
                         user_args=cfg.extra_args, config_key="posttrain_configs", user_key="extra_args")


def posttrain_job(cfg: ExperimentConfig, arm: str, base: Path, run_dir: Path, seed: int,
                  clusters: list[int]) -> Job | None:
    """The job of one run of ``arm`` on ``clusters``, or None if it is finished (a folder of other settings: refused)."""
    from experiments.stages import posttrain_job as job

    return job(run_dir, "--config", cfg.posttrain_configs[arm], "--base", str(base), "--run.run_dir", str(run_dir),
               *posttrain_overrides(cfg, seed, clusters))


def run_result(cfg: ExperimentConfig, run_dir: Path) -> dict:
    """What the analysis needs of a finished run: its reward granularity and behaviour (as run, overrides included),
    the base's mean α of the trained prompts (its step-0 evaluation), the queries to reach the target and the
    discovery queries (the first y* sampled), each with its censoring flag."""
    import yaml

    from barrierlab.rundir import read_metrics
    from eval.analysis import eval_rows, queries_to_reach
    from rewards import granularity_of

    rows = read_metrics(run_dir / "metrics.jsonl")
    queries, censored = queries_to_reach(rows, "eval/trained_likelihood", cfg.target_likelihood)
    done = rows[-1]
    labels = done.get("done/label_queries", 0)  # a learned reward's labelling, counted as queries_to_reach counts it
    if censored:  # the budget it spent: its evaluations may have paused while the policy was at rest
        queries = done["done/reward_queries"] + labels
    first = done["done/first_success_queries"]
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    return {"reward": granularity_of(config), "behaviour": config["algo"]["behaviour"],
            "base_alpha": eval_rows(rows)[0]["eval/trained_likelihood"], "queries": queries, "censored": censored,
            "discovery": labels + (done["done/reward_queries"] if first is None else first),
            "discovery_censored": first is None}


def run_bases(cfg: ExperimentConfig, cluster: Cluster, bases: dict) -> dict:
    """Pretrain the bases (N or None → folder) that are not there yet, at once; the support.json of each that is."""
    from experiments.stages import base_job

    failed = {job.run_dir for job in cluster.run([base_job(cfg.pretrain_config, base, *pretrain_overrides(cfg, N))
                                                  for N, base in bases.items()])}
    return {N: json.loads((base / "support.json").read_text()) for N, base in bases.items() if base not in failed}


def run_posttraining(cfg: ExperimentConfig, cluster: Cluster, runs: list[tuple[dict, tuple]]) -> list[dict]:
    """``runs`` (each: its fields in results.json, and ``posttrain_job``'s arguments after ``cfg``) at once; their
    results, in order, or one line naming every run that failed (bases included) once the others are done."""
    cluster.run([posttrain_job(cfg, *args) for _, args in runs])  # every folder checked before any run starts
    cluster.check()
    return [{**fields, **run_result(cfg, args[2])} for fields, args in runs]


def run_scaling(cfg: ExperimentConfig, out: Path, cluster: Cluster) -> dict:
    bases = {N: out / f"N{N}" / "base" for N in cfg.Ns}
    supports, runs = run_bases(cfg, cluster, bases), []
    for N, support in supports.items():
        clusters = cfg.clusters or support_clusters(support, on=False)
        if not clusters:
            raise UserError(f"clusters: no cluster of the base {bases[N]} at N = {N} measures off-support (geometric-mean "
                            f"base α < {support['offsupport_threshold']:g}) to train on by default; list clusters, or "
                            "add a {coverage: sequence, p: 0.0} cluster to pretrain_config")
        runs += [({"arm": arm, "N": N, "seed": seed}, (arm, bases[N], bases[N].parent / f"{arm}_s{seed}", seed, clusters))
                 for seed in cfg.seeds for arm in cfg.posttrain_configs]
    results = run_posttraining(cfg, cluster, runs)
    for run in results:
        print(f"N={run['N']} seed={run['seed']} {run['arm']}: first y* after {run['discovery']} queries"
              f"{' (censored)' if run['discovery_censored'] else ''}, target after {run['queries']}"
              f"{' (censored)' if run['censored'] else ''}", flush=True)
    k = next(iter(supports.values()))["k"]  # every base is there: cluster.check() passed
    return {"k": k, "target_likelihood": cfg.target_likelihood, "max_queries": cfg.max_queries, "runs": results}


def support_clusters(support: dict, on: bool) -> list[int]:
    """Clusters on-support (``on``) or off-support as the base measures them (science.md: support is always the
    base's, not the design): base α, the geometric mean over the cluster's eval prompts, at least the base's
    off-support threshold, or below it."""
    return [r["cluster"] for r in support["clusters"] if (r["alpha_geomean"] >= support["offsupport_threshold"]) == on]


def run_alpha(cfg: ExperimentConfig, out: Path, cluster: Cluster) -> dict:
    base = out / "base"
    support = run_bases(cfg, cluster, {None: base}).get(None)
    cluster.check()  # one line if the base failed
    rows = {r["cluster"]: r for r in support["clusters"]}
    arm = next(iter(cfg.posttrain_configs))
    runs = [({"cluster": c, "seed": seed}, (arm, base, out / f"{arm}_c{c}_s{seed}", seed, [c]))
            for seed in cfg.seeds for c in cfg.clusters or support_clusters(support, on=True)]
    results = [{"cluster": r["cluster"], "seed": r["seed"], "alpha": r["base_alpha"],
                "designed_alpha": rows[r["cluster"]]["designed_alpha"], **r} for r in run_posttraining(cfg, cluster, runs)]
    for run in results:
        print(f"seed={run['seed']} cluster {run['cluster']} (α {run['base_alpha']:.3g}): first y* after "
              f"{run['discovery']} queries, target after {run['queries']}{' (censored)' if run['censored'] else ''}",
              flush=True)
    return {"target_likelihood": cfg.target_likelihood, "max_queries": cfg.max_queries, "runs": results}


def write_report(cfg: ExperimentConfig, out: Path, results: dict) -> None:
    from barrierlab.rundir import atomic_write_text
    from eval import rate_figures
    from eval.rates import METHOD, alpha_analysis, alpha_verdict, scaling_analysis, scaling_verdict

    atomic_write_text(out / "results.json", json.dumps(results, indent=2))
    if cfg.experiment == "scaling":
        analysis = scaling_analysis(results)
        figure = rate_figures.scaling_figure(results, analysis, out / "scaling.png")
        title, lines = "Reward queries against N: discovery and reaching the target", scaling_verdict(results, analysis)
    else:
        analysis = alpha_analysis(results)
        figure = rate_figures.alpha_figure(results, analysis, out / "alpha.png")
        title, lines = "Outcome-PG reward queries against the base likelihood α", alpha_verdict(analysis)
    atomic_write_text(out / "analysis.json", json.dumps(analysis, indent=2))
    lines = [f"- {line}" for line in lines]
    keys = list(results["runs"][0]) if results["runs"] else []
    table = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)] if keys else []
    table += ["| " + " | ".join(f"{v:.3g}" if isinstance(v, float) else str(v) for v in r.values()) + " |"
              for r in results["runs"]]
    text = "\n".join([f"# {title}", "", f"![{cfg.experiment}]({Path(figure).name})", "",
                      f"Target: mean likelihood of y* ≥ {results['target_likelihood']} on the trained prompts; "
                      f"budget {results['max_queries']} reward queries per run (censored runs hit it). {METHOD}", "",
                      *lines, "", *table, "", "<details><summary>experiment config</summary>", "", "```yaml",
                      dump_yaml(cfg).rstrip(), "```", "</details>", ""])
    atomic_write_text(out / "report.md", text)
    print("\n".join(lines))
    print(f"report: {out / 'report.md'}")


@cli_entry
def main(argv):
    cfg = load_config(ExperimentConfig, argv, default_config="configs/scaling.yaml", prog="experiments.sweep")
    check_overrides(cfg)
    with loading_libraries():  # torch and the analysis: seconds, once the configs pass
        from barrierlab.rundir import claim_output_dir
    out = claim_output_dir(cfg.out_dir, "out_dir", f"the {cfg.experiment} experiment")
    with Cluster(cfg.ray, out) as cluster:
        results = run_scaling(cfg, out, cluster) if cfg.experiment == "scaling" else run_alpha(cfg, out, cluster)
    write_report(cfg, out, results)


if __name__ == "__main__":
    main()
