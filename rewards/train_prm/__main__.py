"""Train a process reward model (PRM) from one of three label sources, charging the verifier queries they cost.

    python -m rewards.train_prm --config configs/prm/train_exact.yaml [--labels.source monte_carlo] ...

Labels responses drawn from the base (``rewards.train_prm.labels``: exact prefix labels, Monte Carlo completions or
outcome verdicts), trains a PRM on them (``barrierlab.prm``: a token classifier, or PRIME's implicit PRM from
the outcome labels), measures its prefix verdicts on the base's eval prompts, and writes the run folder:
``config.yaml``, ``metrics.jsonl`` (``label/`` at step 0, ``train/``, ``eval/prm_*``, ``done/``), ``data/labels.pt``
(the labels, kept so a resumed run does not pay for them twice), ``checkpoints/``, ``model/`` (+ ``reference/`` for
an implicit PRM) and ``prm.json`` (written last: the PRM is finished) with the verifier queries its labels cost.
``reward.name: learned_prm`` with ``params: {run: <this folder>}`` post-trains with it. The config is loaded before
torch is: ``--help`` and a config error answer at once.
"""

from __future__ import annotations

from barrierlab.errors import cli_entry, loading_libraries
from rewards.train_prm.config import load_prm_config


@cli_entry
def main(argv):
    cfg = load_prm_config(argv)
    with loading_libraries():  # torch, transformers: seconds
        from rewards.train_prm.stage import run_train_prm
    run_train_prm(cfg)


if __name__ == "__main__":
    main()
