"""TRL as a second post-training backend: the same run through ``trl.GRPOTrainer``.

``posttrain --backend trl`` hands the policy-gradient loop to TRL and keeps everything else of the native
engine: the same prompts (drawn step by step from the same ``PromptSource``), the same reward models (the
queries they charge are counted), the same exact evaluation and the same books (``posttrain.bookkeeping``:
metric names, evaluation cadence, stop rules, checkpoints in one format, ``model/`` with task.json).

How the native engine maps onto TRL
- Outcome reward with baseline ``group_mean``: the stock ``GRPOTrainer``. The project's reward model is
  wrapped as a TRL reward function (``RewardFunction``: completion ids → symbols, ``target`` from a dataset
  column). TRL's advantage is ``r - mean_group(r)``, divided by the unbiased group std + 1e-4 when
  ``algo.scale_std``: the native ``group_mean`` exactly.
- Process rewards, and the baselines TRL lacks (none, batch_mean, position_mean, rloo): ``PrefixAdvantageTrainer``
  replaces TRL's (B,) advantages by the native (B, N) ones, ``posttrain.advantages.advantages`` of the per-prefix
  rewards; TRL's ``_compute_loss`` uses 2-D advantages as they are.
- Loss: ``loss_type="luspo"`` at token level is ``Σ_tokens loss / B``, the native normalisation. On-policy with
  one update per generation the ratio is exp(logp - sg(logp)) = 1 and no clipping is active, so its gradient is
  the native ``-Σ_i A_i ∇log p(y_i | x, y_<i)`` averaged over responses. (``dr_grpo`` divides by B·N instead:
  the same up to 1/N, which changes SGD's step. TRL's advice that luspo is meant for
  ``importance_sampling_level="sequence"`` is filtered out: at sequence level a (B, T) advantage would be mixed over
  positions, so token level is the right one here.)
- The policy is the next-token distribution over the k answer symbols, which TRL samples and trains through the
  pieces of ``posttrain.for_trl`` (also there for a GRPOTrainer script of your own): generation restricted to
  exactly N answer symbols, a frozen ``lm_head.bias`` that restricts the training log-probs and the entropy to
  them, so the gradient is that of log softmax over the k answers as ``barrierlab.policy.answer_logits``
  computes, and a copy of the tokenizer with the eos TRL needs. Saved models are plain ``LlamaForCausalLM``s with
  the original tokenizer.

Remaining differences from the native engine, and why
- Behaviour policy: on_policy only. TRL samples from the policy it trains; uniform, mixture, best-of-m and
  teacher forcing have no TRL counterpart (UserError).
- ``algo.group_size`` ≥ 2: TRL's ``num_generations`` must be at least 2 (UserError otherwise).
- Optimiser: adam (TRL/transformers' AdamW with weight decay 0, which is Adam), adagrad, sgd with a constant
  learning rate; the theory's ``adaptive`` step needs per-response gradients that Trainer does not expose
  (UserError).
- Sampling randomness: TRL samples with the global torch RNG (seeded by ``run.seed``); the native engine uses
  its own generator. Same distribution, different draws, so the two backends' curves are not identical.
- ``train/loss`` is TRL's surrogate: ``-Σ A·exp(logp - sg(logp)) / B`` has the native gradient but the value
  ``-Σ A / B`` (the native engine logs ``-Σ A log p / B``). Compare gradients and rewards, not loss values.
- ``algo.temperature`` ≠ 1: TRL also divides the logits by the temperature when it computes the training
  log-probs, so the gradient and ``train/entropy`` are those of the tempered policy (native: the untempered one).
- Precision on a GPU (``run.mixed_precision`` auto or bf16): TRL generates through the model as accelerate prepared
  it, under bf16 autocast; the native engine samples in fp32 and autocasts the loss pass only.
- ``algo.kl_coef`` > 0: TRL's k3 estimator at the sampled tokens, with q0 loaded by TRL from the base model's
  folder (restricted to the answers by the same bias); the native engine adds the exact KL over the answers. The
  same KL in expectation, and (with ``use_bias_correction_kl``) a gradient whose expectation is the exact KL's.
  ``train/kl`` is TRL's token mean of k3 times N: a sampled estimate of the native per-response exact KL.
- Resume: from the run's own ``checkpoints/step_N`` (not Trainer's format): weights, optimiser state, counters,
  the reward's noise state and (under ``trl``) the global torch RNG that TRL samples with; the Trainer then runs the remaining
  steps on the remaining prompts. A killed run resumed this way ends as the uninterrupted run does (tested).
- One process, transformer models only: the per-token baselines and the query count use the local batch, and
  TRL's fused LM head needs an ``lm_head`` (the linear policy has none). Both raise UserError.
- The reward model gets CPU tensors (TRL hands the reward function Python lists); native: the run's device.
"""

