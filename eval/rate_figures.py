"""The rate experiments' figures: discovery queries and queries to target, against N (``make scaling``) and against
the base α (``make alpha``), with every seed, the censoring-aware estimate per x and its 95% band, the fit, and the
theory's reference curves. Inputs: results.json's runs and ``eval.rates``' analysis of them."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from eval.figures import _log_axis, _save, colours, plt

PANELS = (("discovery", "discovery_censored", "discovery: queries until y* is first sampled",
           "censored exponential MLE of the mean"),
          ("queries", "censored", "queries until the mean likelihood of y* reaches {target:g}", "Kaplan–Meier median"))


def _seeds(ax, runs: list[dict], x: str, value: str, censored: str, colour: str, offset: float, log_x: bool,
           label: str) -> None:
    """Every seed: filled dots, censored ones as hollow up-triangles at the queries they spent (a lower bound)."""
    shift = (lambda v: v * math.exp(offset)) if log_x else (lambda v: v + offset)
    for flag, marker, fill in ((False, "o", colour), (True, "^", "none")):
        pts = [(shift(r[x]), r[value]) for r in runs if bool(r[censored]) == flag and r[value] > 0]
        if pts:
            ax.plot(*zip(*pts), marker, color=colour, mfc=fill, ms=4 if not flag else 7, alpha=0.55, lw=0, label=label)
            label = None


def _estimate(ax, fit: dict | None, colour: str, kind: str) -> None:
    """The estimate per x with its 95% band, and the fitted line with its rate in the legend: ``kind`` exponential
    (log q against N), power (log q against log N) or slope (log q against log α)."""
    if fit is None:
        return
    xs, est = np.array(fit["x"], dtype=float), np.array(fit["estimate"], dtype=float)
    ok = np.isfinite(est) & (est > 0)
    band = np.array(fit["band"], dtype=float)
    hi = np.where(np.isfinite(band[:, 1]), band[:, 1], np.nan)
    ax.fill_between(xs, band[:, 0], hi, color=colour, alpha=0.15, lw=0)
    ax.plot(xs[ok], est[ok], "s-", color=colour, ms=5, lw=1.2)
    a, b = fit["fit"]
    log_x = kind != "exponential"
    grid = np.geomspace(xs.min(), xs.max(), 100) if log_x else np.linspace(xs.min(), xs.max(), 100)
    rate = {"exponential": f"×{math.exp(b):.2f} per N", "power": f"∝ N^{b:.2f}", "slope": f"slope {b:.2f}"}[kind]
    ax.plot(grid, np.exp(a + b * (np.log(grid) if log_x else grid)), "--", color=colour, lw=1, label=f"fit {rate}")


def scaling_figure(results: dict, analysis: dict, path) -> Path:
    """Two panels against N (log y): discovery queries and queries to the target, per arm. Dotted black: 1/α, the
    mean of a geometric waiting time at the base's exact mean α of the trained prompts (≈ k^N); grey: Algorithm 1's
    2/(α + k^-N) (half its draws from the base, half uniform); dash-dotted grey: ∝ N·k, Algorithm 2's rate, its
    constant fitted to that arm's estimates."""
    runs, k = results["runs"], analysis["k"]
    arms = list(analysis["arms"])
    colour = colours(arms)
    Ns = np.array(sorted({r["N"] for r in runs}), dtype=float)
    alpha = np.array([analysis["base_alpha"][n] for n in sorted(analysis["base_alpha"])], dtype=float)
    fig, axes = plt.subplots(1, 2, figsize=(13, 5.2))
    for ax, (value, censored, title, estimator) in zip(axes, PANELS):
        for i, arm in enumerate(arms):
            a = analysis["arms"][arm]
            key = "discovery" if value == "discovery" else "target"
            _seeds(ax, [r for r in runs if r["arm"] == arm], "N", value, censored, colour[arm],
                   0.06 * (i - (len(arms) - 1) / 2), log_x=False, label=arm)
            _estimate(ax, a[key], colour[arm], a["shape"])
            if a["behaviour"] == "token_best_of_m" and value == "queries" and a["target"] is not None:
                est = np.array(a["target"]["estimate"], dtype=float)
                scale = math.exp(np.mean(np.log(est) - np.log(Ns * k)))
                ax.plot(Ns, scale * Ns * k, "-.", color="grey", lw=1.2, label="∝ N·k (Algorithm 2's rate)")
            if a["behaviour"] == "best_of_m" and value == "discovery":
                ax.plot(Ns, 2 / (alpha + float(k) ** -Ns), ":", color="grey", lw=1.5, label="2/(α + k^-N) (Algorithm 1)")
        ax.plot(Ns, 1 / alpha, ":", color="black", lw=1.5, label=f"1/α of the base (≈ k^N, k = {k})")
        _log_axis(ax, "y")
        ax.set_xticks(Ns)
        ax.set_xlabel("response length N")
        ax.set_ylabel("reward queries")
        ax.set_title(f"{title.format(target=results['target_likelihood'])}\n(squares: {estimator}, band: 95% bootstrap)",
                     fontsize=10)
        ax.legend(fontsize=7, loc="upper left")
    fig.suptitle("The base model barrier in N: dots are seeds, hollow triangles censored at the budget", fontsize=11)
    return _save(fig, path)


def alpha_figure(results: dict, analysis: dict, path) -> Path:
    """Two panels against the base's mean α of each trained cluster (log-log): discovery queries and queries to the
    target. Dotted black: 1/α itself (discovery's mean) and, on the target panel, slope −1 through the estimates."""
    runs = [{**r, "x": float(analysis["alpha"][str(r["cluster"])])} for r in results["runs"]]
    grid = np.geomspace(min(r["x"] for r in runs), max(r["x"] for r in runs), 100)
    fig, axes = plt.subplots(1, 2, figsize=(12, 5))
    for ax, (value, censored, title, estimator) in zip(axes, PANELS):
        fit = analysis["discovery" if value == "discovery" else "target"]
        _seeds(ax, runs, "x", value, censored, "C0", 0.0, log_x=True, label="outcome PG, seeds")
        _estimate(ax, fit, "C0", "slope")
        if value == "discovery":
            ax.plot(grid, 1 / grid, ":", color="black", lw=1.5, label="1/α (a geometric waiting time's mean)")
        elif fit is not None:
            est = np.array(fit["estimate"], dtype=float)
            x = np.array(fit["x"], dtype=float)
            scale = math.exp(np.mean(np.log(est) + np.log(x)))
            ax.plot(grid, scale / grid, ":", color="black", lw=1.5, label="theory: slope −1")
        ax.set_xscale("log")
        _log_axis(ax, "x")
        _log_axis(ax, "y")
        ax.set_xlabel("base likelihood α of the trained cluster (mean over its eval prompts)")
        ax.set_ylabel("reward queries")
        ax.set_title(f"{title.format(target=results['target_likelihood'])}\n(squares: {estimator}, band: 95% bootstrap)",
                     fontsize=10)
        ax.legend(fontsize=8)
    fig.suptitle("The role of α on-support: outcome PG, dots are seeds, hollow triangles censored", fontsize=11)
    return _save(fig, path)
