"""The ``barrierlab`` command (``[project.scripts]``): ``barrierlab <command> [--config FILE] [--section.key value ...]``
runs a stage or an experiment driver in this process with the flags of its ``python -m`` form, which keeps working.
The command's module is imported only once it is chosen, so ``barrierlab --help`` loads neither torch nor any stage.
"""

from __future__ import annotations

import importlib
import sys
from dataclasses import dataclass
from types import ModuleType

from barrierlab.errors import UserError, cli_entry


@dataclass(frozen=True)
class Command:
    module: str
    """The module whose ``main(argv)`` runs the command (``python -m <module>``)."""
    summary: str
    """One line for ``barrierlab --help``."""
    experiment: str | None = None
    """A sweep experiment (``experiments.sweep``): its config is configs/<experiment>.yaml unless --config is given,
    and a config of the other experiment is refused."""


COMMANDS = {
    "pretrain": Command("pretrain.__main__", "pretrain a base whose likelihood of each y* is designed (make pretrain)"),
    "posttrain": Command("posttrain.__main__", "post-train a base with outcome or process rewards (make posttrain)"),
    "eval": Command("eval.__main__", "measure checkpoints exactly: likelihoods, pass@k, figures, report (make eval)"),
    "scaling": Command("experiments.sweep", "queries to target against N, four arms (make scaling; default config "
                       "configs/scaling.yaml)", experiment="scaling"),
    "alpha": Command("experiments.sweep", "outcome-PG queries to target against the base α (make alpha; default "
                     "config configs/alpha.yaml)", experiment="alpha"),
    "crosscheck": Command("experiments.crosscheck", "the same runs through the native engine and TRL (make crosscheck)"),
    "train-prm": Command("rewards.train_prm.__main__", "train a process reward model from exact, Monte Carlo or implicit "
                         "labels (make train-prm)"),
    "prm": Command("experiments.prm", "which learned PRMs break the barrier at equal verifier queries (make prm)"),
    "paper": Command("experiments.paper", "the authors' Figures 1 and 2 on their own tasks, both model classes (make "
                     "paper)"),
    "bench": Command("experiments.bench", "native engine against TRL's GRPOTrainer: completions/s (make bench)"),
}

USAGE = "\n".join([
    "usage: barrierlab <command> [--config FILE] [--section.key value ...]",
    "",
    "Each command takes the flags of its python -m form (barrierlab posttrain ... = python -m posttrain ...);",
    "barrierlab <command> --help lists its config keys.",
    "",
    "commands:",
    *(f"  {name:<11} {command.summary}" for name, command in COMMANDS.items()),
])


def sweep_args(experiment: str, module: ModuleType, argv: list[str]) -> list[str]:
    """``argv`` for ``experiments.sweep`` run as ``barrierlab <experiment>``: configs/<experiment>.yaml unless a
    --config is given, and a config that resolves to the other experiment is a one-line error."""
    from barrierlab.config import load_config, parse_overrides

    config_path, _, wants_help = parse_overrides(argv)
    if config_path is None:
        config_path = f"configs/{experiment}.yaml"
        argv = ["--config", config_path, *argv]
    if not wants_help:
        cfg = load_config(module.ExperimentConfig, argv)
        if cfg.experiment != experiment:
            raise UserError(f"barrierlab {experiment}: {config_path} and the flags given set experiment: "
                            f"{cfg.experiment}; run barrierlab {cfg.experiment}, or pass a config of the {experiment} "
                            f"experiment (e.g. configs/{experiment}.yaml)")
    return argv


@cli_entry
def main(argv: list[str]) -> int | None:
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE, file=sys.stdout if argv else sys.stderr)
        return 0 if argv else 2
    name, argv = argv[0], argv[1:]
    if name not in COMMANDS:
        raise UserError(f"unknown command '{name}'; use one of {', '.join(COMMANDS)} (barrierlab --help)")
    command = COMMANDS[name]
    try:
        module = importlib.import_module(command.module)
    except KeyboardInterrupt:
        print("interrupted while starting, before anything was written", file=sys.stderr)
        return 130
    if command.experiment:
        argv = sweep_args(command.experiment, module, argv)
    return module.main(argv)
