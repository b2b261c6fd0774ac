"""The post-training runs behind evaluated checkpoints, as the report reads them: which checkpoint is a run's final
model, the run's metric rows and final numbers, whether its own evaluations were of these prompts and split, and the
sentences and table about them."""

from __future__ import annotations

import math
from pathlib import Path

import torch
import yaml

from barrierlab.loading import load_dataset_dir
from barrierlab.metrics import fmt_value, tracked_indices
from barrierlab.rundir import read_metrics
from eval.analysis import eval_rows, queries_to_reach
from rewards import granularity_of

REACH = 0.5  # "queries to reach": the first evaluation with a mean likelihood of y* at least this


def _arm_runs(results: dict) -> dict[str, Path]:
    """Checkpoints that are the final model of a run folder with metrics and config: name → run folder
    (pretraining runs too; ``training_runs`` leaves those out)."""
    arms = {}
    for name, ckpt in results["checkpoints"].items():
        run = Path(ckpt["path"]).parent
        if Path(ckpt["path"]).name == "model" and (run / "metrics.jsonl").exists() and (run / "config.yaml").exists():
            arms[name] = run
    return arms


class Arm:
    """One post-training run as the report sees it: its config, metric rows and final numbers."""

    def __init__(self, name: str, run: Path):
        self.name, self.run = name, run
        self.config = yaml.safe_load((run / "config.yaml").read_text())
        self.rows = read_metrics(run / "metrics.jsonl")
        evals = eval_rows(self.rows)
        self.first, self.last = (evals[0], evals[-1]) if evals else ({}, {})
        done = [r for r in self.rows if "done/reward_queries" in r]
        self.done = done[-1] if done else {}
        self.queries = self.done.get("done/reward_queries", self.last.get("train/reward_queries"))
        if self.queries is not None:  # a learned reward's labels count as verifier queries too
            self.queries += self.done.get("done/label_queries", self.last.get("train/label_queries", 0))
        self.kind = granularity_of(self.config)

    def label(self) -> str:
        reward = self.config.get("reward", {}).get("name", "?")
        behaviour = self.config.get("algo", {}).get("behaviour", "?")
        return f"{reward} reward, {behaviour} behaviour"

    def sentence(self) -> str:
        on0, on1 = self.first.get("eval/onsupport_likelihood"), self.last.get("eval/onsupport_likelihood")
        off0, off1 = self.first.get("eval/offsupport_likelihood"), self.last.get("eval/offsupport_likelihood")
        stop = self.done.get("done/stop_reason", "unfinished")
        return (f"**{self.name}** ({self.label()}) spent {self.queries or 0:,} reward queries over "
                f"{self.last.get('step', 0)} steps (stop: {stop}); the mean likelihood of y* went from {fmt_value(on0)} "
                f"to {fmt_value(on1)} on on-support prompts and from {fmt_value(off0)} to {fmt_value(off1)} on off-support prompts.")


def barrier_sentences(arms: list[Arm]) -> list[str]:
    """Outcome against process arm on the off-support prompts: the barrier, stated in numbers."""
    outcome = [a for a in arms if a.kind == "outcome"]
    process = [a for a in arms if a.kind == "process"]
    if not outcome or not process:
        return []
    o, p = outcome[0], process[0]
    off_o, off_p = o.last.get("eval/offsupport_likelihood"), p.last.get("eval/offsupport_likelihood")
    if off_o is None or off_p is None:
        return ["The eval prompts hold no off-support prompt, so the barrier cannot be observed on them."]
    lines = [f"Outcome PG ({o.name}) left the mean off-support likelihood at {fmt_value(off_o)} after {o.queries or 0:,} "
             f"reward queries, while process PG ({p.name}) raised it to {fmt_value(off_p)} after {p.queries or 0:,}."]
    reach = []
    for arm in (o, p):
        queries, censored = queries_to_reach(arm.rows, "eval/offsupport_likelihood", REACH)
        reach.append(f"{arm.name}: not reached within its {queries:,}" if censored else f"{arm.name}: {queries:,}")
    lines.append(f"Reward queries to reach a mean off-support likelihood of {REACH}: " + "; ".join(reach) + ".")
    return lines


def _measured_elsewhere(arm: Arm, base_alpha: list[float], split: list[str]) -> bool:
    """Whether a run's own metrics (its curves, its table row) were measured on other prompts or split on/off-support
    elsewhere than this evaluation: its step-0 evaluation, of the base model, must give this evaluation's prompts'
    mean base α overall and on each split. (Paths cannot tell: a run's config names its base relative to wherever
    it was started.)"""
    if arm.first.get("step") != 0:
        return True
    for key, part in (("eval/likelihood", None), ("eval/onsupport_likelihood", "onsupport"),
                      ("eval/offsupport_likelihood", "offsupport")):
        alphas = [a for a, s in zip(base_alpha, split, strict=True) if part in (None, s)]
        mine, theirs = (sum(alphas) / len(alphas) if alphas else None), arm.first.get(key)
        if (mine is None) != (theirs is None) or (mine is not None and not math.isclose(mine, theirs, rel_tol=1e-3)):
            return True
    return False


def tracked_alpha(arm: Arm, base_alpha: list[float]) -> list[float] | None:
    """Base α of the prompts the run tracked (the same pick as posttrain's, on this eval's base: its tracked prompts
    where it has them, else the eval prompts spread over the base α)."""
    tracked = arm.last.get("eval/tracked_likelihood")
    if not tracked:
        return None
    tracked_set = Path(str(arm.config.get("base", ""))) / "data" / "tracked_prompts"
    if (tracked_set / "dataset_info.json").is_file():
        return load_dataset_dir(tracked_set, ["base_alpha"])["base_alpha"]
    alpha = torch.tensor(base_alpha, dtype=torch.float64)
    return alpha[tracked_indices(alpha, len(tracked))].tolist()


def arm_table(arms: list[Arm]) -> list[str]:
    lines = ["| arm | reward / behaviour | reward queries | steps | stop | on-support likelihood | "
             "off-support likelihood | expected error | wall time (s) |", "|---|---|---|---|---|---|---|---|---|"]
    for a in arms:
        lines.append(f"| {a.name} | {a.label()} | {a.queries or 0:,} | {a.last.get('step', 0)} | "
                     f"{a.done.get('done/stop_reason', 'unfinished')} | {fmt_value(a.last.get('eval/onsupport_likelihood'))} | "
                     f"{fmt_value(a.last.get('eval/offsupport_likelihood'))} | {fmt_value(a.last.get('eval/expected_error'))} | "
                     f"{fmt_value(a.done.get('done/wall_time_s'))} |")
    return lines


def training_runs(results: dict, prompts: dict) -> tuple[list[Arm], dict[str, str]]:
    """The post-training runs whose curves the report draws, and checkpoint → why the others have none (named in the
    figure and the report). ``prompts``: this evaluation's base α and split, per prompt."""
    runs = {n: run for n, run in _arm_runs(results).items() if n != "base"}  # the base is every run's step 0
    left_out = {n: "no metrics.jsonl beside it, e.g. a TRL script's model folder or a mid-run checkpoint"
                for n in results["checkpoints"] if n != "base" and n not in runs}
    arms = []
    for arm in (Arm(name, run) for name, run in runs.items()):
        if not arm.last:  # a pretraining run: no reward-query evaluations to draw
            left_out[arm.name] = "a pretraining run: no reward-query evaluations"
        elif _measured_elsewhere(arm, prompts["base_alpha"], prompts["split"]):
            left_out[arm.name] = "its run's step-0 evaluation is of other prompts or another split"
        else:
            arms.append(arm)
    return arms, left_out
