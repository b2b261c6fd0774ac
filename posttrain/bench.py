"""``make bench``: the native engine against TRL's GRPOTrainer on the same model, task, N and batch.

    python -m posttrain.bench --config configs/bench.yaml      # or configs/gpu/bench.yaml

Every measurement is a real ``posttrain`` run of ``posttrain_config`` (by default outcome PG) with what
``posttrain_overrides`` sets on top: on-policy, ±1 rewards and no baseline, G responses per prompt, one update per
generation, a few steps. With ±1 rewards every response carries a
learning signal, so both backends do the whole update (the native engine skips responses whose advantages are
all zero, which an untrained base's 0/1 rewards would make of every response). A step's time (the per-step
``train/update_time_s``) runs from one update to the next: the step's prompts (the native loop draws them, TRL's
dataloader fetches and tokenises them), sampling, rewards and the update, not evaluation or checkpoints. The first
``warmup_steps`` are left out (first calls build kernel caches and grow the allocator; a TRL run's first also sets
up the Trainer), and every update's time is kept in ``bench.json``. Both backends run in the same invocation, one
after the other, so their ratio is measured side by side. Writes ``bench.json`` and prints a table:
completions/s, reward queries/s, seconds per update, peak memory, native/TRL ratio.
"""

from __future__ import annotations

import json
import os
import statistics
from dataclasses import dataclass, field
from pathlib import Path

import torch

from barrierlab.config import load_config, require, require_distinct
from barrierlab.errors import cli_entry
from barrierlab.run import atomic_write_text, claim_output_dir, read_metrics, remove_run_folder
from barrierlab.stages import check_stage_args, check_trl_config, ensure_base, run_stage
from posttrain.config import PosttrainConfig
from pretrain.config import PretrainConfig


@dataclass
class BenchConfig:
    out_dir: str = "runs/bench"
    """Folder of the benchmark runs and bench.json."""
    pretrain_config: str = "configs/bench/pretrain.yaml"
    """The base: the default transformer at N = 16 (briefly pretrained: throughput does not depend on it)."""
    posttrain_config: str = "configs/posttrain_outcome.yaml"
    """Post-training config every measured run starts from; the bench sets the backend, batch, group size, ±1
    rewards with no baseline, the step count and quiet logging on top (posttrain_overrides in posttrain/bench.py)."""
    backends: list[str] = field(default_factory=lambda: ["native", "trl"])
    """Backends to measure: native, trl."""
    batch_sizes: list[int] = field(default_factory=lambda: [64, 256])
    """Completions per update."""
    trl_max_batch: int = 4096
    """Largest batch given to TRL (its generation pads and copies per sample: larger ones take minutes)."""
    group_size: int = 8
    """Completions per prompt (TRL's num_generations, ≥ 2)."""
    steps: int = 6
    """Updates per run, warm-up included."""
    warmup_steps: int = 1
    """Updates at the start of each run left out of the timing."""
    pretrain_args: list[str] = field(default_factory=list)
    """Overrides of the base's pretraining config, e.g. ['--model.width', '128']."""
    posttrain_args: list[str] = field(default_factory=list)
    """Overrides passed to every posttrain run (both backends), e.g. ['--run.mixed_precision', 'bf16']."""

    def check(self):
        require(len(self.backends) >= 1 and all(b in ("native", "trl") for b in self.backends), "backends",
                "list at least one of: native, trl")
        require(self.group_size >= 2, "group_size", "must be ≥ 2 (TRL's minimum)")
        require_distinct(self.backends, "backends")
        require(len(self.batch_sizes) >= 1, "batch_sizes", "must list at least one batch size")
        require_distinct(self.batch_sizes, "batch_sizes")
        require(all(b >= self.group_size and b % self.group_size == 0 for b in self.batch_sizes), "batch_sizes",
                f"each must be a multiple of group_size = {self.group_size}")
        require(self.warmup_steps >= 1, "warmup_steps", "must be ≥ 1 (a TRL run's first update also times the Trainer's setup)")
        require(self.steps > self.warmup_steps, "steps", f"must exceed warmup_steps = {self.warmup_steps} (one timed update at least)")


def posttrain_overrides(cfg: BenchConfig, backend: str, batch: int) -> list[str]:
    """What every measured posttrain run gets on top of ``posttrain_config`` (besides its base and run folder)."""
    return ["--backend", backend, "--optim.batch_size", str(batch), "--algo.group_size", str(cfg.group_size),
            "--reward.signed", "true", "--algo.baseline", "none", "--optim.max_steps", str(cfg.steps),
            "--optim.max_queries", "null", "--eval.eval_every", "1000000", "--eval.num_tracked", "0",
            "--run.checkpoint_every", "0", "--run.progress", "false", "--run.report_to", "[]", *cfg.posttrain_args]


