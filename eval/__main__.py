"""Evaluation stage: score checkpoints on the base run's eval prompts, then write the figures and report.

    python -m eval --config configs/eval.yaml --checkpoints.outcome runs/outcome --checkpoints.process runs/process

Per checkpoint: the exact likelihood of y* and the smallest next-token probability along it for every
prompt; the expected error overall and on the on-/off-support splits of the *base* α; the LQ Q(ε) and
token-level LQ Q^TL(ε) curves; unbiased pass@k from n samples per prompt, per split; the exact pass@k
``1 − (1 − p(y*|x))^k`` for k from 1 to 1e12, per split and per cluster, and the k at which the base overtakes
each other checkpoint. Writes ``eval.json``, ``per_prompt.csv``, ``passk.csv``, ``passk_exact.csv``,
``config.yaml``, ``figures/`` and ``report.md`` into ``out_dir`` (``eval.stage``). The config is loaded before
torch is: ``--help`` and a config error answer at once.
"""

from __future__ import annotations

from barrierlab.config import load_config
from barrierlab.errors import cli_entry, loading_libraries
from eval.config import EvalStageConfig


@cli_entry
def main(argv):
    cfg = load_config(EvalStageConfig, argv, default_config="configs/eval.yaml", prog="eval")
    with loading_libraries():  # torch, transformers: seconds
        from eval.stage import run_eval
    run_eval(cfg)


if __name__ == "__main__":
    main()
