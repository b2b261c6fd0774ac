"""Censoring-aware rate estimates for the barrier experiments, with bootstrap intervals over seeds.

A run that spends its budget without reaching its target is right-censored: its true cost exceeds the budget.
Censored runs stay in every estimate (science.md):
- ``exponential_mean``: the maximum-likelihood mean of an exponential waiting time under right-censoring,
  Σ times / number of events. Discovery under 0/1 outcome rewards is geometric (memoryless) with mean ≈ 1/α,
  so this is its natural estimate.
- ``km_median``: the Kaplan–Meier median, assuming no shape; used for the queries to reach the target, which add
  a learning phase to the discovery.
Fits are least squares of the log estimate per x against x (or log x); ``bootstrap`` resamples the seeds at each x
(a stratified bootstrap) and refits, giving percentile intervals of the slope and of each per-x estimate.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

Sample = list[tuple[float, bool]]  # (queries, censored) of the seeds at one x


def exponential_mean(sample: Sample) -> float:
    """MLE of the mean waiting time under right-censoring: total time at risk over the events (inf: no event)."""
    events = sum(not c for _, c in sample)
    total = sum(t for t, _ in sample)
    return total / events if events else math.inf


def km_median(sample: Sample) -> float:
    """Kaplan–Meier median: the first event time where the survival estimate falls to ½ or below (inf: it never
    does, more than half censored). Ties: events before censorings at the same time."""
    at_risk, survival = len(sample), 1.0
    for t, censored in sorted(sample, key=lambda tc: (tc[0], tc[1])):
        if not censored:
            survival *= 1 - 1 / at_risk
            if survival <= 0.5 + 1e-12:
                return t
        at_risk -= 1
    return math.inf


ESTIMATORS: dict[str, Callable[[Sample], float]] = {"exponential_mean": exponential_mean, "km_median": km_median}


def loglinear_slope(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """``(a, b)`` of least squares ``log y = a + b x``."""
    b, a = np.polyfit(x, np.log(y), 1)
    return float(a), float(b)


def bootstrap(samples: dict[float, Sample], estimator: str, log_x: bool, resamples: int = 2000,
              seed: int = 0) -> dict | None:
    """Per-x estimates and the fitted slope of ``log estimate`` against x (``log_x``: against log x), each with a
    95% percentile interval from resampling the seeds at every x. None with fewer than two x of finite estimate.

    A resample whose estimate at some x is infinite (every resampled seed censored, or more than half for a median)
    cannot be fitted; the share of such resamples is returned as ``unfittable``, and an interval is reported only
    when at most 5% were (otherwise it would be biased low)."""
    est = ESTIMATORS[estimator]
    xs = sorted(samples)
    point = np.array([est(samples[x]) for x in xs])
    ok = np.isfinite(point) & (point > 0)  # 0: the base met the target before any query, nothing on a log axis
    if ok.sum() < 2:
        return None
    xv = np.log(np.array(xs, dtype=float)) if log_x else np.array(xs, dtype=float)
    a, b = loglinear_slope(xv[ok], point[ok])
    rng = np.random.default_rng(seed)
    slopes, per_x, bad = [], [], 0
    for _ in range(resamples):
        draw = np.array([est([s[i] for i in rng.integers(0, len(s), len(s))]) for s in (samples[x] for x in xs)])
        per_x.append(draw)
        if (np.isfinite(draw) & (draw > 0)).all():
            slopes.append(loglinear_slope(xv, draw)[1])
        else:
            bad += 1
    per_x = np.array(per_x)
    unfittable = bad / resamples
    interval = None if unfittable > 0.05 or not slopes else tuple(float(v) for v in np.percentile(slopes, [2.5, 97.5]))
    # no interpolation between draws: an infinite draw (all resampled seeds censored) stays an infinite band end
    band = [tuple(float(v) for v in np.percentile(per_x[:, i], [2.5, 97.5], method="closest_observation"))
            for i in range(len(xs))]
    return {"estimator": estimator, "x": list(xs), "estimate": point.tolist(), "band": band, "fit": (a, b),
            "slope": b, "slope_interval": interval, "unfittable": unfittable,
            "all_finite": bool(ok.all())}


def ratio_interval(top: Sample, bottom: Sample, estimator: str, resamples: int = 2000, seed: int = 0) -> tuple:
    """Point estimate and 95% percentile interval of est(top) / est(bottom), seeds resampled in both."""
    est = ESTIMATORS[estimator]
    rng = np.random.default_rng(seed)
    pairs = [(est([top[i] for i in rng.integers(0, len(top), len(top))]),
              est([bottom[i] for i in rng.integers(0, len(bottom), len(bottom))])) for _ in range(resamples)]
    with np.errstate(divide="ignore", invalid="ignore"):  # an infinite median (mostly censored) gives inf or nan
        draws = np.array([a for a, _ in pairs]) / np.array([b for _, b in pairs])
        point = np.float64(est(top)) / np.float64(est(bottom))
    draws = draws[~np.isnan(draws)]
    interval = tuple(float(v) for v in np.percentile(draws, [2.5, 97.5])) if draws.size else (math.nan, math.nan)
    return float(point), interval


# ----------------------------------------------------------------------------- the experiments' analyses

METHOD = ("Estimates keep censored runs: discovery queries by the censored exponential MLE of the mean (discovery "
          "under 0/1 outcome rewards is a geometric waiting time), queries to the target by the Kaplan–Meier median; "
          "slopes are least squares on the log estimates, with 95% percentile intervals from 2,000 bootstrap resamples "
          "of the seeds at each x.")


def _samples(runs: list[dict], x: str, value: str, censored: str) -> dict[float, Sample]:
    out: dict[float, Sample] = {}
    for r in runs:
        out.setdefault(r[x], []).append((float(r[value]), bool(r[censored])))
    return out


def scaling_analysis(results: dict) -> dict:
    """Per arm: the estimates per N and the fitted growth of discovery and of queries to target (outcome rewards:
    ``log q = a + b N``, process rewards: ``log q = a + b log N``), with intervals; the base's mean α per N."""
    runs = results["runs"]
    arms = {}
    for arm in dict.fromkeys(r["arm"] for r in runs):
        mine = [r for r in runs if r["arm"] == arm]
        power = mine[0]["reward"] == "process"
        target = _samples(mine, "N", "queries", "censored")
        arms[arm] = {"reward": mine[0]["reward"], "behaviour": mine[0]["behaviour"],
                     "shape": "power" if power else "exponential",
                     "discovery": bootstrap(_samples(mine, "N", "discovery", "discovery_censored"),
                                            "exponential_mean", log_x=power),
                     "target": bootstrap(target, "km_median", log_x=power)}
    alpha = {}
    for r in runs:
        alpha.setdefault(r["N"], []).append(r["base_alpha"])
    analysis = {"k": results["k"], "arms": arms,
                "base_alpha": {n: float(np.mean(v)) for n, v in sorted(alpha.items())}}
    on_policy = {r["reward"]: r["arm"] for r in runs if r["behaviour"] == "on_policy"}
    if {"outcome", "process"} <= on_policy.keys():
        top = max(r["N"] for r in runs)
        at = lambda arm: [(float(r["queries"]), r["censored"]) for r in runs if r["arm"] == arm and r["N"] == top]  # noqa: E731
        ratio, interval = ratio_interval(at(on_policy["outcome"]), at(on_policy["process"]), "km_median")
        analysis["largest_N"] = {"N": top, "outcome": on_policy["outcome"], "process": on_policy["process"],
                                 "ratio": ratio, "interval": interval}
    return analysis


