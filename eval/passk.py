"""Unbiased pass@k from ``n`` samples per prompt, ``c`` of them correct (science.md, pitfalls).

``pass@k = 1 − C(n−c, k) / C(n, k)``: the probability that a uniformly random k-subset of the n samples
holds at least one correct response. The binomials overflow for n = 256, so the ratio is computed as
the product ``Π_{i=n−c+1}^{n} (1 − k/i)`` in log space.
"""

from __future__ import annotations

import numpy as np


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
