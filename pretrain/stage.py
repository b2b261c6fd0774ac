"""The pretraining stage's run (what it does: ``pretrain.__main__``), once ``python -m pretrain`` has loaded its
config."""

from __future__ import annotations

import json
import math

import torch
from tqdm import tqdm

from barrierlab.config import dump_yaml, to_dict
from barrierlab.loading import column_tensor, load_dataset_dir, prompt_tensors, save_dataset, save_model_dir
from barrierlab.models import build_model
from barrierlab.policy import ResponseLogits, target_stats
from barrierlab.rundir import RunDir
from barrierlab.tasks import build_task
from barrierlab.tokenizer import ANSWER0, build_tokenizer
from barrierlab.training import (
    batch_rows,
    fault_point,
    leave_process_group,
    make_accelerator,
    seed_everything,
    stop_if_diverged,
)
from pretrain.config import PretrainConfig
from pretrain.data import build_corpus, build_eval_prompts, build_tracked_prompts, fresh_batch
from pretrain.support import control_check, plot_support, support_summary


def lr_at(step: int, t) -> float:
    if t.schedule == "constant":
        return t.lr
    if step < t.warmup_steps:
        return t.lr * (step + 1) / t.warmup_steps
    progress = (step - t.warmup_steps) / max(1, t.steps - t.warmup_steps)
    return t.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def response_loss(learner, prompts: torch.Tensor, responses: torch.Tensor) -> torch.Tensor:
    """Next-token cross-entropy over the full vocabulary on the response tokens (``responses``: answer symbols) only.
    ``learner`` is the (possibly DDP-wrapped) ``ResponseLogits`` of the model over the whole vocabulary."""
    logits = learner(prompts, responses)
    return torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(),
                                             (responses + ANSWER0).reshape(-1))


def cluster_log10_alpha(model, eval_set, k: int, device) -> tuple[torch.Tensor, torch.Tensor, dict]:
    log_alpha, log_min = target_stats(model, *prompt_tensors(eval_set, device), k)
    clusters = column_tensor(eval_set, "cluster")
    per_cluster = {
        f"eval/log10_alpha_c{c}": (log_alpha[clusters == c].mean() / math.log(10)).item()
        for c in sorted(set(clusters.tolist()))
    }
    return log_alpha.cpu(), log_min.cpu(), per_cluster


def run_pretrain(cfg: PretrainConfig) -> None:
    acc = make_accelerator(cfg.run)
    run = RunDir(cfg, cfg.run, acc)
    final = run.latest_checkpoint()  # finish() writes support.json, then the checkpoint of the last step
    if (run.path / "support.json").exists() and final is not None and final.name == f"step_{cfg.train.steps:07d}":
        acc.print(f"{run.path} already finished ({cfg.train.steps} steps; the base model is {run.path / 'model'}); "
                  "nothing to do")
        run.close()
        leave_process_group(acc)
        return
    seed_everything(cfg.run.seed)
    task = build_task(cfg.task, num_clusters=len(cfg.profile))
    task_info = {"task": to_dict(cfg.task), "profile": [to_dict(c) for c in cfg.profile],
                 "offsupport_threshold": cfg.support.offsupport_threshold, "task_state": task.state_dict()}
    files = {"task.json": json.dumps(task_info, indent=2)}  # beside every checkpoint: later stages rebuild the task
    tokenizer = build_tokenizer(cfg.task.k)
    k, prompt_len = cfg.task.k, task.prompt_len

    data_dir = run.path / "data"
    if acc.is_main_process:  # each dataset that a kill left unwritten (they are seeded: the same on any rerun)
        data_dir.mkdir(exist_ok=True)
        if not task.continuous and not (data_dir / "corpus" / "dataset_info.json").exists():
            save_dataset(build_corpus(task, cfg.profile, cfg.data.corpus_size, cfg.run.seed), data_dir / "corpus")
        if not (data_dir / "eval_prompts" / "dataset_info.json").exists():
            save_dataset(build_eval_prompts(task, cfg.profile, cfg.data.eval_prompts_per_cluster, cfg.run.seed + 1),
                         data_dir / "eval_prompts")
        tracked = build_tracked_prompts(task)
        if tracked is not None and not (data_dir / "tracked_prompts" / "dataset_info.json").exists():
            save_dataset(tracked, data_dir / "tracked_prompts")
    acc.wait_for_everyone()
    corpus = None if task.continuous else column_tensor(load_dataset_dir(data_dir / "corpus", ["input_ids"]), "input_ids")
    eval_set = load_dataset_dir(data_dir / "eval_prompts", ["target_ids", "cluster", "designed_alpha"])

    model = build_model(cfg.model, d=cfg.task.d, k=k, seed=cfg.run.seed, continuous=task.continuous)
    t = cfg.train
    if t.optimizer == "adamw":
        optimizer = torch.optim.AdamW(model.parameters(), lr=t.lr, weight_decay=t.weight_decay)
    else:
        optimizer = torch.optim.Adagrad(model.parameters(), lr=t.lr)
    start = 0
    state = run.resume(model, optimizer)
    if state is not None:
        start = state["step"]
        acc.print(f"resuming {run.path} from step {start}")
    learner, optimizer = acc.prepare(ResponseLogits(model, slice(None)), optimizer)
    model = acc.unwrap_model(learner).model

    world, rank = acc.num_processes, acc.process_index
    bar = tqdm(range(start, t.steps), initial=start, total=t.steps, desc="pretrain",
               disable=not (cfg.run.progress and acc.is_main_process), mininterval=1.0)
    model.train()
    for step in bar:
        if corpus is None:
            fresh = fresh_batch(task, cfg.profile, step, t.batch_size, cfg.run.seed)
            prompts, responses = (part[rank::world].to(acc.device) for part in fresh)
        else:
            batch = corpus[batch_rows(step, t.batch_size, corpus.shape[0], cfg.run.seed)[rank::world]].to(acc.device)
            prompts, responses = batch[:, :prompt_len], batch[:, prompt_len:] - ANSWER0
        lr = lr_at(step, t)
        for group in optimizer.param_groups:
            group["lr"] = lr
        with acc.autocast():
            loss = response_loss(learner, prompts, responses)
        acc.backward(loss)
        grad_norm = acc.clip_grad_norm_(learner.parameters(), t.grad_clip or math.inf)  # logged even unclipped
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        done = step + 1
        if done % t.log_every == 0 or done == t.steps:
            metrics = {"train/loss": acc.reduce(loss.detach(), "mean").item(), "train/lr": lr,
                       "train/grad_norm": float(grad_norm)}
            # on the logged steps only (no extra device sync per step); the final weights are checked below
            stop_if_diverged(done, "train.lr", **{"train/grad_norm": metrics["train/grad_norm"]})
            run.log(done, metrics)
            bar.set_postfix(loss=f"{metrics['train/loss']:.4f}")
        if done % t.eval_every == 0 or done == t.steps:
            model.eval()
            with acc.autocast():
                run.log(done, cluster_log10_alpha(model, eval_set, k, acc.device)[2])
            model.train()
        if cfg.run.checkpoint_every and done % cfg.run.checkpoint_every == 0 and done < t.steps:
            run.save_checkpoint(done, model, tokenizer, {"step": done, "optimizer": optimizer.state_dict()}, files)
        fault_point(done)
    bar.close()
    stop_if_diverged(t.steps, "train.lr", model=model)  # the last update's weights, before they become the base

    if acc.is_main_process:
        finish(cfg, run, files, model.eval(), tokenizer, eval_set, optimizer, acc.device)
    run.close()
    learner = optimizer = None  # the DDP wrapper goes before the process group does (see leave_process_group)
    leave_process_group(acc)