def _interval(fit: dict, exp: bool) -> str:
    f = math.exp if exp else (lambda v: v)
    lo_hi = fit["slope_interval"]
    if lo_hi is None:
        return f"(no interval: {fit['unfittable']:.0%} of the resamples had an estimate beyond the budget)"
    return f"(95% interval [{f(lo_hi[0]):.3g}, {f(lo_hi[1]):.3g}])"


def scaling_verdict(results: dict, analysis: dict) -> list[str]:
    """The fitted rates in words, each against the theory's shape and the acceptance the experiment sets."""
    k, lines = analysis["k"], []
    for arm, a in analysis["arms"].items():
        for what, fit in (("discovery", a["discovery"]), ("queries to target", a["target"])):
            if fit is None:
                lines.append(f"**{arm}** {what}: fewer than two N with a finite estimate; nothing to fit.")
                continue
            if a["shape"] == "exponential":
                lo_hi = fit["slope_interval"]
                inside = lo_hi is not None and k / 2 <= math.exp(lo_hi[0]) and math.exp(lo_hi[1]) <= 2 * k
                lines.append(f"**{arm}** {what}: ×**{math.exp(fit['slope']):.3g} per unit N** {_interval(fit, True)}; "
                             f"theory k = {k}, interval inside [k/2, 2k] = [{k / 2:g}, {2 * k:g}]: "
                             f"**{'yes' if inside else 'no'}**.")
            else:
                lo_hi = fit["slope_interval"]
                linear = lo_hi is not None and lo_hi[1] <= 1.2
                lines.append(f"**{arm}** {what}: ∝ **N^{fit['slope']:.2f}** {_interval(fit, False)}; at most linear "
                             f"(upper end ≤ 1.2): **{'yes' if linear else 'no'}**.")
        if a["behaviour"] == "token_best_of_m" and a["target"] is not None:
            per_n = [q / n for n, q in zip(a["target"]["x"], a["target"]["estimate"])]
            spread = max(per_n) / min(per_n)
            lines.append(f"**{arm}** queries to target per unit N: {min(per_n):,.0f} to {max(per_n):,.0f}, a spread of "
                         f"×{spread:.2f} across N (theory ∝ N·k: at most ×2): **{'yes' if spread <= 2 else 'no'}**.")
    big = analysis.get("largest_N")
    if big and math.isnan(big["ratio"]):
        lines.append(f"At the largest N = {big['N']}, neither {big['outcome']} nor {big['process']} reached the target in "
                     "most seeds: no ratio.")
    elif big:
        lo, hi = big["interval"]
        lines.append(f"At the largest N = {big['N']}, {big['outcome']} needs **×{big['ratio']:.3g}** the queries of "
                     f"{big['process']} (95% interval [{lo:.3g}, {hi:.3g}]); at least ×10: "
                     f"**{'yes' if big['ratio'] >= 10 else 'no'}**.")
    return lines


