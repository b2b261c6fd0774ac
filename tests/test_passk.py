"""pass@k: the unbiased estimator from samples, the exact value from the likelihood, and the k where the base overtakes."""

from __future__ import annotations

import itertools
import math
from decimal import Decimal, getcontext
from fractions import Fraction
from statistics import NormalDist

import numpy as np
import pytest
import torch

from barrierlab.loading import load_dataset_dir, load_model_dir, prompt_tensors
from barrierlab.policy import target_stats
from eval.passk import crossing_k, default_ks, exact_pass_at_k, fmt_k, log_grid, mean_exact, pass_at_k

# ----------------------------------------------------------------------------- the unbiased estimator


@pytest.mark.parametrize("n", range(1, 8))
def test_pass_at_k_matches_brute_force_over_all_k_subsets(n):
    for c, k in itertools.product(range(n + 1), range(1, n + 1)):
        samples = [1] * c + [0] * (n - c)
        subsets = list(itertools.combinations(samples, k))
        expected = sum(any(s) for s in subsets) / len(subsets)
        assert pass_at_k([c], n, k)[0] == pytest.approx(expected, abs=1e-12), (n, c, k)


def test_pass_at_k_known_values_and_large_n():
    assert pass_at_k([2], 5, 2)[0] == pytest.approx(0.7)  # 1 − C(3,2)/C(5,2) = 1 − 3/10
    assert pass_at_k([0, 3, 256], 256, 1).tolist() == pytest.approx([0.0, 3 / 256, 1.0])
    assert pass_at_k([250], 256, 7)[0] == 1.0  # fewer than k wrong samples: every k-subset holds a correct one
    counts = np.array([0, 1, 5, 40, 128, 255])
    for k in (1, 2, 16, 100, 256):  # n = 256: the binomials are huge, the product form is not
        exact = [float(1 - Fraction(math.comb(256 - c, k), math.comb(256, k))) for c in counts]
        assert pass_at_k(counts, 256, k) == pytest.approx(exact, rel=1e-9, abs=1e-15)
    curve = [pass_at_k([3], 256, k)[0] for k in default_ks(256)]
    assert curve == sorted(curve) and not str(pass_at_k([0], 10, 3)[0]).startswith("-")
    with pytest.raises(ValueError, match="k must be in \\[1, n = 4\\], got 5"):
        pass_at_k([1], 4, 5)
    with pytest.raises(ValueError, match="correct counts must be in \\[0, n = 4\\]"):
        pass_at_k([5], 4, 1)


def test_default_ks():
    assert default_ks(256) == [1, 2, 4, 8, 16, 32, 64, 128, 256]
    assert default_ks(12) == [1, 2, 4, 8, 12] and default_ks(1) == [1]


# ----------------------------------------------------------------------------- exact pass@k


def test_exact_pass_at_k_against_brute_force_over_the_tiny_models_responses(tiny_base):
    """Every one of the k^N = 27 responses of the tiny base scored by the exact likelihood eval uses; pass@K is
    then the probability that K i.i.d. draws hold y*, summed over all 27^K outcomes."""
    model, _, info = load_model_dir(tiny_base / "model")
    k, N = info["task"]["k"], info["task"]["N"]
    prompts, targets = prompt_tensors(load_dataset_dir(tiny_base / "data" / "eval_prompts", ["prompt_ids", "target_ids"]))
    responses = torch.tensor(list(itertools.product(range(k), repeat=N)))  # (k^N, N)
    for i in (0, 20, 47):  # one prompt of each cluster
        log_q, _ = target_stats(model, prompts[i].expand(len(responses), -1), responses, k)
        q = log_q.double().exp().numpy()
        assert q.sum() == pytest.approx(1, abs=1e-5)  # the exact likelihoods are a distribution over responses
        q /= q.sum()  # to float64 rounding, so the comparison below is of the formula, not of float32 sums
        star = int(np.flatnonzero((responses == targets[i]).all(1))[0])
        for K in (1, 2, 3):
            hit = sum(math.prod(q[j] for j in draw) for draw in itertools.product(range(len(q)), repeat=K) if star in draw)
            assert exact_pass_at_k([math.log(q[star])], [K])[0, 0] == pytest.approx(hit, rel=1e-10), (i, K)


def test_exact_pass_at_k_is_stable_for_tiny_p_and_huge_k():
    getcontext().prec = 60
    p, k = Decimal("1e-15"), 10**12
    want = float(1 - (1 - p) ** k)  # 9.995001666e-4, to 60 digits
    got = exact_pass_at_k([math.log(1e-15)], [1e12])[0, 0]
    assert got == pytest.approx(want, rel=1e-12)
    kp = 1e-3  # the series k·p − (k·p)²/2 + (k·p)³/6 − … (k ≫ 1: the k(k−1) of the binomial is k² to 1e-12)
    assert got == pytest.approx(kp - kp**2 / 2 + kp**3 / 6 - kp**4 / 24, rel=1e-12)
    assert abs((1 - (1 - 1e-15) ** 1e12) / want - 1) > 5e-4  # the plain form rounds 1 − p: off by 8e-4
    # where p underflows, from log p alone: k·p = exp(log k + log p) (log(1 − p) = −p to within p)
    assert exact_pass_at_k([-720.0], [1e12])[0, 0] == pytest.approx(math.exp(-720 + math.log(1e12)), rel=1e-13)
    assert exact_pass_at_k([-2000.0], [1e12])[0, 0] == 0.0
    assert exact_pass_at_k([0.0, math.log(0.5)], [1, 2, 3]).tolist() == [[1.0, 0.5], [1.0, 0.75], [1.0, 0.875]]
    curve = exact_pass_at_k([math.log(1e-7)], log_grid(1e12, 10))[:, 0]
    assert np.all(np.diff(curve) >= 0) and curve[-1] == 1.0 and curve[0] == pytest.approx(1e-7, rel=1e-9)


