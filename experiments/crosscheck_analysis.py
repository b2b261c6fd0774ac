"""The cross-check's analysis: exact binomial and Poisson tests of the discovery law per backend and between backends,
the verdicts in words, the figure and report.md (``experiments.crosscheck`` runs what they read)."""

from __future__ import annotations

import math
import statistics
import textwrap
from pathlib import Path
from typing import TYPE_CHECKING

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from barrierlab.config import dump_yaml  # noqa: E402
from barrierlab.metrics import fmt_value  # noqa: E402
from eval.analysis import QUERIES, eval_rows, verifier_queries  # noqa: E402

if TYPE_CHECKING:
    from experiments.crosscheck import CrosscheckConfig

OFF, ON, TRAINED = "eval/offsupport_likelihood", "eval/onsupport_likelihood", "eval/trained_likelihood"
FIRST = "done/first_success_queries"
STILL = 1e-9  # relative change of the trained prompts' likelihood that counts as "moved" before the discovery


def _root(f, lo: float, hi: float) -> float:
    """The root of an increasing ``f`` on [lo, hi], by bisection (60 halvings: below 1e-16 of the range)."""
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if f(mid) < 0 else (lo, mid)
    return (lo + hi) / 2


def binomial_tails(k: int, n: int, p: float) -> tuple[float, float]:
    """(P(X ≤ k), P(X ≥ k)) for X ~ Binomial(n, p)."""
    pmf = [math.comb(n, i) * p**i * (1 - p) ** (n - i) for i in range(n + 1)]
    return min(1.0, math.fsum(pmf[: k + 1])), min(1.0, math.fsum(pmf[k:]))


def poisson_tails(d: int, mu: float) -> tuple[float, float]:
    """(P(X ≤ d), P(X ≥ d)) for X ~ Poisson(mu)."""
    if mu == 0:
        return 1.0, float(d == 0)
    below = math.fsum(math.exp(-mu + i * math.log(mu) - math.lgamma(i + 1)) for i in range(d + 1))
    at = math.exp(-mu + d * math.log(mu) - math.lgamma(d + 1))
    return min(1.0, below), min(1.0, 1 - below + at)


def binomial_test(k: int, n: int, p: float, confidence: float) -> dict:
    """k successes of n against probability p: the exact central two-sided p-value and the Clopper–Pearson interval
    of the share (p lies inside it exactly when the p-value exceeds 1 − confidence)."""
    a = (1 - confidence) / 2
    lo = 0.0 if k == 0 else _root(lambda q: binomial_tails(k, n, q)[1] - a, 0.0, 1.0)
    hi = 1.0 if k == n else _root(lambda q: a - binomial_tails(k, n, q)[0], 0.0, 1.0)
    return {"p_value": min(1.0, 2 * min(binomial_tails(k, n, p))), "interval": [lo, hi]}


def poisson_test(d: int, mu: float, confidence: float) -> dict:
    """d events against a Poisson mean mu: the exact central two-sided p-value and the interval of the mean."""
    a, top = (1 - confidence) / 2, 2 * d + 50.0
    lo = 0.0 if d == 0 else _root(lambda m: poisson_tails(d, m)[1] - a, 0.0, top)
    hi = _root(lambda m: a - poisson_tails(d, m)[0], 0.0, top)
    return {"p_value": min(1.0, 2 * min(poisson_tails(d, mu))), "interval": [lo, hi]}


def discovery_probability(rate: float, queries: int) -> float:
    """P(a geometric waiting time with success probability ``rate`` per query ends within ``queries``)."""
    return -math.expm1(queries * math.log1p(-rate))


