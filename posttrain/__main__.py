"""Stage 2: post-train a base model with outcome or process rewards by policy gradient.

    python -m posttrain --config configs/posttrain_outcome.yaml [--reward.name process] ...

Each step: fresh prompts → a behaviour policy samples responses → the reward model scores them (reward
queries are counted) → advantages → one policy-gradient step on ``-Σ_i A_i log p(y_i | x, y_<i)``.
Every ``eval_every`` steps the likelihood of y* on the base run's eval prompts is computed exactly. The loop is
``posttrain.native`` or, with ``--backend trl``, TRL's GRPOTrainer (``posttrain.trl_backend``); both keep their
books through ``posttrain.bookkeeping``; ``posttrain.stage`` sets them up. The config is loaded before torch is:
``--help`` and a config error answer at once.
"""

from __future__ import annotations

from barrierlab.errors import cli_entry, loading_libraries
from posttrain.config import check_trl_config, load_posttrain_config


@cli_entry
def main(argv):
    cfg = load_posttrain_config(argv)
    if cfg.backend == "trl":
        check_trl_config(cfg)  # what the config alone tells, before torch
    with loading_libraries():  # torch, transformers: seconds
        from posttrain.stage import run_posttrain
    run_posttrain(cfg)


if __name__ == "__main__":
    main()