from __future__ import annotations

import logging
import os
import shutil
import time

import torch

from barrierlab.errors import UserError
from barrierlab.training import precision_of, seed_everything, synchronize
from posttrain.advantages import advantages
from posttrain.bookkeeping import Bookkeeper
from posttrain.config import check_trl_config
from posttrain.for_trl import (
    RewardFunction,
    add_answer_bias,
    as_saved,
    generation_fields,
    prompt_dataset,
    require_lm_head,
    saved_config,
    trl_tokenizer,
)


def _offline() -> None:
    """No hub access and no telemetry ping from TRL. huggingface_hub reads the variables at import (barrierlab
    has imported transformers by now), so set its constants too."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    from huggingface_hub import constants

    constants.HF_HUB_OFFLINE = True
    constants.HF_HUB_DISABLE_TELEMETRY = True


def check_supported(cfg, model=None, processes: int = 1) -> None:
    """What the TRL backend cannot run, as one-line UserErrors (see the module docstring for why): the config's
    (``check_trl_config``), then the launch's and the model's."""
    if processes > 1:
        raise UserError(f"the trl backend runs on one process, not {processes}; launch it without accelerate/torchrun")
    check_trl_config(cfg)
    if model is not None:
        require_lm_head(model)


def _trainer_classes():
    from trl import GRPOTrainer

    class PrefixAdvantageTrainer(GRPOTrainer):
        """GRPOTrainer whose advantages are the native (B, N) ones of the per-prefix rewards."""

        def __init__(self, *args, reward_fn: RewardFunction, algo, **kwargs):
            super().__init__(*args, reward_funcs=reward_fn, **kwargs)
            self.reward_fn, self.algo = reward_fn, algo

        def _generate_and_score_completions(self, inputs):
            out = super()._generate_and_score_completions(inputs)  # calls reward_fn on these rows, in this order
            out["advantages"] = self.token_advantages(self.reward_fn.values, out["completion_mask"])
            return out

        def token_advantages(self, rewards: torch.Tensor, completion_mask: torch.Tensor) -> torch.Tensor:
            """(B, T) advantages on TRL's completion grid; rows come in groups of G, as the native layout."""
            a = self.algo
            adv = advantages(rewards.to(completion_mask.device), a.baseline, a.group_size, a.scale_std)
            full = torch.zeros(completion_mask.shape, dtype=torch.float32, device=completion_mask.device)
            full[:, : adv.shape[1]] = adv  # T ≥ N if TRL ever pads
            return full * completion_mask

    return GRPOTrainer, PrefixAdvantageTrainer


def grpo_config(cfg, N: int, k: int, vocab: int, output_dir: str, steps: int):
    """The native config in TRL's terms for a run of ``steps`` updates; every field that matters is set, not left
    to TRL's defaults."""
    from trl import GRPOConfig

    return GRPOConfig(**grpo_fields(cfg, N, k, vocab, output_dir, steps))


# GRPOConfig fields left at TRL's defaults because they cannot act in these runs: vLLM's and paged or continuous
# batching's (all off), the other loss types' parameters, the adaptive-entropy schedule (off), the reference model's
# sync (off), one reward function (no weights), steps_per_generation (follows from generation_batch_size), Hub and
# completion logging, chat templates and multimodal inputs. grpo_fields sets every other GRPOConfig field.
LEFT_TO_TRL = frozenset("""
    model_init_kwargs trust_remote_code router_aux_loss_coef num_generations_eval ds3_gather_for_generation
    steps_per_generation chat_template_kwargs cache_implementation reward_weights max_tool_calling_iterations
    sapo_temperature_neg sapo_temperature_pos vespo_k_pos vespo_lambda_pos vespo_k_neg vespo_lambda_neg
    ref_model_mixup_alpha ref_model_sync_steps entropy_coef_min entropy_coef_max entropy_coef_delta entropy_target
    log_multimodal num_completions_to_print log_unique_prompts log_completions_hub_repo
    transformers_continuous_batching_config vllm_mode vllm_model_impl vllm_enable_sleep_mode
    vllm_structured_outputs_regex vllm_server_base_url vllm_server_host vllm_server_port vllm_server_timeout
    vllm_group_port vllm_gpu_memory_utilization vllm_max_model_length vllm_tensor_parallel_size
    vllm_importance_sampling_correction vllm_importance_sampling_mode vllm_importance_sampling_clip_max
    vllm_importance_sampling_clip_min vllm_importance_sampling_cap
""".split())


