"""The train_prm stage once its config is checked: label, train, measure and save the PRM (``rewards.train_prm``)."""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path

import torch
from tqdm import tqdm

from barrierlab.errors import UserError
from barrierlab.loading import (
    first_line,
    load_base,
    load_dataset_dir,
    model_fingerprint,
    prompt_tensors,
    save_model_dir,
)
from barrierlab.metrics import split_masks
from barrierlab.models import LinearPolicyLM
from barrierlab.prm import (
    PRM,
    PRM_FILE,
    build_classifier,
    classifier_logits,
    implicit_token_rewards,
    quality_by_group,
    quality_responses,
)
from barrierlab.rundir import RunDir, atomic_write_text
from barrierlab.tasks import task_from_info
from barrierlab.training import batch_rows, fault_point, seed_everything, stop_if_diverged
from rewards.base import correct_prefixes
from rewards.train_prm.config import TrainPRMConfig
from rewards.train_prm.labels import Labels, make_labels, most_per_response


def check_inputs(cfg: TrainPRMConfig, model, task) -> None:
    """What the stage cannot run, in one line, before anything is written."""
    if isinstance(model, LinearPolicyLM):
        raise UserError(f"base '{cfg.base}' is the log-linear policy; a PRM is a Llama model trained from a transformer "
                        "base (model.kind transformer)")
    bad = [c for c in cfg.labels.clusters or [] if not 0 <= c < task.num_clusters]
    if bad:
        raise UserError(f"labels.clusters: {bad} not among the base's clusters 0 … {task.num_clusters - 1}")
    most = most_per_response(cfg.labels, task.N)
    if cfg.labels.query_budget is not None and cfg.labels.query_budget < most:
        raise UserError(f"labels.query_budget {cfg.labels.query_budget} cannot pay for one response's labels ({most} "
                        f"queries under source '{cfg.labels.source}' at N = {task.N}); raise it")


