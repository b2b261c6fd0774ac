"""The evaluation stage's run (what it does: ``eval.__main__``), once ``python -m eval`` has loaded its config."""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from barrierlab.config import dump_yaml
from barrierlab.errors import UserError
from barrierlab.loading import (
    check_base,
    load_dataset_dir,
    load_model_dir,
    model_fingerprint,
    prompt_tensors,
    replace_dir,
)
from barrierlab.metrics import fmt_value, split_masks
from barrierlab.rundir import atomic_write_text, claim_output_dir, lock_run_folder
from eval.config import EvalStageConfig
from eval.evaluate import PromptSet, evaluate_checkpoint
from eval.passk import crossing_k, default_ks, fmt_k, log_grid, mean_exact
from eval.prm_quality import load_prms, measure_prms
from eval.report import build_report, load_experiment

OUTPUTS = ("config.yaml", "eval.json", "per_prompt.csv", "passk.csv", "passk_exact.csv", "report.md")  # and figures/
SPLITS = ("all", "onsupport", "offsupport")


def model_folder(path: str) -> Path:
    """A model folder, given either it or a run folder (its ``model/``, written when the run finishes)."""
    p = Path(path)
    if not p.exists():
        raise UserError(f"checkpoint '{path}' does not exist; pass a model folder or a run folder with model/")
    return p / "model" if (p / "model" / "config.json").exists() or (p / "config.yaml").exists() else p


def trained_from(folder: Path) -> tuple[str, str] | None:
    """``(fingerprint, path)`` of the base a post-trained model folder was trained from, as its ``base.json`` records
    it (posttrain writes one into every model folder and checkpoint); None where no base is recorded: a pretraining
    run's model, or one a TRL script saved."""
    if not (folder / "base.json").is_file():
        return None
    try:
        recorded = json.loads((folder / "base.json").read_text())
        return recorded["fingerprint"], recorded["path"]
    except (ValueError, KeyError, TypeError) as err:  # written atomically with its folder: edited or damaged since
        raise UserError(f"cannot read '{folder / 'base.json'}' ({err}) to tell which base '{folder}' was trained "
                        "from; it is damaged: rerun the stage that wrote it") from None


def load_checkpoints(cfg: EvalStageConfig, base: Path, base_info: dict) -> tuple[dict[str, tuple], dict[str, str]]:
    """name → (model, folder) for everything to evaluate, all loaded up front so a bad path fails at once; and, for
    each checkpoint trained from another base (evaluated only with allow_other_base), name → the base its run names."""
    named = ({"base": str(base / "model")} if cfg.include_base else {}) | cfg.named_checkpoints()
    base_id = model_fingerprint(base / "model")
    models, other_base = {}, {}
    for name, path in named.items():
        folder = model_folder(path)
        model, _, info = load_model_dir(folder)
        if (info["task"], info["task_state"]) != (base_info["task"], base_info["task_state"]):
            raise UserError(f"checkpoint '{name}' ({folder}) was trained on a different task than the base run '{base}'")
        recorded = trained_from(folder)
        if recorded is not None and recorded[0] != base_id:
            if not cfg.allow_other_base:
                raise UserError(f"checkpoint '{name}' ({folder}) was trained from another base than '{base}' (its run's "
                                f"base: '{recorded[1]}'; other weights, so this base's on/off-support split is not its "
                                "own); pass that base with --base, or --allow_other_base true to evaluate it anyway")
            other_base[name] = recorded[1]
            print(f"warning: checkpoint '{name}' was trained from another base ('{recorded[1]}'), not '{base}'; "
                  "evaluated on this base's on/off-support split anyway (allow_other_base)")
        models[name] = (model, folder)
    return models, other_base


def load_prompt_set(base: Path, threshold: float, device) -> tuple[PromptSet, dict]:
    """The base run's eval prompts on ``device``, and their cluster, base α and split columns."""
    eval_set = load_dataset_dir(base / "data" / "eval_prompts", ["target_ids", "cluster", "base_alpha"])
    masks = split_masks(torch.tensor(eval_set["base_alpha"], dtype=torch.float64), threshold)
    prompt_set = PromptSet(*prompt_tensors(eval_set, device), masks)
    split = ["offsupport" if off else "onsupport" for off in masks["offsupport"].tolist()]
    return prompt_set, {"cluster": eval_set["cluster"], "split": split, "base_alpha": eval_set["base_alpha"]}


def exact_outputs(log_p: dict[str, np.ndarray], columns: dict, ks: list[int]) -> tuple[dict, list[list], dict]:
    """Exact pass@k of every checkpoint (name → per-prompt log p(y*|x)) on the grid ``ks``: ``(curves, rows,
    crossings)``, the mean per split (name → split → curve), the rows of passk_exact.csv (per split and per
    cluster), and the k at which the base overtakes each other checkpoint (``{"split": …, "cluster": …}``)."""
    split, cluster = np.array(columns["split"]), np.array(columns["cluster"])
    subsets = {(s, "all"): np.ones(len(split), bool) if s == "all" else split == s for s in SPLITS}
    subsets |= {("all", str(c)): cluster == c for c in sorted(set(cluster.tolist()))}
    curves, rows = {name: {} for name in log_p}, []
    for name, lp in log_p.items():
        for (s, c), mask in subsets.items():
            curve = mean_exact(lp, mask, ks)
            if c == "all":
                curves[name][s] = curve
            rows += [[name, s, c, int(mask.sum()), k, value] for k, value in zip(ks, curve or [], strict=False)]
    crossings = {"split": {}, "cluster": {}}
    if "base" in log_p:
        for (s, c), mask in subsets.items():
            at = {name: crossing_k(log_p["base"], lp, mask, ks) for name, lp in log_p.items() if name != "base"}
            crossings["split" if c == "all" else "cluster"][s if c == "all" else c] = at
    return curves, rows, crossings