def _binomial_pmf(n: int, p) -> np.ndarray:
    """P(c correct of n) for c = 0 … n, one row per likelihood in ``p`` (p < 1)."""
    c = np.arange(n + 1)
    log_comb = np.array([math.lgamma(n + 1) - math.lgamma(j + 1) - math.lgamma(n - j + 1) for j in c])
    p = np.asarray(p, dtype=np.float64)[..., None]
    return np.exp(log_comb + c * np.log(p) + (n - c) * np.log1p(-p))


def test_exact_pass_at_k_is_the_expectation_of_the_unbiased_estimator():
    """No sampling: averaging 1 − C(n−c,k)/C(n,k) over c ~ Bin(n, p) gives 1 − (1 − p)^k exactly."""
    for n, p in itertools.product((16, 64), (1e-3, 0.05, 0.3, 0.9)):
        pmf = _binomial_pmf(n, p)
        for k in (1, 2, 7, n):
            mean = pmf @ pass_at_k(np.arange(n + 1), n, k)
            assert mean == pytest.approx(exact_pass_at_k([math.log(p)], [k])[0, 0], rel=1e-10), (n, p, k)


def sampled_interval(p: np.ndarray, n: int, k: int, level: float, checks: int = 1) -> tuple[float, float, float]:
    """``(exact, lo, hi)``: the exact mean pass@k over prompts of likelihoods ``p``, and the binomial interval in
    which the sampled unbiased estimate (c_i ~ Bin(n, p_i) per prompt) falls: the exact mean ± z sd, sd from the
    estimator's exact variance under the binomial, z two-sided at ``level`` shared by ``checks`` checks (Bonferroni).
    At k = 1 it is the Wilson (score) interval of the pooled share of correct samples, centred on the exact value."""
    values = pass_at_k(np.arange(n + 1), n, k)
    pmf = _binomial_pmf(n, p)  # (P, n + 1)
    mean = pmf @ values
    var = (pmf * (values - mean[:, None]) ** 2).sum()
    z = NormalDist().inv_cdf(1 - (1 - level) / (2 * checks))
    exact, half = mean.mean(), z * math.sqrt(var) / len(p)
    return exact, exact - half, exact + half


def test_the_sampled_estimate_lies_in_its_binomial_interval_and_a_biased_one_does_not():
    rng = np.random.default_rng(0)
    p = 10 ** rng.uniform(-3, 0, 400)  # likelihoods from 1e-3 to 1
    n, ks = 256, default_ks(256)
    correct = rng.binomial(n, p)
    for k in ks:
        exact, lo, hi = sampled_interval(p, n, k, 0.99, checks=len(ks))
        assert exact == pytest.approx(mean_exact(np.log(p), np.ones(len(p), bool), [k])[0], rel=1e-9)
        assert lo <= pass_at_k(correct, n, k).mean() <= hi, k
    # the interval is tight enough to tell: the plug-in 1 − (1 − c/n)^k, biased low on rare successes, lies below it
    exact, lo, hi = sampled_interval(p, n, n, 0.99)
    assert (1 - (1 - correct / n) ** n).mean() < lo


def test_log_grid_and_the_k_where_the_base_overtakes():
    grid = log_grid(1e12, 10)
    assert grid[:8] == [1, 2, 3, 4, 5, 6, 8, 10] and grid[-1] == 10**12 and len(grid) == 118
    assert grid == sorted(set(grid)) and log_grid(1, 10) == [1]
    everywhere = np.ones(100, bool)
    base = np.full(100, math.log(1e-7))
    # 5 prompts learnt for sure, 95 left at 1e-30: the base overtakes where 1 − (1 − 1e-7)^k = 0.05
    outcome = np.array([-1e-12] * 5 + [math.log(1e-30)] * 95)
    k = crossing_k(base, outcome, everywhere, grid)
    assert k == pytest.approx(math.log(0.95) / math.log1p(-1e-7), rel=1e-9)  # 512,933
    assert mean_exact(base, everywhere, [k])[0] == pytest.approx(mean_exact(outcome, everywhere, [k])[0], rel=1e-8)
    assert crossing_k(outcome, base, everywhere, grid) is None  # ahead from k = 1: nothing to overtake
    assert crossing_k(np.full(100, math.log(1e-20)), outcome, everywhere, grid) is None  # 1e-8 at k = 1e12 < 0.05
    assert crossing_k(base, outcome, np.zeros(100, bool), grid) is None and mean_exact(base, np.zeros(100, bool), [1]) is None
    assert [fmt_k(x) for x in (1.83, 181.2, 512933, 1e12)] == ["1.83", "181", "5.1e5", "1.0e12"]
