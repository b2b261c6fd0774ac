"""One bookkeeping path for both post-training backends: the counts, when the policy is evaluated, the metric rows,
the stop rules, the checkpoints and resuming from them, the divergence checks and the closing ``done/`` row. A
backend trains; after each step it hands its counts to the ``Bookkeeper`` and asks whether to stop."""

from __future__ import annotations

import time
from contextlib import nullcontext

from tqdm import tqdm

from barrierlab.errors import UserError
from barrierlab.loading import check_same_base, save_model_dir
from barrierlab.metrics import fmt_value
from barrierlab.rundir import RunDir, last_row
from barrierlab.training import fault_point, peak_memory_mb, stop_if_diverged
from posttrain.discovery import Discovery
from posttrain.evaluation import ExactEval


class Bookkeeper:
    """A post-training run's counts, evaluations, metric rows, stop rules and checkpoints, on either backend.

    A checkpoint's ``trainer_state.pt`` has one format: ``step``, ``queries``, ``samples``, ``wall_time_s``,
    ``stop_reason`` (decided before the checkpoint, so a run killed after it does not train on), ``base_fingerprint``,
    ``discovery``, then what the backend's ``snapshot()`` gives: ``optimizer``, ``reward`` (one state per process) and,
    under the backend's name (``native`` or ``trl``), what only that backend restores."""

    def __init__(self, cfg, run: RunDir, evaluator: ExactEval, *, base_id: str, files: dict[str, str], N: int,
                 processes: int = 1, is_main: bool = True, label_queries: int | None = None):
        self.cfg, self.run, self.evaluator = cfg, run, evaluator
        # verifier queries spent before the run (a learned reward's labels): in every evaluation row, for the figures
        self.label_row = {} if label_queries is None else {"train/label_queries": label_queries}
        self.base_id, self.files, self.processes, self.is_main = base_id, files, processes, is_main
        self.step = self.queries = self.samples = 0
        self.stop: str | None = None  # why the run stops after this step (None: it goes on)
        self.last: dict | None = None  # the latest evaluation
        self.moved = True  # the policy may differ from its latest evaluation
        self.discovery = Discovery(N)
        self.wall_before, self.started = 0.0, time.time()
        self.by_queries = cfg.optim.max_queries is not None  # the bar counts what ends the run
        self.bar = self.model = self.tokenizer = self.snapshot = None
        self.saving = nullcontext

    # ------------------------------------------------------------------ resume and start
    def resume(self, model, optimizer=None) -> dict | None:
        """Load the latest checkpoint into ``model`` (and ``optimizer``) and take up its counts. Returns its state, for
        what the backend restores itself (its reward states and its own sub-dict), or None: a fresh run."""
        state = self.run.resume(model, optimizer, check=self._same_run)
        if state is None:
            return None
        self.step, self.queries, self.samples = state["step"], state["queries"], state["samples"]
        self.stop, self.wall_before = state["stop_reason"], state["wall_time_s"]
        self.discovery.load_state_dict(state["discovery"])
        self.last = last_row(self.run.path, "eval/likelihood", upto=self.step)  # a run killed at its end has it here
        if self.is_main:
            print(f"resuming {self.run.path} from step {self.step} ({self.queries} reward queries spent)")
        return state

    def _same_run(self, state: dict) -> None:
        """Refuse a checkpoint of another base, or of another number of processes (each has its own streams)."""
        check_same_base(state["base_fingerprint"], self.base_id, self.cfg.base, self.run.path)
        n = len(state["reward"])
        if n != self.processes:
            raise UserError(f"{self.run.path} was checkpointed by {n} process(es); resume it with that many (torchrun "
                            f"--nproc_per_node {n} -m posttrain ..., or accelerate launch --multi_gpu --num_processes "
                            f"{n}), not {self.processes}")

    def start(self, model, tokenizer, snapshot, saving=nullcontext) -> None:
        """Before the first step: ``model`` is what is evaluated and saved, ``snapshot()`` the backend's part of a
        checkpoint (called on every process: it may gather), ``saving()`` a context in which ``model`` saves as the
        plain model. A fresh run evaluates the base model (step 0)."""
        self.model, self.tokenizer, self.snapshot, self.saving = model, tokenizer, snapshot, saving
        cfg = self.cfg
        self.bar = tqdm(total=cfg.optim.max_queries if self.by_queries else cfg.optim.max_steps,
                        initial=self.queries if self.by_queries else self.step, unit=" queries" if self.by_queries
                        else " steps", unit_scale=self.by_queries, mininterval=1.0,
                        desc=f"posttrain[{cfg.reward.name}{', trl' if cfg.backend == 'trl' else ''}]",
                        disable=not (cfg.run.progress and self.is_main))
        if self.step == 0:
            self.evaluate()

    # ------------------------------------------------------------------ each step
    def running(self) -> bool:
        return self.stop is None and self.step < self.cfg.optim.max_steps

    def count(self, queries: int, samples: int) -> None:
        """A step is done: the reward queries and samples it spent, over all processes."""
        self.step, self.queries, self.samples = self.step + 1, self.queries + queries, self.samples + samples
        self.bar.update(queries if self.by_queries else 1)

    def check_finite(self, model=None, **values: float) -> None:
        """Stop in one line once a value of this step (or a weight of ``model``) is no longer finite."""
        stop_if_diverged(self.step, "optim.lr", model, **values)

    def train_row_due(self) -> bool:
        return self.step % self.cfg.eval.log_every == 0

    def log_train(self, *, reward_mean: float, success_rate: float, loss: float, grad_norm: float,
                  update_time_s: float, prm_calls: int | None = None, **stats: float) -> None:
        """The step's ``train/`` row, under the names both backends log (``stats``: entropy, and kl if it is used;
        ``prm_calls``: a learned reward's calls so far, over all processes)."""
        calls = {} if prm_calls is None else {"train/prm_calls": prm_calls}
        self.run.log(self.step, {"train/reward_queries": self.queries, "train/samples": self.samples, **calls,
                                 "train/reward_mean": reward_mean, "train/success_rate": success_rate,
                                 "train/loss": loss, "train/grad_norm": grad_norm, "train/update_time_s": update_time_s,
                                 **{f"train/{name}": value for name, value in stats.items()}})

    def end_step(self, moved: bool = True) -> bool:
        """After the step's train row: its discovery row, the evaluation if due, the stop rules and the checkpoint if
        due. ``moved``: the step may have changed the policy. Returns whether the run stops here."""
        if self.discovery.new:
            self.run.log(self.step, self.discovery.pop_new())
        self.moved = self.moved or moved
        if self.due_for_eval():
            self.evaluate()
        self.stop = self.stop_reason()  # before the checkpoint, which keeps it
        if self.cfg.run.checkpoint_every and self.step % self.cfg.run.checkpoint_every == 0:
            self.checkpoint()
        fault_point(self.step)
        return self.stop is not None

    def out_of_queries(self) -> bool:
        return self.cfg.optim.max_queries is not None and self.queries >= self.cfg.optim.max_queries

    def due_for_eval(self) -> bool:
        """Every ``eval_every`` steps and at every step where the run may stop, so that a run's last metrics are always
        an evaluation of its final model. A policy that has not moved since its last evaluation would evaluate the
        same: only a last step repeats it."""
        last = self.out_of_queries() or self.step == self.cfg.optim.max_steps
        return last or (self.step % self.cfg.eval.eval_every == 0 and self.moved)

    def stop_reason(self) -> str | None:
        """Why the run stops after this step (None: it goes on to the next step or to ``max_steps``): the query
        budget is spent, or this step's evaluation reached the target likelihood."""
        if self.out_of_queries():
            return "max_queries"
        target = self.cfg.optim.target_likelihood
        if target is not None and self.last is not None and self.step % self.cfg.eval.eval_every == 0:
            value = self.evaluator.stop_value(self.last, self.cfg.optim.stop_on)
            if value is not None and value >= target:
                return "target_likelihood"
        return None

    def evaluate(self) -> None:
        """The exact evaluation of the policy now, logged with the counts so far (the policy keeps its mode)."""
        training = self.model.training
        self.model.eval()
        self.last = {**self.evaluator(self.model), "train/reward_queries": self.queries, "train/samples": self.samples,
                     **self.label_row}
        self.model.train(training)
        self.run.log(self.step, self.last)
        self.moved = False
        other = {"step": self.step} if self.by_queries else {"queries": self.queries}
        self.bar.set_postfix(**other, on=fmt_value(self.last["eval/onsupport_likelihood"], 4),
                             off=fmt_value(self.last["eval/offsupport_likelihood"], 4))

    # ------------------------------------------------------------------ checkpoints and the end
    def wall_time(self) -> float:
        return self.wall_before + time.time() - self.started

    def state(self) -> dict:
        """This step's checkpoint state (on every process: the backend's snapshot may gather)."""
        return {"step": self.step, "queries": self.queries, "samples": self.samples, "wall_time_s": self.wall_time(),
                "stop_reason": self.stop, "base_fingerprint": self.base_id, "discovery": self.discovery.state_dict(),
                **self.snapshot()}

    def checkpoint(self) -> None:
        state = self.state()
        with self.saving():
            self.run.save_checkpoint(self.step, self.model, self.tokenizer, state, self.files)

    def finish(self, checkpoint: bool = True) -> None:
        """The final model/, a last checkpoint (``checkpoint`` False: nothing trained since the one the run resumed
        from), the ``done/`` row and a summary line (its process count shows whether a launcher really started
        several)."""
        self.bar.close()
        self.check_finite(self.model)  # the last update's weights, before they are saved as the result
        state = self.state() if checkpoint else None
        if self.is_main:
            with self.saving():
                save_model_dir(self.run.path / "model", self.model, self.tokenizer, self.files)
                if state is not None:
                    self.run.save_checkpoint(self.step, self.model, self.tokenizer, state, self.files)
            reason, on, off = (self.stop or "max_steps", self.last["eval/onsupport_likelihood"],
                               self.last["eval/offsupport_likelihood"])
            self.run.log(self.step, {"done/stop_reason": reason, "done/steps": self.step,
                                     "done/reward_queries": self.queries, "done/wall_time_s": round(self.wall_time(), 2),
                                     "done/peak_memory_mb": round(peak_memory_mb(self.evaluator.device), 1),
                                     "done/processes": self.processes, **self.discovery.done_metrics(),
                                     **{key.replace("train/", "done/"): v for key, v in self.label_row.items()}})
            print(f"stopped ({reason}) after {self.step} steps on {self.processes} process"
                  f"{'es' * (self.processes > 1)}, {self.queries} reward queries: on-support likelihood "
                  f"{fmt_value(on, 4)}, off-support likelihood {fmt_value(off, 4)}")
        self.run.close()