def grpo_fields(cfg, N: int, k: int, vocab: int, output_dir: str, steps: int) -> dict:
    """``grpo_config``'s fields: every GRPOConfig field not in ``LEFT_TO_TRL``, and the Trainer's that matter."""
    cuda = torch.cuda.is_available()
    B = cfg.optim.batch_size
    return dict(
        output_dir=output_dir,
        seed=cfg.run.seed,
        data_seed=None,  # shuffling is off: the dataset is the PromptSource's sequence
        use_cpu=not cuda,
        bf16=precision_of(cfg.run) == "bf16",  # as the native engine's autocast
        fp16=False,
        cast_lm_head_to_fp32=False,
        activation_checkpointing=False,
        torch_compile=False,
        use_liger_kernel=False,
        dataloader_num_workers=0,
        # optimiser: native step sizes, no schedule, no weight decay, clipping only if asked (0: none)
        optim={"adam": "adamw_torch", "adagrad": "adagrad", "sgd": "sgd"}[cfg.optim.optimizer],
        learning_rate=cfg.optim.lr,
        weight_decay=0.0,
        lr_scheduler_type="constant",
        warmup_steps=0,
        max_grad_norm=cfg.optim.grad_clip,
        max_steps=steps,
        # one generation of B completions (B/G prompts × G) per step, one update on it: on-policy
        per_device_train_batch_size=B,
        gradient_accumulation_steps=1,
        generation_batch_size=B,
        num_generations=cfg.algo.group_size,
        num_iterations=1,
        off_policy_mask_threshold=None,
        use_vllm=False,
        use_transformers_paged=False,
        use_transformers_continuous_batching=False,
        shuffle_dataset=False,  # keep the PromptSource order: the native prompt sequence
        # exactly N answer symbols from the policy at the run's temperature
        **generation_fields(k, N, vocab),
        temperature=cfg.algo.temperature,
        pad_to_multiple_of=None,
        # loss and advantages (see the module docstring)
        loss_type="luspo",
        importance_sampling_level="token",
        scale_rewards="group" if cfg.algo.scale_std else "none",
        multi_objective_aggregation="sum_then_normalize",  # one reward function: its rewards as they are
        epsilon=0.2, epsilon_high=None, delta=None,  # clipping bounds: inert, as the ratio is exactly 1
        entropy_coef=0.0, use_adaptive_entropy=False, top_entropy_quantile=1.0,  # no entropy bonus or token masking
        beta=cfg.algo.kl_coef,
        use_bias_correction_kl=True,  # makes the k3 KL's gradient an unbiased estimate of the exact KL's
        sync_ref_model=False,  # q0 stays the base
        disable_dropout=False,  # native keeps the model's dropout in the loss pass
        # we log and save ourselves: the Bookkeeper's rows reach run.report_to's trackers through RunDir, as the
        # native loop's do
        logging_steps=1,
        report_to="none",
        save_strategy="no",
        log_completions=False,
        disable_tqdm=True,
    )


def _not_the_luspo_advice(record: logging.LogRecord) -> bool:
    """TRL advises sequence-level ratios with luspo; token level is deliberate here (see the module docstring)."""
    return "'luspo'" not in record.getMessage()


def build_trainer(cfg, model, tokenizer, reward_fn: RewardFunction, dataset, k: int, N: int, output_dir: str,
                  steps: int):
    """The stock GRPOTrainer where TRL's advantages are the native ones (outcome, group_mean), else the per-token one."""
    logging.getLogger("trl.trainer.grpo_trainer").addFilter(_not_the_luspo_advice)  # added once: the same function
    add_answer_bias(model, k)
    args = grpo_config(cfg, N, k, model.config.vocab_size, output_dir, steps)
    stock, prefix = _trainer_classes()
    common = dict(model=model, args=args, train_dataset=dataset, processing_class=trl_tokenizer(tokenizer))
    if reward_fn.reward.granularity == "outcome" and cfg.algo.baseline == "group_mean":
        trainer = stock(**common, reward_funcs=reward_fn)
    else:
        trainer = prefix(**common, reward_fn=reward_fn, algo=cfg.algo)
    if trainer.ref_model is not None:  # kl_coef > 0: q0 over the answers too
        add_answer_bias(trainer.ref_model, k)
    return trainer