def finish(cfg: PretrainConfig, run: RunDir, files: dict[str, str], model, tokenizer, eval_set, optimizer, device) -> None:
    """Final model, eval prompts with the base likelihoods, support.json and support.png."""
    log_alpha, log_min, _ = cluster_log10_alpha(model, eval_set, cfg.task.k, device)
    eval_set = eval_set.remove_columns([c for c in ("base_alpha", "base_token_min_prob") if c in eval_set.column_names])
    # in float64: a float32 exp flushes α below 1.4e-45 to 0, and a base can put y* far below uniform
    eval_set = eval_set.add_column("base_alpha", log_alpha.double().exp().tolist())
    eval_set = eval_set.add_column("base_token_min_prob", log_min.double().exp().tolist())
    save_dataset(eval_set, run.path / "data" / "eval_prompts")
    tracked_dir = run.path / "data" / "tracked_prompts"
    if tracked_dir.exists():  # the tracked prompts' base α too: Figure 1 splits them on it
        tracked = load_dataset_dir(tracked_dir, ["target_ids"])
        tracked = tracked.remove_columns([c for c in ("base_alpha",) if c in tracked.column_names])
        tracked_alpha = target_stats(model, *prompt_tensors(tracked, device), cfg.task.k)[0].cpu()
        save_dataset(tracked.add_column("base_alpha", tracked_alpha.double().exp().tolist()), tracked_dir)
    save_model_dir(run.path / "model", model, tokenizer, {**files, "pretrain_config.yaml": dump_yaml(cfg)})
    summary = support_summary(eval_set, cfg.profile, cfg.task.k, cfg.task.N, cfg.support.eps_grid,
                              cfg.support.offsupport_threshold)
    # the α control's verdict travels with the base; a continuous task designs no α, so there is nothing to control
    summary["control_misses"] = [] if cfg.task.continuous else control_check(summary)
    (run.path / "support.json").write_text(json.dumps(summary, indent=2))
    plot_support(summary, eval_set, run.path / "support.png")
    # the final model supersedes the resume checkpoints
    run.save_checkpoint(cfg.train.steps, model, tokenizer, {"step": cfg.train.steps, "optimizer": optimizer.state_dict()},
                        files)
    print(f"base model: {run.path / 'model'}")
    for row in summary["clusters"]:
        per_token = row["designed_token_coverage"]
        tokens = "" if per_token is None else f"; per token designed {per_token:.3g}, measured {row['token_geomean']:.3g}"
        print(f"  cluster {row['cluster']} {row['coverage']:>14}: designed α {row['designed_alpha']:.3g}, "
              f"measured geo-mean {row['alpha_geomean']:.3g} (median {row['alpha_median']:.3g}){tokens}")
    misses = summary["control_misses"]
    if cfg.task.continuous:
        print("continuous task: no designed α (the base's coverage comes from how long it trains)")
    else:
        print("α control holds for every designed cluster" if not misses else "α control missed:\n  " + "\n  ".join(misses))
