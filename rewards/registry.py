"""The reward models by name: the built-ins and a user's ``package.module:ClassName``, checked against the
``RewardModel`` contract and built with ``reward.params``."""

from __future__ import annotations

import importlib
import inspect

from barrierlab.errors import UserError
from rewards import BUILT_IN, RewardConfig, unknown_reward
from rewards.base import RewardModel
from rewards.learned import LearnedPRM
from rewards.verifiers import NoisyOutcomeVerifier, NoisyProcessVerifier, OutcomeVerifier, ProcessVerifier

REWARDS: dict[str, type] = dict(zip(BUILT_IN, (OutcomeVerifier, ProcessVerifier, NoisyOutcomeVerifier,
                                               NoisyProcessVerifier, LearnedPRM), strict=True))


def resolve_class(name: str) -> type:
    available = ", ".join(REWARDS)
    if name in REWARDS:
        return REWARDS[name]
    if ":" not in name:
        raise UserError(unknown_reward(name))
    module_name, _, attr = name.partition(":")
    try:
        module = importlib.import_module(module_name)
    except Exception as err:  # not found, or the module itself fails (a syntax error, its own imports)
        raise UserError(f"reward '{name}': cannot import module '{module_name}' ({type(err).__name__}: {err}); run from "
                        f"the folder that holds it or add that folder to PYTHONPATH; built-ins: {available}") from None
    cls = getattr(module, attr, None)
    if cls is None:
        raise UserError(f"reward '{name}': module '{module_name}' has no '{attr}'; available built-ins: {available}")
    if not (isinstance(cls, type) and issubclass(cls, RewardModel)):
        raise UserError(f"reward '{name}' is not a subclass of rewards.RewardModel; subclass it (see docs/rewards.md)")
    if getattr(cls, "granularity", None) not in ("outcome", "process"):
        raise UserError(f"reward '{name}' must define granularity = 'outcome' or 'process'")
    if cls.verdicts is RewardModel.verdicts:
        raise UserError(f"reward '{name}' must implement verdicts(self, prompts, responses, columns)")
    try:
        inspect.signature(cls.verdicts).bind(None, None, None, None)
    except TypeError:
        raise UserError(f"reward '{name}': verdicts{inspect.signature(cls.verdicts)} must take "
                        "(self, prompts, responses, columns)") from None
    return cls


def granularity_of(config: dict) -> str | None:
    """'outcome' or 'process': the reward a post-training run's saved config (its config.yaml, read as a mapping)
    names; None if that cannot be told."""
    try:
        return resolve_class(config["reward"]["name"]).granularity
    except (UserError, KeyError, TypeError):
        return None


_TYPE_WORDS = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}


def _check_type(name: str, key: str, value, default) -> None:
    """A param must have its default's type (an int passes for a float): YAML's ``fasle`` is a string, not false."""
    expected = type(default)
    if expected not in _TYPE_WORDS:
        return
    ok = isinstance(value, expected) and not (expected is int and isinstance(value, bool))
    ok |= expected is float and isinstance(value, int) and not isinstance(value, bool)
    if not ok:
        raise UserError(f"reward.params: '{key}' of {name} must be {_TYPE_WORDS[expected]}, got {value!r}")


def make_reward(cfg: RewardConfig, seed: int = 0, rank: int = 0) -> RewardModel:
    """The reward model of ``cfg``. A model with a ``seed`` parameter (the noisy verifiers) gets ``reward.params.seed``
    if set, else ``seed`` (posttrain's: derived from run.seed), offset by the process ``rank`` so that processes
    draw different noise."""
    cls = resolve_class(cfg.name)
    accepted = dict(inspect.signature(cls.__init__).parameters)
    takes_any = any(p.kind is p.VAR_KEYWORD for p in accepted.values())
    accepted = {n: p for n, p in accepted.items() if n != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}
    params = dict(cfg.params)
    for key, value in params.items():
        if key not in accepted and not takes_any:
            names = [n for n in accepted if n != "signed"]
            raise UserError(f"reward.params: '{key}' is not a parameter of {cfg.name}; allowed: {', '.join(names) or 'none'}")
        if key in accepted and accepted[key].default is not inspect.Parameter.empty:
            _check_type(cfg.name, key, value, accepted[key].default)
    if "seed" in accepted:
        base_seed = params.get("seed", seed)
        if not isinstance(base_seed, int) or isinstance(base_seed, bool):
            raise UserError(f"reward.params: 'seed' of {cfg.name} must be an integer, got {base_seed!r}")
        params["seed"] = base_seed + 1_000_003 * rank
    try:
        return cls(signed=cfg.signed, **params)
    except ValueError as err:  # the class's own check of a value
        raise UserError(f"reward '{cfg.name}': bad params {cfg.params}: {err}") from None
    except TypeError as err:  # a class whose constructor does not take what every reward gets
        raise UserError(f"reward '{cfg.name}': {cls.__name__}(signed={cfg.signed}, **{cfg.params}) fails: {err}; a reward "
                        "class takes signed and the reward.params as keyword arguments (as rewards.RewardModel)") from None