def run_trl(cfg, books: Bookkeeper, *, acc, model, tokenizer, task, reward, prompts) -> None:
    """Post-train ``model`` with TRL; ``books`` writes the run folder as the native loop's does. The arguments are
    what ``posttrain.__main__.main`` has built and checked (``check_supported`` among them)."""
    _offline()
    from transformers import TrainerCallback
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    seed_everything(cfg.run.seed)  # TRL samples with the global RNG
    k, N, G, B = task.k, task.N, cfg.algo.group_size, cfg.optim.batch_size
    plain_config = saved_config(model)
    reward_fn = RewardFunction(reward, tokenizer, N, books.discovery)
    # every step's prompts, as an uninterrupted run draws them; a resumed run takes the ones it has not trained on
    dataset = prompt_dataset(prompts, cfg.optim.max_steps, B // G)
    resumed = books.resume(model)  # before the answer bias is added: checkpoints hold the plain model
    if resumed is not None:
        reward.load_state_dict(resumed["reward"][0])
        reward_fn.queries, reward_fn.samples = books.queries, books.samples
    first_step = books.step
    # TRL's output_dir (nothing is saved there), inside the run folder so that a killed run's rerun clears it
    scratch = books.run.path / ".trl_output"
    shutil.rmtree(scratch, ignore_errors=True)
    trainer = None
    if books.running():  # a run killed after its last step (or after it decided to stop) has nothing left to train
        dataset = dataset.select(range(first_step * (B // G), len(dataset)))
        trainer = build_trainer(cfg, model, tokenizer, reward_fn, dataset, k, N, str(scratch), cfg.optim.max_steps - first_step)
        trainer.remove_callback(PrinterCallback)  # our own bar and metrics.jsonl instead of printed dicts
        trainer.remove_callback(ProgressCallback)
    model.to(acc.device)  # where the Trainer puts it

    def snapshot() -> dict:  # the optimiser and the RNG TRL samples with
        rng = {"torch_rng": torch.get_rng_state()}
        if torch.cuda.is_available():
            rng["cuda_rng"] = torch.cuda.get_rng_state_all()
        return {"optimizer": trainer.optimizer.state_dict(), "reward": [reward.state_dict()], "trl": rng}

    class StepBooks(TrainerCallback):
        """After each step's log, the native loop's bookkeeping: counts, train row, evaluation, stop, checkpoint."""

        def on_step_begin(self, args, state, control, optimizer=None, **kwargs):
            # a resumed run's first step: Trainer has built its optimiser, reseeded torch and drawn a seed for its
            # dataloader by now; restore the optimiser and the RNG the next generation samples with
            if resumed is not None and state.global_step == 0:
                optimizer.load_state_dict(resumed["optimizer"])
                torch.set_rng_state(resumed["trl"]["torch_rng"])
                if "cuda_rng" in resumed["trl"]:
                    torch.cuda.set_rng_state_all(resumed["trl"]["cuda_rng"])

        def on_log(self, args, state, control, logs=None, **kwargs):
            if "loss" not in logs or first_step + state.global_step == books.step:  # the end-of-training summary
                return
            synchronize(acc.device)
            update_time = time.perf_counter() - self.tick  # generation, rewards and the update since the last step
            books.count(reward_fn.queries - books.queries, reward_fn.samples - books.samples)
            books.check_finite(model, **{"train/loss": logs["loss"]})  # before TRL samples from NaN weights
            if books.train_row_due():
                stats = {"entropy": logs["entropy"]}
                if "kl" in logs:  # TRL's is a mean over tokens; native train/kl sums over the N positions
                    stats["kl"] = logs["kl"] * N
                books.log_train(reward_mean=reward_fn.values.mean().item(), loss=logs["loss"],
                                success_rate=reward_fn.success.float().mean().item(), grad_norm=logs["grad_norm"],
                                update_time_s=update_time, prm_calls=reward.model_calls(), **stats)
            control.should_training_stop = books.end_step()
            self.tick = time.perf_counter()

    books.start(model, tokenizer, snapshot, saving=lambda: as_saved(model, plain_config))
    if trainer is not None:
        callback = StepBooks()
        trainer.add_callback(callback)
        model.train()
        callback.tick = time.perf_counter()
        trainer.train()
    books.finish(checkpoint=trainer is not None)  # else nothing trained since the checkpoint it resumed from
    shutil.rmtree(scratch, ignore_errors=True)