def alpha_analysis(results: dict) -> dict:
    """Per on-support cluster: its base mean α and the estimates; log-log slopes of discovery and of queries to
    target against α (the theory's: −1), with intervals."""
    runs = results["runs"]
    alpha = {c: float(np.mean([r["alpha"] for r in runs if r["cluster"] == c])) for c in dict.fromkeys(r["cluster"] for r in runs)}
    by_alpha = [{**r, "x": alpha[r["cluster"]]} for r in runs]
    return {"alpha": {str(c): a for c, a in alpha.items()},
            "discovery": bootstrap(_samples(by_alpha, "x", "discovery", "discovery_censored"), "exponential_mean",
                                   log_x=True),
            "target": bootstrap(_samples(by_alpha, "x", "queries", "censored"), "km_median", log_x=True)}


def alpha_verdict(analysis: dict) -> list[str]:
    lines = []
    for what, fit in (("discovery", analysis["discovery"]), ("queries to target", analysis["target"])):
        if fit is None:
            lines.append(f"{what}: fewer than two α with a finite estimate; nothing to fit.")
            continue
        lo_hi = fit["slope_interval"]
        ok = lo_hi is not None and lo_hi[0] <= -0.5 and lo_hi[1] >= -1.5 and (lo_hi[1] < 0 or lo_hi[0] > 0)
        lines.append(f"outcome PG {what} against the base α: log-log slope **{fit['slope']:.2f}** {_interval(fit, False)}; "
                     f"theory −1: the interval overlaps [−1.5, −0.5] and excludes 0: **{'yes' if ok else 'no'}**.")
    return lines
