"""Small helpers shared by the figures, the report and the drivers: a run's evaluation rows and hitting times."""

from __future__ import annotations

QUERIES = "train/reward_queries"
LABEL_QUERIES = "train/label_queries"  # a learned reward's labelling cost, in every evaluation row of its runs


def verifier_queries(row: dict) -> int:
    """The verifier queries a run had spent at ``row``, a learned reward's labelling included: what every figure and
    hitting time counts."""
    return row[QUERIES] + row.get(LABEL_QUERIES, 0)


def eval_rows(rows: list[dict]) -> list[dict]:
    """The exact-evaluation rows of a post-training run (they carry the reward queries spent so far)."""
    return [r for r in rows if "eval/likelihood" in r and QUERIES in r]


def queries_to_reach(rows: list[dict], key: str, target: float) -> tuple[int, bool]:
    """``(queries, censored)``: verifier queries (labelling included) at the first evaluation where ``key`` ≥ ``target``; if it never
    does, the queries spent in all (a lower bound on the answer) with ``censored`` true."""
    evals = eval_rows(rows)
    for r in evals:
        if r.get(key) is not None and r[key] >= target:
            return int(verifier_queries(r)), False
    return (int(verifier_queries(evals[-1])) if evals else 0), True