def discovery_test(times: list[int | None], budget: int, rate: float, confidence: float) -> dict:
    """One backend's first-success queries (None: never) against the prediction λ = ``rate``: the seeds that
    discovered within ``budget`` against Binomial(n, 1 − (1 − λ)^budget), and the censored rate MLE d / T (T: the
    queries spent without a success, each run's capped at the budget) against λ, its d tested as Poisson(λ T)."""
    d = sum(t is not None and t <= budget for t in times)
    exposure = sum(budget if t is None else min(t, budget) for t in times)
    p = discovery_probability(rate, budget)
    count = binomial_test(d, len(times), p, confidence)
    events = poisson_test(d, rate * exposure, confidence)
    return {"runs": len(times), "discovered": d, "predicted_probability": p, "expected": len(times) * p,
            "share_interval": count["interval"], "count_p_value": count["p_value"], "exposure": exposure,
            "rate": d / exposure, "rate_interval": [m / exposure for m in events["interval"]],
            "rate_p_value": events["p_value"], "times": times}


def rate_ratio_test(a: dict, b: dict, confidence: float) -> dict | None:
    """The two backends' discovery rates, a's over b's: given their D = d_a + d_b discoveries, d_a is
    Binomial(D, T_a / (T_a + T_b)) when the rates are equal; None when neither discovered (nothing to compare)."""
    total = a["discovered"] + b["discovered"]
    if total == 0:
        return None
    share = a["exposure"] / (a["exposure"] + b["exposure"])
    test = binomial_test(a["discovered"], total, share, confidence)
    odds = b["exposure"] / a["exposure"]
    ratio = [math.inf if q == 1 else q / (1 - q) * odds for q in test["interval"]]
    estimate = math.inf if b["discovered"] == 0 else a["rate"] / b["rate"]
    return {"ratio": estimate, "interval": ratio, "p_value": test["p_value"]}


def final(rows: list[dict], key: str) -> float | None:
    values = [r[key] for r in eval_rows(rows) if r.get(key) is not None]
    return values[-1] if values else None


def first_success(rows: list[dict]) -> int | None:
    return next(r.get(FIRST) for r in reversed(rows) if "done/steps" in r)


def moved_before_discovery(rows: list[dict]) -> float:
    """Largest relative change of the trained prompts' likelihood over the evaluations before the first success."""
    first = first_success(rows)
    values = [r[TRAINED] for r in eval_rows(rows) if first is None or r[QUERIES] < first]
    return max(abs(v / values[0] - 1) for v in values)


def summarise(runs: dict) -> list[dict]:
    """Mean and spread over seeds of the final likelihoods, per (arm, backend)."""
    table = []
    for (arm, backend), by_seed in runs.items():
        row = {"arm": arm, "backend": backend, "seeds": len(by_seed)}
        for key, name in ((OFF, "offsupport"), (ON, "onsupport")):
            values = [v for v in (final(rows, key) for rows in by_seed.values()) if v is not None]
            row[f"{name}_mean"] = statistics.fmean(values) if values else None
            row[f"{name}_spread"] = (max(values) - min(values)) if values else None
            row[f"{name}_per_seed"] = values
        table.append(row)
    return table


def analyse(runs: dict, arms: dict, budget: int, confidence: float) -> list[dict]:
    """The discovery tests of every arm whose ``arms[arm]["rate"]`` is set (the predicted λ), per backend and between
    the first two backends."""
    out = []
    for arm, info in arms.items():
        if info["rate"] is None:
            continue
        per = {b: {**discovery_test([first_success(rows) for rows in by_seed.values()], budget, info["rate"], confidence),
                   "moved": max(moved_before_discovery(rows) for rows in by_seed.values())}
               for (a, b), by_seed in runs.items() if a == arm}
        names = list(per)
        out.append({"arm": arm, "rate": info["rate"], "trained_prompts": info["prompts"], "backends": per,
                    "compared": names[:2] if len(names) >= 2 else None,
                    "comparison": rate_ratio_test(per[names[0]], per[names[1]], confidence) if len(names) >= 2 else None})
    return out


def _verdict(ok: bool) -> str:
    return "as predicted" if ok else "NOT as predicted"


