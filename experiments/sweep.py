"""The barrier experiments: reward queries to reach a target likelihood, against N and against α.

    python -m experiments.sweep --config configs/scaling.yaml     # make scaling
    python -m experiments.sweep --config configs/alpha.yaml       # make alpha

``scaling``: for each N (and seed) pretrain a base whose off-support cluster has α ≈ k^-N, then run
outcome PG and process PG on that cluster's prompts until their mean likelihood of y* reaches the target
or the query budget runs out (censored). Fits the outcome growth factor per unit N and the process
growth in N. ``alpha``: one base with clusters of different designed α; outcome PG on each cluster that the base
puts on-support (measured α), alone; the log-log slope of queries against the base α (the theory's is -1).

Every run is a stage subprocess writing its own run folder, so a killed experiment resumes: finished runs
are reused (only if of the same config), unfinished ones resume from their checkpoints.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import yaml

from barrierlab.config import dump_yaml, load_config, require, require_distinct, require_seeds
from barrierlab.errors import UserError, cli_entry
from barrierlab.rundir import atomic_write_text, claim_output_dir, last_row, read_metrics
from eval import rate_figures
from eval.analysis import eval_rows, queries_to_reach
from eval.rates import METHOD, alpha_analysis, alpha_verdict, scaling_analysis, scaling_verdict
from experiments.stages import check_stage_args, ensure_base, reuse_or_run
from posttrain.config import PosttrainConfig, load_posttrain_config
from pretrain.config import PretrainConfig
from pretrain.profile import designed_alpha
from rewards import granularity_of


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


def posttrain_to_target(cfg: ExperimentConfig, arm: str, base: Path, run_dir: Path, seed: int,
                        clusters: list[int]) -> dict:
    """One run of ``arm`` on ``clusters`` (reused if finished) and what the analysis needs of it: its reward granularity
    and behaviour (as run, overrides included), the base's mean α of the trained prompts (its step-0 evaluation), the
    queries to reach the target and the discovery queries (the first y* sampled), each with its censoring flag."""
    reuse_or_run("posttrain", load_posttrain_config, run_dir, last_row(run_dir, "done/steps") is not None,
                 "--config", cfg.posttrain_configs[arm], "--base", str(base), "--run.run_dir", str(run_dir),
                 *posttrain_overrides(cfg, seed, clusters))
    rows = read_metrics(run_dir / "metrics.jsonl")
    queries, censored = queries_to_reach(rows, "eval/trained_likelihood", cfg.target_likelihood)
    done = rows[-1]
    if censored:  # the budget it spent: its evaluations may have paused while the policy was at rest
        queries = done["done/reward_queries"]
    first = done["done/first_success_queries"]
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    return {"reward": granularity_of(config), "behaviour": config["algo"]["behaviour"],
            "base_alpha": eval_rows(rows)[0]["eval/trained_likelihood"], "queries": queries, "censored": censored,
            "discovery": done["done/reward_queries"] if first is None else first, "discovery_censored": first is None}


def run_scaling(cfg: ExperimentConfig, out: Path) -> dict:
    runs, k = [], None
    for N in cfg.Ns:
        base = out / f"N{N}" / "base"
        support = ensure_base(cfg.pretrain_config, base, *pretrain_overrides(cfg, N))
        k = support["k"]
        clusters = cfg.clusters or support_clusters(support, on=False)
        if not clusters:
            raise UserError(f"clusters: no cluster of the base {base} at N = {N} measures off-support (geometric-mean "
                            f"base α < {support['offsupport_threshold']:g}) to train on by default; list clusters, or "
                            "add a {coverage: sequence, p: 0.0} cluster to pretrain_config")
        for seed in cfg.seeds:
            for arm in cfg.posttrain_configs:
                run = posttrain_to_target(cfg, arm, base, base.parent / f"{arm}_s{seed}", seed, clusters)
                runs.append({"arm": arm, "N": N, "seed": seed, **run})
                print(f"N={N} seed={seed} {arm}: first y* after {run['discovery']} queries"
                      f"{' (censored)' if run['discovery_censored'] else ''}, target after {run['queries']}"
                      f"{' (censored)' if run['censored'] else ''}", flush=True)
    return {"k": k, "target_likelihood": cfg.target_likelihood, "max_queries": cfg.max_queries, "runs": runs}


def support_clusters(support: dict, on: bool) -> list[int]:
    """Clusters on-support (``on``) or off-support as the base measures them (science.md: support is always the
    base's, not the design): base α, the geometric mean over the cluster's eval prompts, at least the base's
    off-support threshold, or below it."""
    return [r["cluster"] for r in support["clusters"] if (r["alpha_geomean"] >= support["offsupport_threshold"]) == on]


def run_alpha(cfg: ExperimentConfig, out: Path) -> dict:
    runs = []
    base = out / "base"
    support = ensure_base(cfg.pretrain_config, base, *pretrain_overrides(cfg, None))
    rows = {r["cluster"]: r for r in support["clusters"]}
    chosen = cfg.clusters or support_clusters(support, on=True)
    arm = next(iter(cfg.posttrain_configs))
    for seed in cfg.seeds:
        for c in chosen:
            run = posttrain_to_target(cfg, arm, base, out / f"{arm}_c{c}_s{seed}", seed, [c])
            runs.append({"cluster": c, "seed": seed, "alpha": run["base_alpha"], "designed_alpha": rows[c]["designed_alpha"],
                         **run})
            print(f"seed={seed} cluster {c} (α {run['base_alpha']:.3g}): first y* after {run['discovery']} queries, "
                  f"target after {run['queries']}{' (censored)' if run['censored'] else ''}", flush=True)
    return {"target_likelihood": cfg.target_likelihood, "max_queries": cfg.max_queries, "runs": runs}


def write_report(cfg: ExperimentConfig, out: Path, results: dict) -> None:
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
    out = claim_output_dir(cfg.out_dir, "out_dir", f"the {cfg.experiment} experiment")
    results = run_scaling(cfg, out) if cfg.experiment == "scaling" else run_alpha(cfg, out)
    write_report(cfg, out, results)


if __name__ == "__main__":
    main()
