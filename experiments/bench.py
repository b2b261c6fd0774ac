"""``make bench``: the native engine against TRL's GRPOTrainer on the same model, task, N and batch.

    python -m experiments.bench --config configs/bench.yaml      # or configs/gpu/bench.yaml

Every measurement is a real ``posttrain`` run of ``posttrain_config`` (by default outcome PG) with what
``posttrain_overrides`` sets on top: on-policy, ±1 rewards and no baseline, G responses per prompt, one update per
generation, a few steps. With ±1 rewards every response carries a
learning signal, so both backends do the whole update. Beside it, ``no_signal`` measures the native steps that 0/1
rewards make of an untrained base's batches: no response is correct, every advantage is 0, and the native loop only
samples (it zeroes the gradients and takes the optimiser's step without the loss's forward and backward). A step's time (the per-step
``train/update_time_s``) runs from one update to the next: the step's prompts (the native loop draws them, TRL's
dataloader fetches and tokenises them), sampling, rewards and the update, not evaluation or checkpoints. The first
``warmup_steps`` are left out (first calls build kernel caches and grow the allocator; a TRL run's first also sets
up the Trainer), and every update's time is kept in ``bench.json``. Both backends run in the same invocation, one
after the other, so their ratio is measured side by side; unlike the other drivers the bench runs no two runs at once
(no Ray): each is timed alone. Writes ``bench.json`` and prints a table: completions/s, reward queries/s, seconds per
update, peak memory, native/TRL and no-signal/full-step ratios.
"""

from __future__ import annotations

import json
import os
import statistics
from dataclasses import dataclass, field
from pathlib import Path

from barrierlab.config import load_config, require, require_distinct
from barrierlab.errors import cli_entry, loading_libraries

# torch, transformers and the stages are imported where they are used, once the config is parsed and checked: --help
# and a config error answer at once


@dataclass
class BenchConfig:
    out_dir: str = "runs/bench"
    """Folder of the benchmark runs and bench.json."""
    pretrain_config: str = "configs/bench/pretrain.yaml"
    """The base: the default transformer at N = 16 (briefly pretrained: throughput does not depend on it)."""
    posttrain_config: str = "configs/posttrain_outcome.yaml"
    """Post-training config every measured run starts from; the bench sets the backend, batch, group size, ±1
    rewards with no baseline, the step count and quiet logging on top (posttrain_overrides in experiments/bench.py)."""
    backends: list[str] = field(default_factory=lambda: ["native", "trl"])
    """Backends to measure: native, trl."""
    batch_sizes: list[int] = field(default_factory=lambda: [64, 256])
    """Completions per update."""
    trl_max_batch: int = 4096
    """Largest batch given to TRL (its generation pads and copies per sample: larger ones take minutes)."""
    group_size: int = 8
    """Completions per prompt (TRL's num_generations, ≥ 2 with trl; 1 is the authors' loop, one response a prompt)."""
    rewards: list[str] = field(default_factory=lambda: ["outcome"])
    """Built-in rewards to measure, each as ±1 rewards without baseline (outcome: one verdict a response; process: one
    per prefix)."""
    no_signal: bool = True
    """Also measure native steps without signal at each batch: 0/1 rewards without baseline on the bench base, which
    never samples y* (α ≈ k^-N = 8^-16 ≈ 4e-15), so every step only samples (checked from its metrics)."""
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
        require(self.group_size >= (2 if "trl" in self.backends else 1), "group_size",
                "must be ≥ 2 (TRL's minimum)" if "trl" in self.backends else "must be ≥ 1")
        require(len(self.rewards) >= 1 and all(r in ("outcome", "process") for r in self.rewards), "rewards",
                "list at least one of: outcome, process")
        require_distinct(self.rewards, "rewards")
        require_distinct(self.backends, "backends")
        require(len(self.batch_sizes) >= 1, "batch_sizes", "must list at least one batch size")
        require_distinct(self.batch_sizes, "batch_sizes")
        require(all(b >= self.group_size and b % self.group_size == 0 for b in self.batch_sizes), "batch_sizes",
                f"each must be a multiple of group_size = {self.group_size}")
        require(self.warmup_steps >= 1, "warmup_steps", "must be ≥ 1 (a TRL run's first update also times the Trainer's setup)")
        require(self.steps > self.warmup_steps, "steps", f"must exceed warmup_steps = {self.warmup_steps} (one timed update at least)")


def posttrain_overrides(cfg: BenchConfig, backend: str, batch: int, signal: bool = True,
                        reward: str = "outcome") -> list[str]:
    """What every measured posttrain run gets on top of ``posttrain_config`` (besides its base and run folder):
    ±1 rewards (``signal``) or 0/1 rewards, without baseline, each step's responses sampled in that step (a run that
    samples ahead while no step has had signal pays for many steps' sampling in one: the bench times single steps)."""
    return ["--backend", backend, "--reward.name", reward, "--optim.batch_size", str(batch),
            "--algo.group_size", str(cfg.group_size),
            "--reward.signed", str(signal).lower(), "--algo.baseline", "none", "--algo.sample_ahead", str(batch), "--optim.max_steps", str(cfg.steps),
            "--optim.max_queries", "null", "--eval.eval_every", "1000000", "--eval.num_tracked", "0",
            "--run.checkpoint_every", "0", "--run.progress", "false", "--run.report_to", "[]", *cfg.posttrain_args]


def runs(cfg: BenchConfig) -> list[tuple[str, int, bool, str]]:
    """(backend, batch, signal, reward) of every measurement, in order: the no-signal native run right after the full
    one."""
    return [(backend, batch, signal, reward) for reward in cfg.rewards for batch in cfg.batch_sizes
            for backend in cfg.backends
            for signal in ((True, False) if backend == "native" and cfg.no_signal else (True,))
            if backend == "native" or batch <= cfg.trl_max_batch]


