"""``support.json`` and ``support.png``: the designed versus the measured base likelihood, per cluster."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from barrierlab.metrics import quantile_curve  # noqa: E402
from pretrain.profile import designed_token_coverage  # noqa: E402


def support_summary(eval_set, profile, k: int, N: int, eps_grid: list[float], threshold: float) -> dict:
    alpha = torch.tensor(eval_set["base_alpha"], dtype=torch.float64)
    token_min = torch.tensor(eval_set["base_token_min_prob"], dtype=torch.float64)
    clusters = torch.tensor(eval_set["cluster"])
    designed = eval_set["designed_alpha"]
    rows = []
    for c, cp in enumerate(profile):
        mask = clusters == c
        a = alpha[mask].clamp_min(1e-300)
        rows.append(
            {
                "cluster": c,
                "coverage": cp.label(),
                "weight": cp.weight,
                "designed_alpha": designed[int(mask.nonzero()[0])],
                "designed_token_coverage": designed_token_coverage(cp, k),
                "alpha_geomean": math.exp(a.log().mean().item()),
                "token_geomean": math.exp(a.log().mean().item() / N),
                "alpha_median": a.median().item(),
                "alpha_q10": torch.quantile(a, 0.1).item(),
                "token_min_prob_median": token_min[mask].median().item(),
                "offsupport_fraction": (a < threshold).double().mean().item(),
                "prompts": int(mask.sum()),
            }
        )
    return {
        "k": k,
        "N": N,
        "uniform_alpha": float(k) ** -N,
        "offsupport_threshold": threshold,
        "clusters": rows,
        "eps": eps_grid,
        "LQ": quantile_curve(alpha, eps_grid),
        "token_LQ": quantile_curve(token_min, eps_grid),
    }


def plot_support(summary: dict, eval_set, path: Path) -> None:
    alpha = torch.tensor(eval_set["base_alpha"], dtype=torch.float64).clamp_min(1e-300)
    clusters = torch.tensor(eval_set["cluster"])
    fig, (ax_h, ax_q) = plt.subplots(1, 2, figsize=(12, 4.5))
    log_a = alpha.log10()
    bins = torch.linspace(float(log_a.min()) - 0.5, 0.5, 50).tolist()
    cmap = plt.get_cmap("viridis")
    C = len(summary["clusters"])
    for row in summary["clusters"]:
        c = row["cluster"]
        colour = cmap(c / max(C - 1, 1))
        ax_h.hist(log_a[clusters == c].tolist(), bins=bins, alpha=0.6, color=colour, label=f"c{c} {row['coverage']}")
        if math.isfinite(row["designed_alpha"]):
            ax_h.axvline(math.log10(row["designed_alpha"]), color=colour, ls="--", lw=1)
    ax_h.axvline(math.log10(summary["uniform_alpha"]), color="k", ls=":", lw=1.5, label="uniform $k^{-N}$")
    ax_h.axvline(math.log10(summary["offsupport_threshold"]), color="red", lw=1, label="off-support threshold")
    ax_h.set_xlabel(r"$\log_{10}\alpha(x)$ = base log-likelihood of $y^*(x)$ (dashed: designed)")
    ax_h.set_ylabel("held-out prompts")
    ax_h.set_title("Base likelihood α by cluster")
    ax_h.legend(fontsize=7, ncol=2)
    ax_q.semilogy(summary["eps"], summary["LQ"], "o-", label=r"likelihood quantile $Q(\varepsilon)$")
    ax_q.semilogy(summary["eps"], summary["token_LQ"], "s-", label=r"token-level $Q^{TL}(\varepsilon)$")
    ax_q.axhline(summary["uniform_alpha"], color="k", ls=":", label="uniform $k^{-N}$")
    ax_q.axhline(1 / summary["k"], color="gray", ls="--", label="uniform token $1/k$")
    ax_q.set_xlabel(r"$\varepsilon$ (fraction of worst prompts excluded)")
    ax_q.set_ylabel("likelihood")
    ax_q.set_title("Base model quantiles: LQ vs token-level LQ")
    ax_q.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def control_check(summary: dict, seq_factor: float = 3.0, token_factor: float = 1.15) -> list[str]:
    """Where the measured base likelihood misses its design, for every designed cluster (``absent`` has none).
    Where the design fixes a per-token coverage (``token(q)``: 1 - q + q/k; ``sequence(0)``: 1/k) the per-token
    geometric mean α_geomean^(1/N) must lie within ``token_factor`` of it, a tolerance that compounds to
    token_factor^N on α, as the design does (1.15 ≈ 3^(1/8): ×3 on α at N = 8); ``exact`` and ``sequence(p > 0)``,
    mixtures over whole responses, need α_geomean within ``seq_factor`` of the design. Returns one line per miss
    (empty: the control holds)."""
    misses = []
    for row in summary["clusters"]:
        design, measured, label = row["designed_alpha"], row["alpha_geomean"], f"cluster {row['cluster']} {row['coverage']}"
        per_token = row["designed_token_coverage"]
        if per_token is not None:
            token = measured ** (1 / summary["N"])
            if not per_token / token_factor <= token <= per_token * token_factor:
                misses.append(f"{label}: measured per-token likelihood {token:.3g} (α {measured:.3g}) is not within "
                              f"×{token_factor:g} of the design's {per_token:.3g} per token (α {design:.3g})")
        elif math.isfinite(design) and not design / seq_factor <= measured <= design * seq_factor:
            misses.append(f"{label}: measured α {measured:.3g} is not within ×{seq_factor:g} of the design {design:.3g}")
    return misses