def discovery_lines(result: dict, budget: int, confidence: float) -> list[str]:
    """The verdicts of one arm's discovery tests (``analyse``), each with its numbers."""
    arm, level, lines = result["arm"], f"{confidence:.0%}", []
    for backend, t in result["backends"].items():
        lo, hi = t["share_interval"]
        p = t["predicted_probability"]
        lines.append(f"- {backend} {arm}: {t['discovered']} of {t['runs']} seeds discovered y* within {budget:,} queries, "
                     f"predicted {p:.3g} a seed ({t['expected']:.3g} expected); the share's {level} interval "
                     f"[{lo:.3g}, {hi:.3g}] {'holds' if lo <= p <= hi else 'excludes'} it, p = {t['count_p_value']:.3g} "
                     f"({_verdict(t['count_p_value'] > 1 - confidence)})")
        lo, hi = t["rate_interval"]
        lines.append(f"- {backend} {arm}: discovery rate {t['rate']:.3g} a query ({level} interval [{lo:.3g}, {hi:.3g}]) "
                     f"against the predicted E α = {result['rate']:.3g}, p = {t['rate_p_value']:.3g} "
                     f"({_verdict(t['rate_p_value'] > 1 - confidence)})")
        lines.append(f"- {backend} {arm}: before its first success the trained prompts' likelihood moved by at most "
                     f"{t['moved']:.2g} (relative) in any seed ({_verdict(t['moved'] <= STILL)}: nothing is learnt before it)")
    c = result["comparison"]
    if result["compared"] and c is None:
        lines.append(f"- {arm}: no seed of either backend discovered y*, so their rates cannot be compared (the counts "
                     "above carry the check)")
    elif c is not None:
        a, b = result["compared"]
        lines.append(f"- {arm}: {a}/{b} discovery rate ratio {c['ratio']:.3g} ({level} interval [{c['interval'][0]:.3g}, "
                     f"{c['interval'][1]:.3g}]), p = {c['p_value']:.3g} "
                     f"({'the backends agree' if c['p_value'] > 1 - confidence else 'the backends DIFFER'})")
    return lines


def likelihood_lines(table: list[dict], arms: dict) -> list[str]:
    """Arms whose discovery is not tested must lift the off-support prompts above 0.5 in every seed; every arm that
    trains on-support prompts compares their final likelihood across backends (gap against the spread across seeds)."""
    lines = []
    for row in table:
        if arms[row["arm"]]["rate"] is not None:
            continue
        if row["offsupport_mean"] is None:
            lines.append(f"- {row['backend']} {row['arm']}: the base has no off-support eval prompts, so there is "
                         "no barrier to check (NOT as predicted)")
            continue
        low = min(row["offsupport_per_seed"])
        lines.append(f"- {row['backend']} {row['arm']}: off-support in its lowest seed {low:.3g} {'>' if low > 0.5 else '≤'} "
                     f"0.5 (mean {row['offsupport_mean']:.3g}) ({_verdict(low > 0.5)})")
    for arm in dict.fromkeys(r["arm"] for r in table):  # in table order, not set order
        rows = [r for r in table if r["arm"] == arm]
        if not arms[arm]["trains_onsupport"]:
            lines.append(f"- {arm}: trains no on-support prompt, so its on-support likelihood is not compared")
        elif len(rows) == 2 and all(r["onsupport_mean"] is not None for r in rows):
            gap = abs(rows[0]["onsupport_mean"] - rows[1]["onsupport_mean"])
            spread = max(r["onsupport_spread"] for r in rows)
            lines.append(f"- {arm}: final on-support likelihoods differ by {gap:.3g} between backends; the spread "
                         f"across seeds is up to {spread:.3g} ({'within' if gap <= spread else 'outside'} the spread)")
    return lines