def measure(cfg: BenchConfig, base: Path, backend: str, batch: int, signal: bool, reward: str) -> dict:
    from barrierlab.rundir import read_metrics, remove_run_folder
    from experiments.stages import run_stage

    name = f"{backend}{'' if signal else '_nosignal'}_b{batch}" + (f"_{reward}" if len(cfg.rewards) > 1 else "")
    run_dir = Path(cfg.out_dir) / name
    remove_run_folder(run_dir)  # every number from this invocation (an old run may be another device's)
    run_stage("posttrain", "--config", cfg.posttrain_config, "--base", str(base), "--run.run_dir", str(run_dir),
              *posttrain_overrides(cfg, backend, batch, signal, reward))
    rows = read_metrics(run_dir / "metrics.jsonl")
    every = [r for r in rows if "train/update_time_s" in r]
    steps = every[cfg.warmup_steps:]
    seconds = statistics.median(r["train/update_time_s"] for r in steps)
    queries = [b["train/reward_queries"] - a["train/reward_queries"] for a, b in zip(steps, steps[1:])] or [batch]
    done = rows[-1]
    # a step without signal logs a zero gradient and no entropy (no forward computed one)
    silent = sum(r["train/grad_norm"] == 0 and r.get("train/entropy", 0) is None for r in every)
    return {"backend": backend, "batch": batch, "signal": signal, "reward": reward, "steps_without_signal": silent, "seconds_per_update": seconds,
            "completions_per_s": batch / seconds, "queries_per_s": statistics.median(queries) / seconds,
            "peak_memory_mb": done["done/peak_memory_mb"],
            "update_times_s": [round(r["train/update_time_s"], 5) for r in every]}  # warm-up included, to show it


def device_name() -> str:
    import torch

    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"CPU ({torch.get_num_threads()} threads)"


def table(results: list[dict]) -> str:
    lines = ["| backend | reward | batch | completions/s | reward queries/s | s/update | peak MB | native/TRL | "
             "no signal/full |", "|---|---|---|---|---|---|---|---|---|"]
    key = lambda r: (r["batch"], r["reward"])  # noqa: E731
    trl = {key(r): r["completions_per_s"] for r in results if r["backend"] == "trl"}
    full = {key(r): r["completions_per_s"] for r in results if r["backend"] == "native" and r["signal"]}
    for r in results:
        native = r["backend"] == "native" and r["signal"]
        ratio = f"{r['completions_per_s'] / trl[key(r)]:.1f}×" if native and key(r) in trl else ""
        quiet = f"{r['completions_per_s'] / full[key(r)]:.1f}×" if not r["signal"] and key(r) in full else ""
        name = r["backend"] + ("" if r["signal"] else ", no signal")
        lines.append(f"| {name} | {r['reward']} | {r['batch']} | {r['completions_per_s']:,.0f} | {r['queries_per_s']:,.0f} | "
                     f"{r['seconds_per_update']:.3f} | {r['peak_memory_mb']:,.0f} | {ratio} | {quiet} |")
    return "\n".join(lines)


def signal_warnings(results: list[dict]) -> list[str]:
    """A warning for each no-signal run that had steps with signal (its base sampled y*): its time mixes in full steps."""
    return [f"warning: the no-signal run at batch {r['batch']} had {len(r['update_times_s']) - r['steps_without_signal']} "
            f"of {len(r['update_times_s'])} steps with signal (the base sampled y*), so its time mixes in full steps"
            for r in results if not r["signal"] and r["steps_without_signal"] < len(r["update_times_s"])]


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
    cfg = load_config(BenchConfig, argv, default_config="configs/bench.yaml", prog="experiments.bench")
    from experiments.stages import check_stage_args, check_trl_run, ensure_base
    from posttrain.config import PosttrainConfig
    from pretrain.config import PretrainConfig

    check_stage_args(PretrainConfig, cfg.pretrain_config, cfg.pretrain_args, user_args=cfg.pretrain_args,
                     config_key="pretrain_config", user_key="pretrain_args")
    run_cfgs = [check_stage_args(PosttrainConfig, cfg.posttrain_config,
                                 posttrain_overrides(cfg, backend, batch, signal, reward),
                                 user_args=cfg.posttrain_args, config_key="posttrain_config", user_key="posttrain_args")
                for backend, batch, signal, reward in runs(cfg)]
    for (backend, _, _, _), run_cfg in zip(runs(cfg), run_cfgs):
        if backend == "trl":
            check_trl_run(run_cfg, "posttrain_args")
    with loading_libraries():  # torch: seconds, once the configs pass
        from barrierlab.rundir import atomic_write_text, claim_output_dir
    out = claim_output_dir(cfg.out_dir, "out_dir", "make bench")
    base = out / "base"
    ensure_base(cfg.pretrain_config, base, *cfg.pretrain_args)
    # the load after each measurement tells whether other processes ran beside it
    results = [{**measure(cfg, base, *run), "load_average": round(os.getloadavg()[0], 2)} for run in runs(cfg)]
    cpus = len(os.sched_getaffinity(0))  # the CPUs this process may use (a container's, not the host's)
    text = table(results)
    atomic_write_text(out / "bench.json", json.dumps({"device": device_name(), "cpus": cpus, "results": results}, indent=2))
    print(f"device: {device_name()}\n{text}\nwritten: {out / 'bench.json'}")
    for warning in [*signal_warnings(results), busy_warning(results, cpus)]:
        if warning:
            print(warning)


if __name__ == "__main__":
    main()
