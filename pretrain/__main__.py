"""Stage 1: pretrain a base model whose likelihood of each prompt's correct response is designed.

    python -m pretrain --config configs/pretrain.yaml [--model.kind linear] [--train.steps 500] ...

Builds the corpus and eval prompts from the task and support profile, trains with next-token
cross-entropy on the response tokens, then measures the base likelihood α(x) of every eval prompt
exactly (one teacher-forced pass) and writes support.json / support.png beside the final model. A continuous task
(gaussian_mixture, rademacher) has no corpus: every step trains on fresh draws of (x, y*), as the authors' supervised
stage does, and its tracked prompts (the mixture centres) are saved beside the eval prompts.
"""

from __future__ import annotations

import functools
import json
import math

import torch
from tqdm import tqdm

from barrierlab.config import dump_yaml, to_dict
from barrierlab.errors import cli_entry
from barrierlab.loading import column_tensor, load_dataset_dir, prompt_tensors, save_dataset, save_model_dir
from barrierlab.models import build_model
from barrierlab.policy import ResponseLogits, target_stats
from barrierlab.rundir import RunDir
from barrierlab.tasks import TASKS, build_task
from barrierlab.tokenizer import ANSWER0, build_tokenizer
from barrierlab.training import fault_point, leave_process_group, make_accelerator, seed_everything, stop_if_diverged
from pretrain.config import PretrainConfig, load_pretrain_config
from pretrain.data import build_corpus, build_eval_prompts, build_tracked_prompts, fresh_batch
from pretrain.support import control_check, plot_support, support_summary


def lr_at(step: int, t) -> float:
    if t.schedule == "constant":
        return t.lr
    if step < t.warmup_steps:
        return t.lr * (step + 1) / t.warmup_steps
    progress = (step - t.warmup_steps) / max(1, t.steps - t.warmup_steps)
    return t.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


@functools.lru_cache(maxsize=2)  # the epoch a batch starts in and the next (a batch larger than the corpus recomputes)
def epoch_order(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The corpus order of one epoch, drawn once per epoch rather than once per step: a permutation of 1M rows costs
    about 8 ms on a CPU core, a sixth of a GPU pretraining step (H200, configs/gpu). Seeded by (seed, epoch) alone,
    so a resumed run sees the same batches. Shared: read it, never write to it."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))


def batch_rows(step: int, batch_size: int, n: int, seed: int) -> torch.Tensor:
    """Rows of the corpus for ``step``: a fixed shuffle per epoch, walked in order."""
    first = step * batch_size
    epoch, offset = divmod(first, n)
    rows = []
    while len(rows) < batch_size:
        rows.extend(epoch_order(n, seed, epoch)[offset : offset + batch_size - len(rows)].tolist())
        epoch, offset = epoch + 1, 0
    return torch.tensor(rows)


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


@cli_entry
def main(argv):
    cfg = load_pretrain_config(argv)
    acc = make_accelerator(cfg.run)
    run = RunDir(cfg, cfg.run, is_main=acc.is_main_process, wait_for_main=acc.wait_for_everyone)
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
    continuous = TASKS[cfg.task.name].continuous
    summary["control_misses"] = [] if continuous else control_check(summary)
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
    if continuous:
        print("continuous task: no designed α (the base's coverage comes from how long it trains)")
    else:
        print("α control holds for every designed cluster" if not misses else "α control missed:\n  " + "\n  ".join(misses))


if __name__ == "__main__":
    main()
