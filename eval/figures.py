"""The five figures of the evaluation report, one function each, from plain Python data to a PNG.

Inputs are what the stages write: metrics.jsonl rows (``barrierlab.run.read_metrics``), eval.json, and
the JSON of the scaling experiments::

    {"k": 8, "target_likelihood": 0.5,
     "runs": [{"arm": "outcome", "reward": "outcome", "N": 4, "queries": 81920, "censored": false}, ...]}
    {"target_likelihood": 0.5, "runs": [{"cluster": 1, "alpha": 0.3, "queries": 4096, "censored": false}, ...]}

``censored`` marks a run that hit its query budget before the target: its ``queries`` is a lower bound.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from eval.analysis import QUERIES, alpha_fit, eval_rows, fittable, scaling_fit  # noqa: E402

TINY = 1e-300  # likelihoods that underflowed to 0 are drawn here, so a log axis keeps them
SPLIT_TITLES = {"all": "all prompts", "onsupport": "on-support prompts", "offsupport": "off-support prompts"}


def colours(names: list[str]) -> dict[str, str]:
    """The base model in black, every other model its own colour, the same in every figure."""
    others = [n for n in names if n != "base"]
    return {n: "black" if n == "base" else f"C{others.index(n) % 10}" for n in names}


def _save(fig, path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def _log_queries_axis(ax) -> None:
    """Log x-axis of reward queries, labelled at the decades; when no decade falls within the data (a short run),
    at the minor ticks instead, so the axis always carries numbers (both at once crowd a narrow panel)."""
    ax.set_xscale("log")
    lo, hi = np.log10(np.maximum(ax.dataLim.intervalx, 1e-300))
    if np.isfinite([lo, hi]).all() and np.floor(hi) >= np.ceil(lo):
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())


def _series(rows: list[dict], key: str, x: str = QUERIES) -> tuple[np.ndarray, np.ndarray]:
    """(x, values) of ``key`` at the evaluations; against reward queries (a log axis), those after the first query."""
    points = [(r[x], r[key]) for r in eval_rows(rows) if (x != QUERIES or r[QUERIES] > 0) and r.get(key) is not None]
    q, v = zip(*points, strict=True) if points else ((), ())
    return np.array(q, dtype=float), np.array(v, dtype=float)


# ----------------------------------------------------------------------------- 1. the barrier


def barrier_figure(arms: dict[str, list[dict]], path, tracked_alpha: dict[str, list[float]] | None = None) -> Path:
    """Figure 1. ``arms``: name → metrics.jsonl rows of post-training runs from the same base.

    Top: mean likelihood of y* on off-support prompts and expected error err(p), against PG steps (the authors'
    Figure 1) and against reward queries (the resource the theory counts; the arms spend it at different rates),
    with the base model's value (the step-0 evaluation) dotted. Bottom, one panel per arm: the likelihood of
    each tracked prompt against reward queries, coloured by its base α (``tracked_alpha``: name → α of the
    tracked prompts, in the order of ``eval/tracked_likelihood``).
    """
    names = list(arms)
    colour = colours(names)
    fig = plt.figure(figsize=(5.5 * max(2, len(names)), 13))
    top, bottom = fig.subfigures(2, 1, height_ratios=[2, 1])
    top_axes = top.subplots(2, 2)
    panels = (("eval/offsupport_likelihood", "mean likelihood of y* on off-support prompts"),
              ("eval/expected_error", "expected error err(p)"))
    for axes_row, (x, x_label) in zip(top_axes, (("step", "PG steps"), (QUERIES, "reward queries")), strict=True):
        for ax, (key, label) in zip(axes_row, panels, strict=True):
            for name, rows in arms.items():
                xs, v = _series(rows, key, x)
                ax.plot(xs, np.maximum(v, TINY), "o-", ms=3, color=colour[name], label=name)
            start = [r[key] for r in eval_rows(arms[names[0]])[:1] if r[QUERIES] == 0 and r.get(key) is not None]
            if start:
                ax.axhline(max(start[0], TINY), color="gray", ls=":", label="base model q0")
            if x == QUERIES:
                _log_queries_axis(ax)
            ax.set_xlabel(x_label)
            ax.set_ylabel(label)
            ax.legend(fontsize=8)
        axes_row[0].set_yscale("log")
        axes_row[1].set_ylim(-0.02, 1.02)
    top_axes[0, 0].set_title("The barrier: off-support likelihood")
    top_axes[0, 1].set_title("Expected error on all eval prompts")

    cmap = plt.get_cmap("viridis")
    alphas = [a for a in (tracked_alpha or {}).values() if a]
    # one colour scale for every panel, so a colour means the same base α on both sides
    norm = plt.Normalize(min(np.log10(np.maximum(np.min([min(a) for a in alphas]), TINY)), -1.0), 0.0) if alphas else None
    axes = np.atleast_1d(bottom.subplots(1, len(names), sharey=True))
    for ax, name in zip(axes, names, strict=True):
        rows = [r for r in eval_rows(arms[name]) if r[QUERIES] > 0 and r.get("eval/tracked_likelihood")]
        alpha = (tracked_alpha or {}).get(name)
        if rows:
            q = np.array([r[QUERIES] for r in rows], dtype=float)
            traj = np.maximum(np.array([r["eval/tracked_likelihood"] for r in rows], dtype=float), TINY)
            log_a = np.log10(np.maximum(alpha, TINY)) if alpha is not None else None
            for j in range(traj.shape[1]):
                c = cmap(norm(log_a[j])) if log_a is not None else "gray"
                ax.plot(q, traj[:, j], color=c, lw=1.2, alpha=0.85)
        _log_queries_axis(ax)
        ax.set_yscale("log")
        ax.set_xlabel("reward queries")
        ax.set_title(f"{name}: per-prompt likelihood of y*")
    axes[0].set_ylabel("likelihood p(y*(x) | x)")
    if norm is not None:
        bottom.colorbar(plt.cm.ScalarMappable(norm=norm, cmap=cmap), ax=list(axes),
                        label="log10 base likelihood α(x)")
    return _save(fig, path)


# ----------------------------------------------------------------------------- 2. coverage


def coverage_figure(models: dict[str, dict], eps: list[float], path, *, k: int | None = None, N: int | None = None,
                    threshold: float | None = None) -> Path:
    """Figure 2. ``models``: name → {"log10_likelihood": per-prompt log10 p(y*|x), "LQ": Q(ε), "token_LQ": Q^TL(ε)}
    (per_prompt.csv and eval.json). Left: CDF of log10 likelihood (the base model's is log10 α). Right: the
    likelihood quantile Q(ε) (solid) and token-level quantile Q^TL(ε) (dashed) against ε."""
    colour = colours(list(models))
    fig, (ax_cdf, ax_q) = plt.subplots(1, 2, figsize=(12, 4.8))
    for name, m in models.items():
        values = np.sort(np.asarray(m["log10_likelihood"], dtype=float))
        ax_cdf.step(values, np.arange(1, len(values) + 1) / len(values), where="post", color=colour[name], label=name)
        ax_q.plot(eps, np.maximum(m["LQ"], TINY), "o-", color=colour[name], label=f"{name}: Q(ε)")
        ax_q.plot(eps, np.maximum(m["token_LQ"], TINY), "s--", color=colour[name], label=f"{name}: Q^TL(ε)")
    if k is not None and N is not None:
        ax_cdf.axvline(-N * np.log10(k), color="k", ls=":", label="uniform k^-N")
        ax_q.axhline(float(k) ** -N, color="k", ls=":", label="uniform k^-N")
        ax_q.axhline(1 / k, color="gray", ls="-.", label="uniform token 1/k")
    if threshold is not None:
        ax_cdf.axvline(np.log10(threshold), color="red", lw=1, label="off-support threshold on α")
    ax_cdf.set_xlabel("log10 likelihood of y*(x)  (base model: log10 α(x))")
    ax_cdf.set_ylabel("fraction of prompts ≤ x")
    ax_cdf.set_title("CDF of the likelihood of y* over prompts")
    ax_cdf.legend(fontsize=8)
    ax_q.set_yscale("log")
    ax_q.set_xlabel("ε (fraction of worst prompts excluded)")
    ax_q.set_ylabel("likelihood")
    ax_q.set_title("Likelihood quantile Q(ε) and token-level Q^TL(ε)")
    ax_q.legend(fontsize=7, ncol=2)
    return _save(fig, path)


# ----------------------------------------------------------------------------- 3. pass@k


def passk_figure(passk: dict[str, dict[str, list[float] | None]], ks: list[int], path,
                 splits: tuple[str, ...] = ("onsupport", "offsupport")) -> Path:
    """Figure 3. ``passk``: model name → split → unbiased pass@k at each of ``ks`` (eval.json's
    ``checkpoints[name]["pass_at_k"]``); one panel per split, null splits left out."""
    colour = colours(list(passk))
    fig, axes = plt.subplots(1, len(splits), figsize=(6 * len(splits), 4.5), sharey=True)
    for ax, split in zip(np.atleast_1d(axes), splits, strict=True):
        for name, by_split in passk.items():
            if by_split.get(split) is not None:
                ax.plot(ks, by_split[split], "o-", color=colour[name], label=name)
        ax.set_xscale("log", base=2)
        ax.set_xticks(ks, [str(k) for k in ks])
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_ylim(-0.02, 1.02)
        ax.set_xlabel("k (samples drawn per prompt)")
        ax.set_title(f"pass@k on {SPLIT_TITLES[split]}")
        if ax.get_lines():
            ax.legend(fontsize=8)
        else:  # e.g. a base without on-support prompts: say so rather than leave a blank panel
            ax.text(0.5, 0.5, f"no {SPLIT_TITLES[split]} in this evaluation", transform=ax.transAxes, ha="center")
    np.atleast_1d(axes)[0].set_ylabel("unbiased pass@k")
    return _save(fig, path)


# ----------------------------------------------------------------------------- 4. scaling in N


def scaling_figure(runs: list[dict], path, *, k: int, target: float | None = None) -> Path:
    """Figure 4. Reward queries to reach the target likelihood against N, per arm (log y). Censored runs are
    hollow up-triangles at the budget they spent (a lower bound) and stay out of the fits. Dotted: the
    theory's shapes ∝ k^N and ∝ N, both through the cheapest run at the smallest N."""
    arms = list(dict.fromkeys(r["arm"] for r in runs))
    colour = colours(arms)
    fig, ax = plt.subplots(figsize=(7.5, 5))
    for arm in arms:
        mine = [r for r in runs if r["arm"] == arm]
        done = fittable(mine)
        cens = [r for r in mine if r["censored"]]
        ax.plot([r["N"] for r in done], [r["queries"] for r in done], "o", color=colour[arm], label=f"{arm}")
        if cens:
            ax.plot([r["N"] for r in cens], [r["queries"] for r in cens], "^", mfc="none", ms=9, color=colour[arm],
                    label=f"{arm}: censored (budget hit, lower bound)")
        fitted = scaling_fit(runs, arm)
        if fitted is not None:
            kind, (a, b) = fitted
            grid = np.linspace(min(r["N"] for r in mine), max(r["N"] for r in mine), 100)
            curve = np.exp(a + b * (grid if kind == "exponential" else np.log(grid)))
            shape = f"{np.exp(b):.2g}^N" if kind == "exponential" else f"N^{b:.2g}"
            ax.plot(grid, curve, "-", color=colour[arm], lw=1.5, label=f"{arm} fit ∝ {shape}")
    n_all = np.array(sorted({r["N"] for r in runs}), dtype=float)
    anchor_n = n_all[0]
    anchor_q = min((r["queries"] for r in runs if r["N"] == anchor_n and r["queries"] > 0), default=1)
    grid = np.linspace(n_all[0], n_all[-1], 100)
    ax.plot(grid, anchor_q * float(k) ** (grid - anchor_n), ":", color="gray", label=f"theory ∝ k^N (k = {k})")
    ax.plot(grid, anchor_q * grid / anchor_n, "--", color="gray", label="theory ∝ N")
    ax.set_yscale("log")
    ax.set_xlabel("response length N")
    ax.set_ylabel("reward queries to reach the target")
    what = f"likelihood {target:g}" if target is not None else "the target likelihood"
    ax.set_title(f"Scaling in N: reward queries to reach {what}")
    ax.legend(fontsize=8)
    return _save(fig, path)


# ----------------------------------------------------------------------------- 5. α dependence


def alpha_figure(runs: list[dict], path, *, target: float | None = None) -> Path:
    """Figure 5. Reward queries outcome PG needs against the base α of on-support clusters (log-log), with
    the fitted slope and the theory's slope −1 through the runs' geometric mean; censored runs hollow."""
    fig, ax = plt.subplots(figsize=(6.5, 5))
    done = fittable(runs)
    cens = [r for r in runs if r["censored"]]
    ax.plot([r["alpha"] for r in done], [r["queries"] for r in done], "o", color="C0", label="outcome PG")
    if cens:
        ax.plot([r["alpha"] for r in cens], [r["queries"] for r in cens], "^", mfc="none", ms=9, color="C0",
                label="censored (budget hit, lower bound)")
    shown = done + cens  # a run at 0 queries (its base already met the target) has no place on log axes
    for r in shown:
        if "cluster" in r:
            ax.annotate(f"c{r['cluster']}", (r["alpha"], r["queries"]), textcoords="offset points", xytext=(4, 4), fontsize=8)
    if shown:
        grid = np.geomspace(min(r["alpha"] for r in shown), max(r["alpha"] for r in shown), 100)
        fitted = alpha_fit(runs)
        if fitted is not None:
            a, slope = fitted
            ax.plot(grid, np.exp(a) * grid**slope, "-", color="C0", label=f"fit: slope {slope:.2f}")
        log_c = np.mean([np.log(r["queries"]) + np.log(r["alpha"]) for r in done or shown])
        ax.plot(grid, np.exp(log_c) / grid, "--", color="gray", label="theory: ∝ 1/α (slope −1)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("base likelihood α of the cluster (geometric mean over its eval prompts)")
    ax.set_ylabel("reward queries to reach the target")
    what = f"likelihood {target:g}" if target is not None else "the target likelihood"
    ax.set_title(f"α dependence of outcome PG: queries to reach {what}")
    ax.legend(fontsize=8)
    return _save(fig, path)