def figure(runs: dict, results: list[dict], budget: int, lines: list[str], path: Path) -> None:
    """Discovery survival against the prediction, off- and on-support likelihood against queries, and the verdicts."""
    text = "\n".join(textwrap.fill(line, 210) for line in lines)
    fig, axes = plt.subplots(1, 3, figsize=(18, 5 + 0.14 * text.count("\n")))
    ax = axes[0]
    for result in results:
        observed = []
        for j, (backend, t) in enumerate(result["backends"].items()):
            found = sorted(x for x in t["times"] if x is not None and x <= budget)
            xs = [0, *[x for x in found for _ in (0, 1)], budget]
            ys = [1.0, *[v for i in range(len(found)) for v in ((t["runs"] - i) / t["runs"], (t["runs"] - i - 1) / t["runs"])]]
            ax.plot(xs, [*ys, ys[-1]], "-" if j == 0 else "--", color=f"C{j}", label=f"{result['arm']}, {backend}")
            observed.append(f"{backend} {t['discovered']}/{t['runs']}")
        grid = [budget * i / 200 for i in range(201)]
        ax.plot(grid, [1 - discovery_probability(result["rate"], q) for q in grid], ":", color="k",
                label=f"predicted (1 − E α)^q, E α = {result['rate']:.3g}")
        ax.set_title(f"{result['arm']}: P(discovery ≤ {budget:,}) predicted "
                     f"{discovery_probability(result['rate'], budget):.3f}\nobserved {', '.join(observed)}", fontsize=9)
    if not results:
        ax.set_title("no arm whose discovery is tested", fontsize=9)
    ax.set_xlabel("reward queries")
    ax.set_ylabel("share of seeds without a success yet")
    ax.set_ylim(0, 1.02)
    ax.legend(fontsize=8)
    for (arm, backend), by_seed in runs.items():
        colour = "C0" if arm == "outcome" else "C3"
        style = "-" if backend == "native" else "--"
        for i, rows in enumerate(by_seed.values()):
            evals = eval_rows(rows)
            for ax, key in zip(axes[1:], (OFF, ON)):
                q = [max(verifier_queries(r), 1) for r in evals if r.get(key) is not None]
                v = [max(r[key], 1e-30) for r in evals if r.get(key) is not None]
                # a value holds until the next evaluation (the native loop skips them while nothing can have moved)
                ax.step(q, v, style, where="post", color=colour, alpha=0.6, lw=1, label=f"{arm}, {backend}" if i == 0 else None)
    for ax, title in zip(axes[1:], ("off-support prompts", "on-support prompts")):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_ylim(top=1.5)
        ax.set_xlabel("reward queries (the base at 1)")
        ax.set_ylabel(f"mean likelihood of y* on {title}")
        ax.set_title(f"native (solid) vs TRL (dashed): {title}", fontsize=9)
        ax.legend(fontsize=8)
    fig.text(0.01, 0.01, text, fontsize=7.5, va="bottom", family="monospace")
    fig.tight_layout(rect=(0, 0.02 + 0.14 * (text.count("\n") + 1) / fig.get_figheight(), 1, 1))
    fig.savefig(path, dpi=100)
    plt.close(fig)


def report(cfg: CrosscheckConfig, table: list[dict], results: list[dict], lines: list[str]) -> str:
    prediction = [f"Prediction: an arm with 0/1 outcome rewards sampled on-policy learns nothing before its first success, "
                  f"so its discovery queries are geometric with rate E α over the trained prompts (the base's exact α) and "
                  f"P(discovery within Q = {cfg.max_queries:,}) = 1 − (1 − E α)^Q. Each test is exact at "
                  f"{cfg.confidence:.0%} confidence: a backend that follows the theory fails it with probability at most "
                  f"{1 - cfg.confidence:.0%}.", ""] if results else []
    head = ("| arm | backend | seeds | off-support (mean, spread) | on-support (mean, spread) | on-support per seed |\n"
            "|---|---|---|---|---|---|")
    body = "\n".join(f"| {r['arm']} | {r['backend']} | {r['seeds']} | {fmt_value(r['offsupport_mean'])} "
                     f"({fmt_value(r['offsupport_spread'], 2)}) | {fmt_value(r['onsupport_mean'])} "
                     f"({fmt_value(r['onsupport_spread'], 2)}) | {', '.join(map(fmt_value, r['onsupport_per_seed']))} |"
                     for r in table)
    return "\n".join([
        "# Native engine vs TRL: same base, task and budget", "", "![crosscheck](crosscheck.png)", "",
        f"Budget: {cfg.max_queries:,} reward queries per run; every run trains the base's eval prompts.", "",
        *prediction, head, body, "", *lines, "",
        "<details><summary>config</summary>", "", "```yaml", dump_yaml(cfg).rstrip(), "```", "</details>", ""])
