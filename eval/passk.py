"""pass@k: the unbiased estimator from ``n`` samples per prompt, and the exact value from the likelihood of y*.

Sampled (science.md, pitfalls): ``pass@k = 1 − C(n−c, k) / C(n, k)``, the probability that a uniformly random
k-subset of the n samples holds at least one correct response. The binomials overflow for n = 256, so the ratio
is computed as the product ``Π_{i=n−c+1}^{n} (1 − k/i)`` in log space.

Exact: the correct response is unique, so ``pass@k = 1 − (1 − p(y*|x))^k`` for any k, computed as
``−expm1(k · log1p(−p))`` from log p (science.md, exact pass@k). It is the expectation of the sampled estimator.
"""

from __future__ import annotations

import math

import numpy as np

UNDERFLOW = -700.0  # below this log p, exp(log p) loses digits (subnormal near −708) and then rounds to 0


def pass_at_k(correct, n: int, k: int) -> np.ndarray:
    """Unbiased pass@k per prompt; ``correct`` holds each prompt's count c of correct samples out of ``n``."""
    if not 1 <= k <= n:
        raise ValueError(f"k must be in [1, n = {n}], got {k}")
    c = np.asarray(correct, dtype=np.int64)
    if np.any((c < 0) | (c > n)):
        raise ValueError(f"correct counts must be in [0, n = {n}]")
    # log_tail[j - k - 1] = Σ_{i=j}^{n} log(1 − k/i) for j = k+1 … n+1 (the empty sum last). Factors with
    # i ≤ k are never needed: c > n − k (fewer than k wrong samples) means every k-subset holds a correct one.
    i = np.arange(k + 1, n + 1, dtype=np.float64)
    log_tail = np.append(np.cumsum(np.log1p(-k / i)[::-1])[::-1], 0.0)
    first = n - c + 1  # the product runs over i = n−c+1 … n
    sure = first <= k
    log_ratio = log_tail[np.maximum(first, k + 1) - k - 1]
    return np.where(sure, 1.0, -np.expm1(log_ratio) + 0.0)  # + 0.0: no -0.0 when c = 0


def default_ks(n: int) -> list[int]:
    """1, 2, 4, … up to n (n itself included when it is not a power of two)."""
    ks = [1 << j for j in range(n.bit_length()) if 1 << j <= n]
    return ks if ks[-1] == n else ks + [n]


def exact_pass_at_k(log_p, ks) -> np.ndarray:
    """Exact pass@k ``1 − (1 − p)^k``, shape ``(len(ks), P)``, from each prompt's log p(y*|x) (any real k ≥ 1).

    ``−expm1(k · log(1 − p))`` keeps every digit where ``1 − (1 − p)^k`` would round 1 − p (p = 1e-15 loses 11%).
    Where p itself would underflow, ``log(1 − p) = −p`` to within p, so ``k · p = exp(log k + log p)`` is used."""
    log_p = np.minimum(np.asarray(log_p, dtype=np.float64), 0.0)[None, :]
    k = np.asarray(ks, dtype=np.float64)[:, None]
    with np.errstate(divide="ignore"):  # log p = 0 (p = 1): log(1 − p) = −inf, pass@k = 1
        # log(1 − p) from log p, accurate on both sides of p = 1/2
        log_q = np.where(log_p < -math.log(2), np.log1p(-np.exp(log_p)), np.log(-np.expm1(log_p)))
    tiny = -np.exp(np.log(k) + log_p)  # k · log(1 − p) for p below exp(UNDERFLOW)
    return -np.expm1(np.where(log_p < UNDERFLOW, tiny, k * log_q))


def log_grid(k_max: float, per_decade: int) -> list[int]:
    """Integers k from 1 to ``k_max`` spaced evenly in log k, ``per_decade`` to a decade (repeats at small k dropped)."""
    points = np.logspace(0, math.log10(k_max), round(per_decade * math.log10(k_max)) + 1)
    return sorted({int(round(k)) for k in points})


def fmt_k(k: float) -> str:
    """A number of samples k for people to read: ``181``, ``1.83``; past 1,000 two digits, ``3.2e6``."""
    return f"{k:.3g}" if k < 1000 else f"{k:.1e}".replace("e+0", "e").replace("e+", "e")


def mean_exact(log_p, mask, ks) -> list[float] | None:
    """Mean exact pass@k over the prompts in ``mask`` at each of ``ks``; None for an empty subset."""
    mask = np.asarray(mask, dtype=bool)
    return exact_pass_at_k(np.asarray(log_p)[mask], ks).mean(1).tolist() if mask.any() else None


def crossing_k(base_log_p, other_log_p, mask, ks, iterations: int = 60) -> float | None:
    """The smallest k at which the base's mean exact pass@k over ``mask`` overtakes (exceeds) the other model's,
    found on the grid ``ks`` and refined by bisection in log k. None when the base is ahead already at the first
    grid k (nothing to overtake), never ahead up to the last, or the subset is empty."""
    mask = np.asarray(mask, dtype=bool)
    if not mask.any():
        return None
    base, other = np.asarray(base_log_p)[mask], np.asarray(other_log_p)[mask]

    def lead(k):  # how far the base is ahead at each k (float k: pass@k is defined for any real k ≥ 1)
        return exact_pass_at_k(base, k).mean(1) - exact_pass_at_k(other, k).mean(1)

    ahead = lead(ks) > 0
    if ahead[0] or not ahead.any():
        return None
    j = int(np.argmax(ahead))
    lo, hi = math.log(ks[j - 1]), math.log(ks[j])
    for _ in range(iterations):
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if lead([math.exp(mid)])[0] > 0 else (mid, hi)
    return math.exp(hi)