def runs(cfg: BenchConfig) -> list[tuple[str, int]]:
    """(backend, batch) of every measurement, in order."""
    return [(backend, batch) for batch in cfg.batch_sizes for backend in cfg.backends
            if backend == "native" or batch <= cfg.trl_max_batch]


def measure(cfg: BenchConfig, base: Path, backend: str, batch: int) -> dict:
    run_dir = Path(cfg.out_dir) / f"{backend}_b{batch}"
    remove_run_folder(run_dir)  # every number from this invocation (an old run may be another device's)
    run_stage("posttrain", "--config", cfg.posttrain_config, "--base", str(base), "--run.run_dir", str(run_dir),
              *posttrain_overrides(cfg, backend, batch))
    rows = read_metrics(run_dir / "metrics.jsonl")
    every = [r for r in rows if "train/update_time_s" in r]
    steps = every[cfg.warmup_steps:]
    seconds = statistics.median(r["train/update_time_s"] for r in steps)
    queries = [b["train/reward_queries"] - a["train/reward_queries"] for a, b in zip(steps, steps[1:])] or [batch]
    done = rows[-1]
    return {"backend": backend, "batch": batch, "seconds_per_update": seconds,
            "completions_per_s": batch / seconds, "queries_per_s": statistics.median(queries) / seconds,
            "peak_memory_mb": done["done/peak_memory_mb"],
            "update_times_s": [round(r["train/update_time_s"], 5) for r in every]}  # warm-up included, to show it


def device_name() -> str:
    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"CPU ({torch.get_num_threads()} threads)"


def table(results: list[dict]) -> str:
    lines = ["| backend | batch | completions/s | reward queries/s | s/update | peak MB | native/TRL |",
             "|---|---|---|---|---|---|---|"]
    trl = {r["batch"]: r["completions_per_s"] for r in results if r["backend"] == "trl"}
    for r in results:
        ratio = f"{r['completions_per_s'] / trl[r['batch']]:.1f}×" if r["backend"] == "native" and r["batch"] in trl else ""
        lines.append(f"| {r['backend']} | {r['batch']} | {r['completions_per_s']:,.0f} | {r['queries_per_s']:,.0f} | "
                     f"{r['seconds_per_update']:.3f} | {r['peak_memory_mb']:,.0f} | {ratio} |")
    return "\n".join(lines)


def busy_warning(results: list[dict], cpus: int) -> str | None:
    """A warning when other processes ran beside the measurements. A measured run keeps every core busy by itself
    (a load average up to ``cpus``); more means someone else's work, which slows TRL's many small operations far
    more than the native engine's (10-50× against none, seen here), so the ratio would overstate the native lead."""
    busiest = max(r["load_average"] for r in results)
    if busiest <= cpus + 0.5:
        return None
    return (f"warning: the machine was busy (1-minute load average up to {busiest:.1f} on {cpus} CPUs, more than the "
            "bench's own runs): other processes slow TRL far more than the native engine, so the ratio overstates the "
            "native engine's lead; rerun on an idle machine")


@cli_entry
def main(argv):
    cfg = load_config(BenchConfig, argv, default_config="configs/bench.yaml", prog="posttrain.bench")
    check_stage_args(PretrainConfig, cfg.pretrain_config, cfg.pretrain_args, user_args=cfg.pretrain_args,
                     config_key="pretrain_config", user_key="pretrain_args")
    for backend, batch in runs(cfg):
        run_cfg = check_stage_args(PosttrainConfig, cfg.posttrain_config, posttrain_overrides(cfg, backend, batch),
                                   user_args=cfg.posttrain_args, config_key="posttrain_config", user_key="posttrain_args")
        if backend == "trl":
            check_trl_config(run_cfg, "posttrain_args")
    out = claim_output_dir(cfg.out_dir, "out_dir", "make bench", ("bench.json", "native_b*", "trl_b*"))
    base = out / "base"
    ensure_base(cfg.pretrain_config, base, *cfg.pretrain_args)
    # the load after each measurement tells whether other processes ran beside it
    results = [{**measure(cfg, base, backend, batch), "load_average": round(os.getloadavg()[0], 2)}
               for backend, batch in runs(cfg)]
    cpus = len(os.sched_getaffinity(0))  # the CPUs this process may use (a container's, not the host's)
    text = table(results)
    atomic_write_text(out / "bench.json", json.dumps({"device": device_name(), "cpus": cpus, "results": results}, indent=2))
    print(f"device: {device_name()}\n{text}\nwritten: {out / 'bench.json'}")
    warning = busy_warning(results, cpus)
    if warning:
        print(warning)


if __name__ == "__main__":
    main()