def prm_loss(prm: PRM, labels: Labels, rows: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy of the prefix log-odds against the prefix labels (classifier), or of the implicit sequence
    reward against the outcome label (implicit)."""
    prompts, responses, target = labels.prompts[rows], labels.responses[rows], labels.labels[rows]
    if prm.kind == "classifier":
        logits = classifier_logits(prm.model, prompts, responses)
    else:
        logits = implicit_token_rewards(prm.model, prm.reference, prompts, responses, prm.k, prm.info["beta"])
        logits = logits.sum(-1, keepdim=True)
    return torch.nn.functional.binary_cross_entropy_with_logits(logits, target)


class Quality:
    """The PRM's prefix verdicts on the base's eval prompts (base draws and y* itself) against the truth, per split."""

    def __init__(self, base_model, eval_set, threshold: float, samples: int, k: int, seed: int):
        prompts, targets = prompt_tensors(eval_set)
        rows, self.responses = quality_responses(base_model, prompts, targets, samples, k,
                                                 torch.Generator().manual_seed(seed * 7919 + 17))
        self.prompts, self.truth = prompts[rows], correct_prefixes(self.responses, targets[rows])
        masks = split_masks(torch.tensor(eval_set["base_alpha"], dtype=torch.float64), threshold)
        self.groups = {split: mask[rows] for split, mask in masks.items()}

    @torch.no_grad()
    def __call__(self, prm: PRM) -> dict:
        probs = torch.cat([prm.prefix_probs(self.prompts[i : i + 4096], self.responses[i : i + 4096])
                           for i in range(0, self.prompts.shape[0], 4096)])
        out = {}
        for split, q in quality_by_group(probs, self.truth, self.groups).items():
            out[f"eval/prm_auc_{split}"], out[f"eval/prm_accuracy_{split}"] = q["auc"], q["accuracy"]
        return out


def run_train_prm(cfg: TrainPRMConfig) -> None:
    """Label, train and measure the PRM of ``cfg`` (loaded and checked by ``rewards.train_prm.__main__``)."""
    base = Path(cfg.base)
    base_model, tokenizer, task_info = load_base(base)
    eval_set = load_dataset_dir(base / "data" / "eval_prompts", ["prompt_ids", "target_ids", "cluster", "base_alpha"])
    task = task_from_info(task_info)
    check_inputs(cfg, base_model, task)
    run = RunDir(cfg, cfg.run)  # validation is done: only now write anything
    if (run.path / PRM_FILE).exists():
        print(f"{run.path} already finished (the PRM is {run.path / PRM_FILE}); nothing to do")
        return
    seed_everything(cfg.run.seed)
    tick = time.time()
    base_model.eval()
    kind = "implicit" if cfg.labels.source == "implicit" else "classifier"
    info = {"kind": kind, "beta": cfg.model.beta if kind == "implicit" else None, "label_source": cfg.labels.source,
            "task": task_info, "base": str(base), "base_fingerprint": model_fingerprint(base / "model")}
    if kind == "classifier":
        prm = PRM(run.path, info, build_classifier(base_model, cfg.model.init == "base"))
    else:  # π_φ starts as the base policy; π_ref is the base, frozen
        prm = PRM(run.path, info, load_base(base)[0], base_model)
    optimizer = torch.optim.AdamW(prm.model.parameters(), lr=cfg.train.lr, weight_decay=0.0)
    state = run.resume(prm.model, optimizer)
    start = 0 if state is None else state["step"]

    labels_file = run.path / "data" / "labels.pt"
    if labels_file.exists():  # written atomically once: a resumed run does not pay for its labels twice
        try:
            labels = Labels(**torch.load(labels_file, weights_only=True))
        except Exception as err:  # truncated or edited since
            raise UserError(f"'{labels_file}' cannot be loaded ({first_line(err)}); it is damaged: delete it to label "
                            "again (at the same verifier-query cost), or rerun in a new run folder") from None
    else:
        labels = make_labels(cfg.labels, base_model, task, torch.Generator().manual_seed(cfg.run.seed * 104729 + 3))
        labels_file.parent.mkdir(exist_ok=True)
        tmp = labels_file.with_name(".tmp_labels.pt")
        torch.save(labels.state_dict(), tmp)
        os.replace(tmp, labels_file)
    info |= {"label_queries": labels.queries, "labelled_responses": labels.responses.shape[0],
             "clusters": cfg.labels.clusters}
    if state is None:
        run.log(0, {"label/queries": labels.queries, "label/responses": labels.responses.shape[0],
                    "label/positive_share": labels.labels.mean().item()})
    print(f"labels: {labels.responses.shape[0]} responses ({cfg.labels.source}), {labels.queries} verifier queries")

    quality = Quality(base_model, eval_set, task_info["offsupport_threshold"], cfg.train.quality_samples, task.k,
                      cfg.run.seed)
    files = {"task.json": (base / "model" / "task.json").read_text()}
    t, last = cfg.train, {}
    bar = tqdm(range(start, t.steps), initial=start, total=t.steps, desc=f"train_prm[{cfg.labels.source}]",
               disable=not cfg.run.progress, mininterval=1.0)
    for step in bar:
        prm.model.train()
        loss = prm_loss(prm, labels, batch_rows(step, t.batch_size, labels.responses.shape[0], cfg.run.seed))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        prm.model.eval()
        done = step + 1
        if done % t.log_every == 0 or done == t.steps:
            stop_if_diverged(done, "train.lr", **{"train/loss": loss.item()})
            run.log(done, {"train/loss": loss.item()})
            bar.set_postfix(loss=f"{loss.item():.4f}")
        if done % t.eval_every == 0 or done == t.steps:
            last = quality(prm)
            run.log(done, last)
        if cfg.run.checkpoint_every and done % cfg.run.checkpoint_every == 0 and done < t.steps:
            run.save_checkpoint(done, prm.model, tokenizer, {"step": done, "optimizer": optimizer.state_dict()}, files)
        fault_point(done)
    bar.close()
    if not last:  # resumed after the last step: measure the final model once more
        last = quality(prm)
    save_model_dir(run.path / "model", prm.model, tokenizer, files)
    if kind == "implicit":
        save_model_dir(run.path / "reference", prm.reference, tokenizer, files)
    info["quality"] = {key: None if v is None or not math.isfinite(v) else v for key, v in last.items()}
    run.log(t.steps, {"done/steps": t.steps, "done/label_queries": labels.queries,
                      "done/wall_time_s": round(time.time() - tick, 2)})
    atomic_write_text(run.path / PRM_FILE, json.dumps(info, indent=2))  # last: marks the PRM finished
    run.close()
    aucs = ", ".join(f"{s} {last.get(f'eval/prm_auc_{s}')}" for s in ("onsupport", "offsupport"))
    print(f"PRM ({kind}, {cfg.labels.source} labels, {labels.queries} verifier queries): {run.path}; prefix AUC {aucs}")
