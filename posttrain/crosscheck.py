"""``make crosscheck``: the same base, task and query budget through both backends, several seeds each.

    python -m posttrain.crosscheck --config configs/crosscheck.yaml

For every reward (outcome, process), backend (native, trl) and seed, one ``posttrain`` run; then one figure
with all curves overlaid (off- and on-support likelihood of y* against reward queries), a table of the final
numbers (mean and spread over seeds) and the qualitative verdict both backends must share: outcome PG leaves
off-support likelihood below 1e-3, process PG lifts it above 0.5.
"""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from barrierlab.config import dump_yaml, load_config, require, require_distinct, require_seeds  # noqa: E402
from barrierlab.errors import cli_entry  # noqa: E402
from barrierlab.metrics import fmt_value  # noqa: E402
from barrierlab.run import atomic_write_text, claim_output_dir, last_row, read_metrics  # noqa: E402
from barrierlab.stages import check_stage_args, check_trl_config, ensure_base, reuse_or_run  # noqa: E402
from eval.analysis import QUERIES, eval_rows  # noqa: E402
from posttrain.config import PosttrainConfig, load_posttrain_config  # noqa: E402
from pretrain.config import PretrainConfig  # noqa: E402

OFF, ON = "eval/offsupport_likelihood", "eval/onsupport_likelihood"


@dataclass
class CrosscheckConfig:
    out_dir: str = "runs/crosscheck"
    """Folder of the runs, crosscheck.png, crosscheck.json and report.md."""
    pretrain_config: str = "configs/scaling/pretrain.yaml"
    """The shared base (pretrained once)."""
    pretrain_args: list[str] = field(default_factory=lambda: ["--task.N", "10"])
    """Overrides of the base's config (N = 10, k = 4: off-support α ≈ 1e-6, out of the budget's reach)."""
    posttrain_configs: dict[str, str] = field(default_factory=lambda: {"outcome": "configs/scaling/posttrain_outcome.yaml",
                                                             "process": "configs/scaling/posttrain_process.yaml"})
    """Reward arm → post-training config, run by both backends."""
    backends: list[str] = field(default_factory=lambda: ["native", "trl"])
    """Backends to compare."""
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    """Post-training seeds per (arm, backend)."""
    max_queries: int = 60_000
    """Equal reward-query budget of every run."""
    posttrain_args: list[str] = field(default_factory=lambda: ["--algo.group_size", "4", "--algo.baseline", "group_mean"])
    """Overrides for every run: TRL needs groups of ≥ 2, so both backends use G = 4 and the group-mean baseline."""

    def check(self):
        require(len(self.backends) >= 1 and all(b in ("native", "trl") for b in self.backends), "backends",
                "list at least one of: native, trl")
        require(len(self.posttrain_configs) >= 1, "posttrain_configs", "must name at least one arm")
        require_distinct(self.backends, "backends")
        require_seeds(self.seeds)
        require(self.max_queries >= 1, "max_queries", "must be ≥ 1")


