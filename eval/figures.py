"""The figures of the evaluation report, one function each, from plain Python data to a PNG.

Inputs are what the stages write: metrics.jsonl rows (``barrierlab.rundir.read_metrics``) and eval.json. The rate
experiments' figures are in ``eval.rate_figures``.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib
import matplotlib.colors
import matplotlib.ticker

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from eval.analysis import QUERIES, eval_rows, verifier_queries  # noqa: E402
from eval.passk import fmt_k  # noqa: E402

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


def _mantissa_label(value: float, _pos=None) -> str:
    """A minor log tick's label, 2×10⁴ style, on the 2× and 5× ticks only (all eight would crowd the axis)."""
    exponent = int(np.floor(np.log10(value) + 1e-9))
    mantissa = round(value / 10.0**exponent)
    return rf"$\mathdefault{{{mantissa}\times10^{{{exponent}}}}}$" if mantissa in (2, 5) else ""


def _decades(lo: float, hi: float, numticks: int = 8) -> np.ndarray:
    """The decades 10^e with lo ≤ 10^e ≤ hi, every one, or every s-th with e a multiple of s when there are more than
    ``numticks`` (so 10^0 stays among them)."""
    first, last = int(np.ceil(np.log10(lo) - 1e-9)), int(np.floor(np.log10(hi) + 1e-9))
    stride = max(1, -(-(last - first + 1) // numticks))
    return 10.0 ** np.array([e for e in range(first, last + 1) if e % stride == 0], dtype=float)


def _log_ticks(axis, view: tuple[float, float], numticks: int = 8) -> None:
    """Numbers to read on a log ``axis`` showing ``view``: up to ``numticks`` labelled decades and, where fewer than
    two decades fall within the view (a short run, a narrow range), the 2× and 5× ticks labelled too, so an axis
    never carries a single number."""
    lo, hi = sorted(view)
    if not (np.isfinite(lo) and np.isfinite(hi) and lo > 0):  # nothing drawn (an empty split): matplotlib's own ticks
        return
    decades = _decades(lo, hi, numticks)
    if len(decades) >= 2:
        axis.set_major_locator(matplotlib.ticker.FixedLocator(decades))
        axis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    else:
        axis.set_minor_locator(matplotlib.ticker.LogLocator(subs=np.arange(2, 10)))
        axis.set_minor_formatter(matplotlib.ticker.FuncFormatter(_mantissa_label))


def _log_axis(ax, which: str = "y") -> None:
    """Log scale on the ``which`` axis of ``ax``, its ticks labelled by ``_log_ticks``. Call it once the data and
    limits are in: it reads the view."""
    data = [np.asarray(getattr(line, f"get_{which}data")(), dtype=float) for line in ax.get_lines()]
    if not any(((d > 0) & np.isfinite(d)).any() for d in data):  # nothing to show (an empty split): stay linear
        return
    getattr(ax, f"set_{which}scale")("log")
    _log_ticks(getattr(ax, f"{which}axis"), getattr(ax, f"get_{which}lim")())


def _queries_axis(ax, queries) -> None:
    """Reward-query x-axis, symmetric-log: linear from 0 up to the decade of the first evaluation after 0 (half a
    decade wide) and logarithmic above, so the base model's point (0 queries, the step-0 evaluation) stays on it
    without empty decades before the first evaluation; ticks at 0 and at the decades from there (every other one
    past eight). ``queries``: the query counts drawn on it."""
    xs = np.asarray(list(queries), dtype=float)
    linthresh = 10.0 ** np.floor(np.log10(xs[xs > 0].min())) if (xs > 0).any() else 1.0
    ax.set_xscale("symlog", linthresh=linthresh, linscale=0.5)
    ax.set_xlim(left=0)
    top = max(ax.get_xlim()[1], 10 * linthresh)
    ax.xaxis.set_major_locator(matplotlib.ticker.FixedLocator([0.0, *_decades(linthresh, top)]))
    ax.set_xlabel(f"reward queries (0: the base model q0; log scale from {linthresh:g})")


def _series(rows: list[dict], key: str, x: str = QUERIES) -> tuple[np.ndarray, np.ndarray]:
    """(x, values) of ``key`` at the evaluations, the base model's (step 0, 0 queries) first; on the query axis a
    learned reward's labelling queries are included."""
    points = [(verifier_queries(r) if x == QUERIES else r[x], r[key]) for r in eval_rows(rows) if r.get(key) is not None]
    q, v = zip(*points, strict=True) if points else ((), ())
    return np.array(q, dtype=float), np.array(v, dtype=float)


# ----------------------------------------------------------------------------- 1. the barrier


def barrier_figure(arms: dict[str, list[dict]], path, tracked_alpha: dict[str, list[float]] | None = None, *,
                   threshold: float | None = None, left_out: dict[str, str] | None = None) -> Path:
    """Figure 1. ``arms``: name → metrics.jsonl rows of post-training runs from the same base.

    Top: mean likelihood of y* on off-support prompts and expected error err(p), against PG steps (the authors'
    Figure 1) and against reward queries (the resource the theory counts; the arms spend it at different rates),
    with the base model's value (the step-0 evaluation) dotted. Bottom, one panel per arm: the likelihood of
    each tracked prompt against reward queries, coloured by its base α (``tracked_alpha``: name → α of the
    tracked prompts, in the order of ``eval/tracked_likelihood``) on a log colour bar that marks the off-support
    ``threshold``. ``left_out``: checkpoint → why it has no curves here, written at the top of the figure.
    """
    names = list(arms)
    colour = colours(names)
    fig = plt.figure(figsize=(5.5 * max(2, len(names)), 13), layout="constrained")
    top, bottom = fig.subfigures(2, 1, height_ratios=[2, 1])
    if left_out:
        top.suptitle("Training curves left out: " + "; ".join(f"{n} ({why})" for n, why in left_out.items()),
                     color="firebrick", fontsize=10)
    top_axes = top.subplots(2, 2)
    panels = (("eval/offsupport_likelihood", "mean likelihood of y* on off-support prompts"),
              ("eval/expected_error", "expected error err(p)"))
    for axes_row, x in zip(top_axes, ("step", QUERIES), strict=True):
        for ax, (key, label) in zip(axes_row, panels, strict=True):
            drawn_x = []
            for name, rows in arms.items():
                xs, v = _series(rows, key, x)
                ax.plot(xs, np.maximum(v, TINY), "o-", ms=3, color=colour[name], label=name)
                drawn_x += xs.tolist()
            start = [r[key] for r in eval_rows(arms[names[0]])[:1] if r[QUERIES] == 0 and r.get(key) is not None]
            if start:
                ax.axhline(max(start[0], TINY), color="gray", ls=":", label="base model q0")
            if x == QUERIES:
                _queries_axis(ax, drawn_x)
            else:
                ax.set_xlabel("PG steps")
            ax.set_ylabel(label)
            ax.legend(fontsize=8)
        _log_axis(axes_row[0], "y")
        axes_row[1].set_ylim(-0.02, 1.02)
    top_axes[0, 0].set_title("The barrier: off-support likelihood against PG steps")
    top_axes[0, 1].set_title("Expected error on all eval prompts against PG steps")
    top_axes[1, 0].set_title("Off-support likelihood against reward queries")
    top_axes[1, 1].set_title("Expected error against reward queries")

    cmap = plt.get_cmap("viridis")
    alphas = [a for a in (tracked_alpha or {}).values() if a]
    # one colour scale for every panel, so a colour means the same base α on both sides; it reaches the threshold
    lowest = min([min(a) for a in alphas] + [threshold or 1.0, 0.1]) if alphas else None
    norm = matplotlib.colors.LogNorm(max(lowest, TINY), 1.0) if alphas else None
    axes = np.atleast_1d(bottom.subplots(1, len(names), sharey=True))
    for ax, name in zip(axes, names, strict=True):
        rows = [r for r in eval_rows(arms[name]) if r.get("eval/tracked_likelihood")]
        alpha = (tracked_alpha or {}).get(name)
        q = np.array([verifier_queries(r) for r in rows], dtype=float)
        if rows:
            traj = np.maximum(np.array([r["eval/tracked_likelihood"] for r in rows], dtype=float), TINY)
            for j in range(traj.shape[1]):
                c = cmap(norm(max(alpha[j], TINY))) if alpha is not None else "gray"
                ax.plot(q, traj[:, j], color=c, lw=1.2, alpha=0.85)
        _queries_axis(ax, q)
        ax.set_title(f"{name}: per-prompt likelihood of y*")
    for ax in axes:  # once every shared panel holds its data
        _log_axis(ax, "y")
    axes[0].set_ylabel("likelihood p(y*(x) | x)")
    if norm is not None:
        label = "base likelihood α(x)"
        bar = bottom.colorbar(plt.cm.ScalarMappable(norm=norm, cmap=cmap), ax=list(axes))
        _log_ticks(bar.ax.yaxis, (norm.vmin, norm.vmax))
        if threshold is not None:
            bar.ax.axhline(threshold, color="red", lw=2.5)
            label += f"\n(red line: off-support threshold {threshold:g}; below it, off-support)"
        bar.set_label(label)
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
    _log_axis(ax_q, "y")
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
        _no_prompts_note(ax, split)
    np.atleast_1d(axes)[0].set_ylabel("unbiased pass@k")
    return _save(fig, path)


def _no_prompts_note(ax, split: str) -> None:
    """A legend for a panel with curves; for one without (a base without on-support prompts), a note that says so
    rather than a blank panel (and no empty-legend warning)."""
    if ax.get_lines():
        ax.legend(fontsize=8)
    else:
        ax.text(0.5, 0.5, f"no {SPLIT_TITLES[split]} in this evaluation", transform=ax.transAxes, ha="center")


def exact_passk_figure(curves: dict[str, dict[str, list[float] | None]], ks: list[int], path, *,
                       sampled: dict[str, dict[str, list[float] | None]] | None = None, sampled_ks: list[int] | None = None,
                       crossings: dict[str, dict[str, float | None]] | None = None,
                       inverse_alpha: dict[str, float | None] | None = None,
                       splits: tuple[str, ...] = ("onsupport", "offsupport"),
                       log_splits: tuple[str, ...] = ("offsupport",)) -> Path:
    """The exact pass@k figure: ``1 − (1 − p(y*|x))^k``, the mean over each split's prompts, against k on a log axis
    from 1 to ``ks[-1]``: one panel per split, then the ``log_splits`` again on a log y-axis (where RL wins at small
    k by orders of magnitude that a linear axis flattens). ``curves``: name → split → curve at ``ks`` (eval.json's
    ``exact_pass_at_k``); ``sampled``: name → split → the unbiased estimates at ``sampled_ks`` (k ≤ n), hollow
    points that should sit on the exact curves; ``crossings``: split → name → k at which the base overtakes that
    checkpoint (a dashed line and a point, labelled); ``inverse_alpha``: split → 1/ᾱ, ᾱ the mean base α (dotted)."""
    colour = colours(list(curves))
    panels = [(split, False) for split in splits] + [(split, True) for split in log_splits]
    fig, axes = plt.subplots(1, len(panels), figsize=(6.5 * len(panels), 4.8))
    for ax, (split, log_y) in zip(np.atleast_1d(axes), panels, strict=True):
        shown = [c[split] for c in curves.values() if c.get(split) is not None]
        for name, by_split in curves.items():
            if by_split.get(split) is None:
                continue
            ax.plot(ks, by_split[split], "-", lw=2, color=colour[name], label=f"{name} (exact)")
            points = (sampled or {}).get(name, {}).get(split)
            if points is not None:
                ax.plot(sampled_ks, points, "o", mfc="none", ms=5, color=colour[name],
                        label=f"{name} (sampled, k ≤ n = {sampled_ks[-1]})")
        if (inverse_alpha or {}).get(split) is not None:
            ax.axvline(inverse_alpha[split], color="gray", ls=":", label=f"1/ᾱ = {fmt_k(inverse_alpha[split])} (ᾱ: mean base α)")
        ax.set_xlim(1, ks[-1])
        _log_axis(ax, "x")
        if log_y and shown:
            ax.set_ylim(max(min(v for c in shown for v in c if v > 0) / 3, 1e-30), 2)
            _log_axis(ax, "y")
        else:
            ax.set_ylim(-0.02, 1.02)
        marked = [(n, k) for n, k in ((crossings or {}).get(split) or {}).items() if k is not None]
        for i, (name, k_cross) in enumerate(marked):
            y = np.interp(np.log(k_cross), np.log(ks), curves["base"][split])  # the crossing, on the base's curve
            ax.axvline(k_cross, color=colour[name], ls="--", lw=1)
            ax.plot([k_cross], [y], "D", ms=6, color=colour[name])
            # labelled where the curves are not: below and right of a high point (the base has risen past the
            # other), above and left of a low one; one label a height further per crossing, so close ones stay apart
            low = ax.transAxes.inverted().transform(ax.transData.transform((k_cross, y)))[1] < 0.4
            ax.annotate(f"base overtakes {name}\nat k = {fmt_k(k_cross)}", (k_cross, y),
                        xytext=(-8, 20 + 26 * i) if low else (8, -30 - 26 * i), ha="right" if low else "left",
                        textcoords="offset points", fontsize=8, color=colour[name],
                        bbox={"facecolor": "white", "edgecolor": "none", "alpha": 0.8})
        ax.set_xlabel("k (samples drawn per prompt)")
        ax.set_ylabel("pass@k = 1 − (1 − p(y*|x))^k, mean over prompts")
        ax.set_title(f"Exact pass@k on {SPLIT_TITLES[split]}" + (" (log scale)" if log_y else ""))
        _no_prompts_note(ax, split)
    return _save(fig, path)
