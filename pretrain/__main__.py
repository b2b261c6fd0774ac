"""Stage 1: pretrain a base model whose likelihood of each prompt's correct response is designed.

    python -m pretrain --config configs/pretrain.yaml [--model.kind linear] [--train.steps 500] ...

Builds the corpus and eval prompts from the task and support profile, trains with next-token
cross-entropy on the response tokens, then measures the base likelihood α(x) of every eval prompt
exactly (one teacher-forced pass) and writes support.json / support.png beside the final model
(``pretrain.stage``). A continuous task (gaussian_mixture, rademacher) has no corpus: every step trains on fresh draws
of (x, y*), as the authors' supervised stage does, and its tracked prompts (the mixture centres) are saved beside the
eval prompts. The config is loaded before torch is: ``--help`` and a config error answer at once.
"""

from __future__ import annotations

from barrierlab.errors import cli_entry, loading_libraries
from pretrain.config import load_pretrain_config


@cli_entry
def main(argv):
    cfg = load_pretrain_config(argv)
    with loading_libraries():  # torch, transformers: seconds
        from pretrain.stage import run_pretrain
    run_pretrain(cfg)


if __name__ == "__main__":
    main()
