"""Small numerical helpers shared by the figures and the report: metric rows, hitting times, the experiments' fits."""

from __future__ import annotations

import numpy as np

QUERIES = "train/reward_queries"


def eval_rows(rows: list[dict]) -> list[dict]:
    """The exact-evaluation rows of a post-training run (they carry the reward queries spent so far)."""
    return [r for r in rows if "eval/likelihood" in r and QUERIES in r]


def queries_to_reach(rows: list[dict], key: str, target: float) -> tuple[int, bool]:
    """``(queries, censored)``: reward queries at the first evaluation where ``key`` ≥ ``target``; if it never
    does, the queries spent in all (a lower bound on the answer) with ``censored`` true."""
    evals = eval_rows(rows)
    for r in evals:
        if r.get(key) is not None and r[key] >= target:
            return int(r[QUERIES]), False
    return (int(evals[-1][QUERIES]) if evals else 0), True


def fittable(runs: list[dict]) -> list[dict]:
    """Experiment runs a log-scale fit can use: they reached the target (not censored) and spent reward queries
    on it. A run whose base already met the target (0 queries) says nothing about the cost; verdicts count it."""
    return [r for r in runs if not r["censored"] and r["queries"] > 0]


def fit_loglinear(x, y) -> tuple[float, float] | None:
    """Least-squares ``log y = a + b·x``: ``(a, b)``, or None with fewer than two distinct x."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if len(set(x.tolist())) < 2:
        return None
    b, a = np.polyfit(x, np.log(y), 1)
    return float(a), float(b)


def scaling_fit(runs: list[dict], arm: str) -> tuple[str, tuple[float, float]] | None:
    """``(kind, (a, b))`` fitted to the uncensored runs of ``arm`` in the theory's shape for its reward (each run
    records it): outcome PG exponential, ``log q = a + b·N`` (q ∝ k^N); process PG a power law,
    ``log q = a + b·log N`` (q ∝ N). None with fewer than two distinct N."""
    mine = [r for r in runs if r["arm"] == arm]
    kind = "power" if mine and mine[0]["reward"] == "process" else "exponential"
    done = fittable(mine)
    x = [r["N"] if kind == "exponential" else np.log(r["N"]) for r in done]
    fit = fit_loglinear(x, [r["queries"] for r in done])
    return None if fit is None else (kind, fit)


def alpha_fit(runs: list[dict]) -> tuple[float, float] | None:
    """``(a, slope)`` of ``log q = a + slope·log α`` over the fittable runs (theory: slope −1)."""
    done = fittable(runs)
    return fit_loglinear([np.log(r["alpha"]) for r in done], [r["queries"] for r in done])