def steps_within(config: str, cfg: CrosscheckConfig) -> int:
    """A step count the query budget always reaches first: every response costs at least one query, so B
    responses a step spend the budget within ceil(max_queries / B) steps. (TRL materialises max_steps batches
    of prompts up front: no larger number than needed.)"""
    batch = load_config(PosttrainConfig, ["--config", config, *cfg.posttrain_args]).optim.batch_size
    return -(-cfg.max_queries // batch) + 1


def run_overrides(cfg: CrosscheckConfig, config: str, backend: str, seed: int) -> list[str]:
    """What each run gets on top of its post-training config (besides its base and run folder)."""
    return ["--backend", backend, "--run.seed", str(seed), "--optim.max_queries", str(cfg.max_queries),
            "--optim.max_steps", str(steps_within(config, cfg)), "--run.progress", "false", "--run.checkpoint_every", "0",
            *cfg.posttrain_args]


def final(rows: list[dict], key: str) -> float | None:
    values = [r[key] for r in eval_rows(rows) if r.get(key) is not None]
    return values[-1] if values else None


def summarise(runs: dict) -> list[dict]:
    """Mean and spread over seeds of the final likelihoods, per (arm, backend)."""
    table = []
    for (arm, backend), by_seed in runs.items():
        row = {"arm": arm, "backend": backend, "seeds": len(by_seed)}
        for key, name in ((OFF, "offsupport"), (ON, "onsupport")):
            values = [v for v in (final(rows, key) for rows in by_seed.values()) if v is not None]
            row[f"{name}_mean"] = statistics.fmean(values) if values else None
            row[f"{name}_spread"] = (max(values) - min(values)) if values else None
            row[f"{name}_per_seed"] = values
        table.append(row)
    return table


def verdict(table: list[dict]) -> list[str]:
    lines = []
    for row in table:
        off = row["offsupport_mean"]
        if off is None:
            lines.append(f"- {row['backend']} {row['arm']}: the base has no off-support eval prompts, so there is "
                         "no barrier to check (NOT as predicted)")
        elif row["arm"] == "outcome":
            ok = off < 1e-3
            lines.append(f"- {row['backend']} outcome: off-support {off:.3g} {'<' if ok else '≥'} 1e-3 "
                         f"({'as the barrier predicts' if ok else 'NOT as predicted'})")
        else:
            ok = off > 0.5
            lines.append(f"- {row['backend']} process: off-support {off:.3g} {'>' if ok else '≤'} 0.5 "
                         f"({'as predicted' if ok else 'NOT as predicted'})")
    for arm in dict.fromkeys(r["arm"] for r in table):  # in table order, not set order
        rows = [r for r in table if r["arm"] == arm]
        if len(rows) == 2 and all(r["onsupport_mean"] is not None for r in rows):
            gap = abs(rows[0]["onsupport_mean"] - rows[1]["onsupport_mean"])
            spread = max(r["onsupport_spread"] for r in rows)
            lines.append(f"- {arm}: final on-support likelihoods differ by {gap:.3g} between backends; the spread "
                         f"across seeds is up to {spread:.3g} ({'within' if gap <= spread else 'outside'} the spread)")
    return lines


def figure(runs: dict, path: Path) -> None:
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for (arm, backend), by_seed in runs.items():
        colour = "C0" if arm == "outcome" else "C3"
        style = "-" if backend == "native" else "--"
        for i, rows in enumerate(by_seed.values()):
            evals = eval_rows(rows)
            for ax, key in zip(axes, (OFF, ON)):
                q = [max(r[QUERIES], 1) for r in evals if r.get(key) is not None]
                v = [max(r[key], 1e-30) for r in evals if r.get(key) is not None]
                ax.plot(q, v, style, color=colour, alpha=0.8, label=f"{arm}, {backend}" if i == 0 else None)
    for ax, title in zip(axes, ("off-support prompts", "on-support prompts")):
        ax.set_xscale("log")
        ax.set_xlabel("reward queries")
        ax.set_ylabel(f"mean likelihood of y* on {title}")
        ax.set_title(f"native (solid) vs TRL (dashed): {title}")
        ax.legend(fontsize=8)
    axes[0].set_yscale("log")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


@cli_entry
def main(argv):
    cfg = load_config(CrosscheckConfig, argv, default_config="configs/crosscheck.yaml", prog="posttrain.crosscheck")
    check_stage_args(PretrainConfig, cfg.pretrain_config, cfg.pretrain_args, user_args=cfg.pretrain_args,
                     config_key="pretrain_config", user_key="pretrain_args")
    user = dict(user_args=cfg.posttrain_args, config_key="posttrain_configs", user_key="posttrain_args")
    for config in cfg.posttrain_configs.values():
        # the overrides alone first (the run's step count is read through them), then every run's whole command line
        check_stage_args(PosttrainConfig, config, cfg.posttrain_args, **user)
        for backend in cfg.backends:
            run_cfg = check_stage_args(PosttrainConfig, config, run_overrides(cfg, config, backend, cfg.seeds[0]), **user)
            if backend == "trl":
                check_trl_config(run_cfg, f"posttrain_configs '{config}' with posttrain_args")
    out = claim_output_dir(cfg.out_dir, "out_dir", "make crosscheck", ("crosscheck.json", "*_native_s*", "*_trl_s*"))
    base = out / "base"
    ensure_base(cfg.pretrain_config, base, *cfg.pretrain_args)
    runs: dict = {}
    for arm, config in cfg.posttrain_configs.items():
        for backend in cfg.backends:
            for seed in cfg.seeds:
                run_dir = out / f"{arm}_{backend}_s{seed}"
                reuse_or_run("posttrain", load_posttrain_config, run_dir, last_row(run_dir, "done/steps") is not None,
                             "--config", config, "--base", str(base), "--run.run_dir", str(run_dir),
                             *run_overrides(cfg, config, backend, seed))
                runs.setdefault((arm, backend), {})[seed] = read_metrics(run_dir / "metrics.jsonl")
                print(f"{arm} {backend} seed {seed}: off-support {fmt_value(final(runs[(arm, backend)][seed], OFF))}",
                      flush=True)
    table = summarise(runs)
    figure(runs, out / "crosscheck.png")
    lines = verdict(table)
    atomic_write_text(out / "crosscheck.json", json.dumps({"max_queries": cfg.max_queries, "table": table}, indent=2))
    head = ("| arm | backend | seeds | off-support (mean, spread) | on-support (mean, spread) | on-support per seed |\n"
            "|---|---|---|---|---|---|")
    body = "\n".join(f"| {r['arm']} | {r['backend']} | {r['seeds']} | {fmt_value(r['offsupport_mean'])} "
                     f"({fmt_value(r['offsupport_spread'], 2)}) | {fmt_value(r['onsupport_mean'])} "
                     f"({fmt_value(r['onsupport_spread'], 2)}) | {', '.join(map(fmt_value, r['onsupport_per_seed']))} |"
                     for r in table)
    atomic_write_text(out / "report.md", "\n".join([
        "# Native engine vs TRL: same base, task and budget", "", "![crosscheck](crosscheck.png)", "",
        f"Budget: {cfg.max_queries} reward queries per run.", "", head, body, "", *lines, "",
        "<details><summary>config</summary>", "", "```yaml", dump_yaml(cfg).rstrip(), "```", "</details>", ""]))
    print(head + "\n" + body + "\n" + "\n".join(lines))


if __name__ == "__main__":
    main()
