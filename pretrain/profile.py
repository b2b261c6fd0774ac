"""Support profiles: per cluster, a pretraining weight and a coverage mode fixing the base likelihood.

Coverage modes and their designed base likelihood ``α_c`` in closed form:
- ``exact``: the response is always ``y*`` (α = 1);
- ``sequence`` (p): ``y*`` with probability p, else a uniform random response (α = p + (1-p) k^-N);
- ``token`` (q): each symbol of ``y*`` replaced by a uniform one with probability q
  (per-token coverage 1 - q + q/k, α = (1 - q + q/k)^N: tiny α, good token-level coverage);
- ``absent``: the cluster never appears in pretraining (α is whatever the model extrapolates).

The corpus draws its responses by these modes in ``pretrain.data``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from barrierlab.config import require


@dataclass
class ClusterProfile:
    coverage: Literal["exact", "sequence", "token", "absent"] = "exact"
    """How pretraining responses of this cluster relate to y*: see pretrain/profile.py."""
    p: float | None = None
    """sequence only: probability that a pretraining response is y* (0 gives an off-support cluster)."""
    q: float | None = None
    """token only: probability that each symbol of y* is replaced by a uniform random symbol."""
    weight: float = 1.0
    """Relative share of this cluster in the pretraining corpus (ignored for 'absent')."""

    def check(self):
        require(self.weight >= 0, "weight", "must be ≥ 0")
        needs = {"sequence": "p", "token": "q"}.get(self.coverage)
        for name in ("p", "q"):
            value = getattr(self, name)
            if name == needs:
                require(value is not None, name, f"coverage '{self.coverage}' needs {name} in [0, 1]")
                require(0.0 <= value <= 1.0, name, f"must be a probability in [0, 1], got {value}")
            else:
                require(value is None, name, f"only used by coverage '{ {'p': 'sequence', 'q': 'token'}[name] }'; remove it")

    def label(self) -> str:
        if self.coverage == "sequence":
            return f"sequence({self.p:g})"
        if self.coverage == "token":
            return f"token({self.q:g})"
        return self.coverage


def designed_alpha(profile: ClusterProfile, k: int, N: int) -> float:
    """Closed-form base likelihood of y* that the coverage mode designs (NaN for 'absent')."""
    if profile.coverage == "exact":
        return 1.0
    if profile.coverage == "sequence":
        return profile.p + (1 - profile.p) * k**-N
    if profile.coverage == "token":
        return (1 - profile.q + profile.q / k) ** N
    return float("nan")


def designed_token_coverage(profile: ClusterProfile, k: int) -> float | None:
    """Per-token coverage that the design fixes, where it is one: the probability 1 - q + q/k of each symbol of y*
    under ``token(q)``, 1/k under ``sequence(0)`` (every symbol uniform, i.e. token(1)); None where the design is a
    mixture over whole sequences (exact, sequence(p > 0)) or absent."""
    if profile.coverage == "token":
        return 1 - profile.q + profile.q / k
    if profile.coverage == "sequence" and profile.p == 0:
        return 1 / k
    return None
