"""Small numerical helpers shared by the figures and the report: metric rows, hitting times, log-linear fits."""

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

