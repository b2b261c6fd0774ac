"""The rate estimates: censored estimators against closed forms, bootstrap coverage on synthetic experiments, and the
experiments' verdicts on synthetic results whose rates are known."""

from __future__ import annotations

import math

import numpy as np
import pytest

from eval.rates import (
    alpha_analysis,
    alpha_verdict,
    bootstrap,
    exponential_mean,
    km_median,
    ratio_interval,
    scaling_analysis,
    scaling_verdict,
)


def test_exponential_mean_by_hand_and_with_censoring():
    assert exponential_mean([(10, False), (30, False), (20, False)]) == 20  # no censoring: the sample mean
    # two events, total time at risk 10 + 30 + 50 + 50 = 140: the MLE of the mean is 140 / 2
    assert exponential_mean([(10, False), (30, False), (50, True), (50, True)]) == 70
    assert exponential_mean([(50, True), (50, True)]) == math.inf  # no event: only a lower bound


def test_exponential_mean_is_consistent_under_censoring():
    rng = np.random.default_rng(0)
    times = rng.exponential(100.0, 40_000)
    budget = 120.0  # 30% censored
    sample = [(min(t, budget), bool(t > budget)) for t in times]
    naive = np.mean([t for t, c in sample if not c])  # dropping the censored runs: biased low (about 46)
    assert exponential_mean(sample) == pytest.approx(100.0, rel=0.02) and naive < 50
    geometric = rng.geometric(1 / 500, 20_000)  # discovery queries: a geometric waiting time, mean 1/p
    assert exponential_mean([(min(t, 800), bool(t > 800)) for t in geometric]) == pytest.approx(500, rel=0.03)


def test_km_median_by_hand():
    assert km_median([(1, False), (2, False), (3, False), (4, False)]) == 2  # S: 3/4, 1/2: the first ≤ ½
    # 1 (event, 5 at risk: S = 4/5), 2 (censored), 3 (event, 3 at risk: S = 8/15), 4 (event, 2 at risk: S = 4/15)
    assert km_median([(1, False), (2, True), (3, False), (4, False), (5, True)]) == 4
    assert km_median([(1, False), (9, True), (9, True)]) == math.inf  # S stays at 2/3
    rng = np.random.default_rng(1)
    times = rng.exponential(100.0, 20_000)
    assert km_median([(min(t, 150), bool(t > 150)) for t in times]) == pytest.approx(100 * math.log(2), rel=0.03)


def synthetic(rng, Ns, seeds, rate, budget):
    """Exponential waiting times of mean rate^N per seed, censored at the budget."""
    return {n: [(min(t, budget), bool(t > budget)) for t in rng.exponential(float(rate) ** n, seeds)] for n in Ns}


def test_bootstrap_intervals_cover_the_true_rate():
    """On synthetic experiments with a known growth (×4 per unit N, 5 seeds, censoring at the top), the 95% interval
    of the fitted slope covers log 4 in about 95% of experiments (allowing for 150 experiments' binomial noise). The
    budget, 4 times the largest mean, censors 2% of the top seeds, as make scaling's does Algorithm 1's."""
    rng = np.random.default_rng(2)
    Ns = [4, 5, 6, 7, 8, 9]
    covered = 0
    for i in range(150):
        fit = bootstrap(synthetic(rng, Ns, 5, 4, budget=4 * 4**9), "exponential_mean", log_x=False, resamples=300,
                        seed=i)
        lo, hi = fit["slope_interval"]
        covered += lo <= math.log(4) <= hi
    assert 0.85 <= covered / 150 <= 1.0


def test_bootstrap_fit_and_bands_on_exact_data():
    samples = {n: [(10.0 * 4**n, False)] * 3 for n in (2, 3, 4)}  # every seed the same: no spread
    fit = bootstrap(samples, "km_median", log_x=False, resamples=50)
    assert fit["slope"] == pytest.approx(math.log(4)) and fit["slope_interval"] == pytest.approx((math.log(4),) * 2)
    assert fit["band"][0] == pytest.approx((160.0, 160.0)) and fit["unfittable"] == 0
    mostly_censored = {**samples, 5: [(99.0, True)] * 3}
    fit = bootstrap(mostly_censored, "km_median", log_x=False, resamples=50)
    assert fit["slope_interval"] is None and fit["unfittable"] == 1.0 and not fit["all_finite"]


def test_ratio_interval():
    ratio, (lo, hi) = ratio_interval([(1000.0, False)] * 5, [(10.0, False)] * 5, "km_median", resamples=50)
    assert ratio == 100 and lo == hi == 100


def test_scaling_verdicts_on_synthetic_results():
    """Outcome ×4 per N with its interval inside [2, 8], process ∝ N, Algorithm 2 ∝ N·k: each verdict says yes."""
    rng = np.random.default_rng(3)
    runs = []
    for n in (4, 5, 6, 7, 8, 9):
        for seed in range(5):
            t = rng.exponential(4.0**n)
            runs.append({"arm": "outcome", "N": n, "seed": seed, "reward": "outcome", "behaviour": "on_policy",
                         "queries": t + 50, "censored": False, "discovery": t, "discovery_censored": False,
                         "base_alpha": 4.0**-n})
            for arm, behaviour, q in (("process", "on_policy", 100 * n), ("alg2", "token_best_of_m", 60 * n * 4)):
                q *= rng.uniform(0.9, 1.1)
                runs.append({"arm": arm, "N": n, "seed": seed, "reward": "process", "behaviour": behaviour,
                             "queries": q, "censored": False, "discovery": q / 2, "discovery_censored": False,
                             "base_alpha": 4.0**-n})
    results = {"k": 4, "runs": runs}
    analysis = scaling_analysis(results)
    lines = scaling_verdict(results, analysis)
    assert sum("**yes**" in line for line in lines) == len(lines) == 8, lines
    assert 3 < math.exp(analysis["arms"]["outcome"]["discovery"]["slope"]) < 5.5
    assert analysis["largest_N"]["ratio"] > 100
    runs = [dict(r, queries=50.0 * 1.5**r["N"]) if r["arm"] == "outcome" else r for r in runs]  # ×1.5 per N: too slow
    lines = scaling_verdict({"k": 4, "runs": runs}, scaling_analysis({"k": 4, "runs": runs}))
    assert "**outcome** queries to target: ×**1.5 per unit N**" in lines[1] and lines[1].endswith("**no**.")


def test_alpha_slope_on_synthetic_results():
    """Discovery ~ Exp(mean 1/α) and queries to target 3/α: both log-log slopes near −1, verdicts yes."""
    rng = np.random.default_rng(4)
    runs = [{"cluster": c, "seed": s, "alpha": a * rng.uniform(0.95, 1.05), "queries": 3 / a, "censored": False,
             "discovery": rng.exponential(1 / a), "discovery_censored": False}
            for c, a in enumerate((1e-2, 3e-3, 1e-3, 3e-4, 1e-4)) for s in range(5)]
    analysis = alpha_analysis({"runs": runs})
    assert analysis["target"]["slope"] == pytest.approx(-1, abs=0.03)
    assert -1.3 < analysis["discovery"]["slope"] < -0.7
    assert all(line.endswith("**yes**.") for line in alpha_verdict(analysis))
    flat = alpha_analysis({"runs": [dict(r, queries=500.0) for r in runs]})  # no α dependence: slope 0, verdict no
    assert alpha_verdict(flat)[1].endswith("**no**.")