def csv_text(header: list[str], rows: list[list]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(header)
    writer.writerows(rows)
    return buffer.getvalue()


def run_eval(cfg: EvalStageConfig) -> None:
    base = Path(cfg.base)
    check_base(base)  # a post-training run given as the base: say so and name its base
    if not (base / "model" / "task.json").is_file():
        raise UserError(f"base: no pretraining run at '{base}' (model/task.json expected); run make pretrain or fix --base")
    base_info = json.loads((base / "model" / "task.json").read_text())
    models, other_base = load_checkpoints(cfg, base, base_info)
    prms = load_prms(cfg.prms, base_info)  # of this base's task, or a one-line error
    for experiment in ("scaling", "alpha"):  # checked before anything is evaluated or written
        path = getattr(cfg, f"{experiment}_results")
        if path is not None:
            load_experiment(path, experiment)

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    threshold = cfg.offsupport_threshold or base_info["offsupport_threshold"]
    cfg.offsupport_threshold = threshold  # the saved config says what was used
    prompt_set, columns = load_prompt_set(base, threshold, device)
    k, N = base_info["task"]["k"], base_info["task"]["N"]
    ks = cfg.pass_k or default_ks(cfg.n_samples)
    out = claim_output_dir(cfg.out_dir, "out_dir", "eval")
    lock_run_folder(out)  # one evaluation at a time writes here

    results = {
        "base": str(base), "k": k, "N": N, "uniform_alpha": float(k) ** -N, "offsupport_threshold": threshold,
        "n_samples": cfg.n_samples, "temperature": cfg.temperature, "seed": cfg.seed, "pass_k": ks,
        "eps": cfg.eps_grid, "prompts": {s: int(m.sum()) for s, m in prompt_set.masks.items()}, "checkpoints": {},
        "other_base": other_base,
    }
    prompt_rows, passk_rows, log_p = [], [], {}
    for name, (model, folder) in models.items():
        start = time.perf_counter()
        # one generator per checkpoint, seeded alike: every model's samples are reproducible on their own
        generator = torch.Generator(device=device).manual_seed(cfg.seed)
        summary, per_prompt = evaluate_checkpoint(
            model.to(device).eval(), prompt_set, k, n=cfg.n_samples, ks=ks, eps_grid=cfg.eps_grid,
            batch_size=cfg.batch_size, temperature=cfg.temperature, generator=generator, progress=cfg.progress)
        results["checkpoints"][name] = {"path": str(folder), "seconds": time.perf_counter() - start, **summary}
        log_p[name] = np.array(per_prompt["log10_likelihood"]) * np.log(10)  # the likelihood underflows, its log does not
        for i, row in enumerate(zip(*columns.values(), *per_prompt.values(), strict=True)):
            prompt_rows.append([name, i, *row, cfg.n_samples])
        for split, curve in summary["pass_at_k"].items():  # an empty split has no curve (null)
            passk_rows += [[name, split, kk, value] for kk, value in zip(ks, curve or [], strict=False)]
        like = summary["likelihood"]
        print(f"{name}: likelihood of y* on-support {fmt_value(like['onsupport'])}, off-support {fmt_value(like['offsupport'])}; "
              f"pass@1 {fmt_value(summary['pass_at_k']['all'][0])}, pass@{ks[-1]} {fmt_value(summary['pass_at_k']['all'][-1])}")

    results["prms"] = measure_prms(prms, base, prompt_set, columns, cfg.prm_samples, cfg.seed, cfg.batch_size)
    for name, p in results["prms"].items():
        q = p["quality"]
        print(f"PRM {name}: prefix AUC on-support {fmt_value(q['onsupport']['auc'])}, off-support "
              f"{fmt_value(q['offsupport']['auc'])}; accuracy {fmt_value(q['onsupport']['accuracy'])}, "
              f"{fmt_value(q['offsupport']['accuracy'])}")
    exact_ks = log_grid(cfg.exact_pass_k_max, cfg.exact_pass_k_per_decade)
    curves, exact_rows, crossings = exact_outputs(log_p, columns, exact_ks)
    for name, by_split in curves.items():
        results["checkpoints"][name]["exact_pass_at_k"] = by_split
    results |= {"exact_pass_k": exact_ks, "crossing_k": crossings}
    for name, at in crossings["split"].get("offsupport", {}).items():
        if at is not None:
            print(f"exact pass@k on off-support prompts: the base overtakes {name} at k = {fmt_k(at)}")

    # written once everything is evaluated, into a staging folder whose files then replace the previous ones: an
    # evaluation that fails or is killed leaves the previous outputs whole, not mixed with some of its own
    staging = out / ".tmp_outputs"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    atomic_write_text(staging / "config.yaml", dump_yaml(cfg))
    atomic_write_text(staging / "eval.json", json.dumps(results, indent=2))
    atomic_write_text(staging / "per_prompt.csv", csv_text(["checkpoint", "prompt", *columns, *per_prompt, "n_samples"],
                                                           prompt_rows))
    atomic_write_text(staging / "passk.csv", csv_text(["checkpoint", "split", "k", "pass_at_k"], passk_rows))
    atomic_write_text(staging / "passk_exact.csv", csv_text(["checkpoint", "split", "cluster", "prompts", "k", "pass_at_k"],
                                                            exact_rows))
    build_report(staging, scaling=cfg.scaling_results, alpha=cfg.alpha_results, shown_as=out)
    replace_dir(staging / "figures", out / "figures")
    for name in OUTPUTS:
        os.replace(staging / name, out / name)
    staging.rmdir()
    print(f"results: {out / 'eval.json'}; report: {out / 'report.md'}")
