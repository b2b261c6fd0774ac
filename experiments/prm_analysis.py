"""``make prm``'s analysis: what each PRM's labels hold on off-support clusters, the table of arms (PRM quality and
final likelihoods over seeds), the figure (off-support likelihood against verifier queries, labelling included, and
against PG steps) and the report's verdicts, all from the data."""

from __future__ import annotations

import statistics
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from barrierlab.metrics import fmt_value  # noqa: E402
from eval.analysis import eval_rows, verifier_queries  # noqa: E402

OFF, ON = "eval/offsupport_likelihood", "eval/onsupport_likelihood"
BREAKS = 0.1  # an arm breaks the barrier when every seed ends with an off-support likelihood at least this (the base: ~1e-5)


def offsupport_clusters(support: dict) -> list[int]:
    """The clusters most of whose eval prompts are off-support (the base's support.json)."""
    return [c["cluster"] for c in support["clusters"] if c["offsupport_fraction"] >= 0.5]


def label_stats(prm_dir: Path, off_clusters: list[int]) -> dict:
    """What a PRM's labels cost and hold: positive labels (≥ 0.5) on the off-support clusters and on the others."""
    labels = torch.load(prm_dir / "data" / "labels.pt", weights_only=True)
    off = torch.isin(labels["clusters"], torch.tensor(off_clusters, dtype=torch.long))
    positive = labels["labels"] >= 0.5
    return {"queries": labels["queries"], "responses": int(labels["labels"].shape[0]),
            "offsupport_labels": int(positive[off].numel()), "offsupport_positive": int(positive[off].sum()),
            "onsupport_labels": int(positive[~off].numel()), "onsupport_positive": int(positive[~off].sum())}


def final(rows: list[dict], key: str) -> float | None:
    evals = [r for r in eval_rows(rows) if r.get(key) is not None]
    return evals[-1][key] if evals else None


def _spread(values: list[float]) -> dict:
    return {"mean": statistics.fmean(values), "min": min(values), "max": max(values), "seeds": values}


def summarise(runs: dict[str, dict[int, list[dict]]], quality: dict[str, dict], labels: dict[str, dict]) -> list[dict]:
    """One row per arm: its verifier queries (labelling included), PRM calls, base and final likelihoods over seeds,
    whether it breaks the barrier, and (a PRM's) its labels and prefix-verdict quality."""
    table = []
    for arm, by_seed in runs.items():
        rows = list(by_seed.values())
        done = [r[-1] for r in rows]
        row = {"arm": arm, "seeds": len(rows),
               "verifier_queries": _spread([d["done/reward_queries"] + d.get("done/label_queries", 0) for d in done]),
               "steps": _spread([d["done/steps"] for d in done]),
               "base_offsupport": final(rows[0][:1], OFF),
               "offsupport": _spread([final(r, OFF) for r in rows]), "onsupport": _spread([final(r, ON) for r in rows])}
        calls = [next((x["train/prm_calls"] for x in reversed(r) if "train/prm_calls" in x), None) for r in rows]
        row["prm_calls"] = _spread(calls) if None not in calls else None
        row["breaks"] = row["offsupport"]["min"] >= BREAKS
        if arm in quality:
            q = quality[arm]["quality"]
            row["quality"] = {split: q[split] for split in ("onsupport", "offsupport")}
            row["label_source"], row["clusters"] = quality[arm]["label_source"], quality[arm]["clusters"]
            row["labels"] = labels[arm]
        table.append(row)
    return table


def figure(runs: dict[str, dict[int, list[dict]]], labels: dict[str, dict], budget: int, path: Path) -> None:
    """Off-support likelihood against verifier queries and against PG steps, every seed. A PRM arm asks the verifier
    nothing after its labels, so on the query axis it is its seeds' final values at its labelling cost (each PRM
    shifted a little to the right, to tell them apart); its course is on the step axis."""
    fig, axes = plt.subplots(1, 2, figsize=(13, 5), layout="constrained")
    prm_index = {arm: i for i, arm in enumerate(a for a in runs if a in labels)}
    for i, (arm, by_seed) in enumerate(runs.items()):
        colour = f"C{i}"
        label = f"{arm} (labels: {labels[arm]['queries']:,} queries)" if arm in labels else arm
        for j, rows in enumerate(by_seed.values()):
            evals = [r for r in eval_rows(rows) if r.get(OFF) is not None]
            v = [max(r[OFF], 1e-12) for r in evals]
            if arm in labels:
                x = verifier_queries(evals[-1]) + 0.015 * budget * (prm_index[arm] + 1)
                axes[0].plot([x], [v[-1]], "o", ms=5, color=colour, label=None if j else label + ", final")
            else:
                axes[0].plot([verifier_queries(r) for r in evals], v, "-", color=colour, alpha=0.7, lw=1,
                             label=None if j else label)
            axes[1].plot([r["step"] for r in evals], v, "-", color=colour, alpha=0.7, lw=1, label=None if j else label)
    axes[0].axvline(budget, color="gray", ls=":", lw=1, label=f"budget {budget:,}")
    axes[0].set_xlabel("verifier queries (a PRM's labelling included)")
    axes[1].set_xlabel("PG steps")
    for ax in axes:
        ax.set_yscale("log")
        ax.axhline(BREAKS, color="firebrick", ls="--", lw=0.8, label=f"barrier broken: ≥ {BREAKS} in every seed")
        ax.set_ylabel("mean likelihood of y* on off-support prompts")
        ax.legend(fontsize=7)
    axes[0].set_title("Off-support likelihood against verifier queries")
    axes[1].set_title("Against PG steps (a PRM arm: the exact process arm's steps)")
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _range(s: dict | None, count: bool = False) -> str:
    if s is None:
        return "–"
    f = (lambda v: f"{v:,.0f}") if count else fmt_value  # noqa: E731
    return f"{f(s['mean'])} [{f(s['min'])}, {f(s['max'])}]"


def right_when_accepted(accept_correct: float | None, accept_wrong: float | None, k: int) -> float | None:
    """About how often token-wise search (Algorithm 2) takes the right token off-support: there the base is about
    uniform over the k symbols, so the candidate mixture draws the right one with probability about 1/k, and the first
    accepted candidate is right with probability a_c / (a_c + (k − 1) a_w), given the PRM accepts a right prefix with
    probability a_c and a wrong one with a_w (rates averaged over the measured prefixes: an approximation)."""
    if accept_correct is None or accept_wrong is None or accept_correct + accept_wrong == 0:
        return None
    return accept_correct / (accept_correct + (k - 1) * accept_wrong)


def verdicts(table: list[dict], k: int, N: int) -> list[str]:
    """Sentences from the data: which arms break the barrier, and what each PRM's labels and verdicts held off-support."""
    lines = []
    for row in table:
        verdict = "breaks the barrier" if row["breaks"] else (
            "lifts off-support prompts partly" if row["offsupport"]["mean"] >= 10 * max(row["base_offsupport"], 1e-30)
            else "does not break the barrier")
        text = (f"**{row['arm']}** {verdict}: off-support likelihood {fmt_value(row['base_offsupport'])} → "
                f"{_range(row['offsupport'])} (mean [min, max] over {row['seeds']} seeds; breaking it: every seed ≥ "
                f"{BREAKS}), {row['verifier_queries']['max']:,} verifier queries at most.")
        if "labels" in row:
            lab, q = row["labels"], row["quality"]["offsupport"]
            text += (f" Its {lab['responses']:,} labelled responses held {lab['offsupport_positive']:,} positive labels "
                     f"out of {lab['offsupport_labels']:,} on off-support clusters ({lab['onsupport_positive']:,} of "
                     f"{lab['onsupport_labels']:,} on on-support ones); on off-support prefixes its verdicts have AUC "
                     f"{fmt_value(q['auc'])} and accuracy {fmt_value(q['accuracy'])}, accepting "
                     f"{fmt_value(q['accept_correct'])} of the correct prefixes and {fmt_value(q['accept_wrong'])} of "
                     f"the wrong ones (correct share {fmt_value(q['correct_share'])}).")
            right = right_when_accepted(q["accept_correct"], q["accept_wrong"], k)
            if right is not None:
                text += (f" So Algorithm 2 takes the right token off-support about {fmt_value(right)} of the times it "
                         f"accepts one (1/k = {1 / k:.3g} at random), a whole y* about {fmt_value(right ** N)} of the "
                         "times (≈ a_c / (a_c + (k − 1) a_w) from its acceptance rates a_c and a_w, the candidate "
                         "mixture being about uniform off-support).")
        lines.append(text)
    prms = [r for r in table if "labels" in r]
    no_positive = [r["arm"] for r in prms if r["labels"]["offsupport_positive"] == 0]
    if no_positive:
        broke = [a for a in no_positive if next(r for r in prms if r["arm"] == a)["breaks"]]
        lines.append(f"PRMs whose labels held no positive off-support prefix: {', '.join(no_positive)}; of these, "
                     f"{', '.join(broke) if broke else 'none'} broke the barrier.")
    with_positive = [r["arm"] for r in prms if r["labels"]["offsupport_positive"] > 0]
    if with_positive:
        broke = [a for a in with_positive if next(r for r in prms if r["arm"] == a)["breaks"]]
        lines.append(f"PRMs whose labels held positive off-support prefixes: {', '.join(with_positive)}; of these, "
                     f"{', '.join(broke) if broke else 'none'} broke the barrier.")
    return lines


def arm_table(table: list[dict]) -> list[str]:
    lines = ["| arm | labels | verifier queries | PG steps | PRM calls | prefix AUC / accuracy on | off | on-support likelihood "
             "| off-support likelihood |", "|---|---|---|---|---|---|---|---|---|"]
    for r in table:
        if "labels" in r:
            where = "all clusters" if r["clusters"] is None else f"clusters {r['clusters']}"
            labels = f"{r['label_source']}, {where}"
            on, off = (f"{fmt_value(r['quality'][s]['auc'])} / {fmt_value(r['quality'][s]['accuracy'])}"
                       for s in ("onsupport", "offsupport"))
        else:
            labels, on, off = "(exact verifier)", "–", "–"
        lines.append(f"| {r['arm']} | {labels} | {_range(r['verifier_queries'], True)} | {_range(r['steps'], True)} | "
                     f"{_range(r['prm_calls'], True)} | {on} | {off} | {_range(r['onsupport'])} | {_range(r['offsupport'])} |")
    return lines


def report(cfg, table: list[dict], support: dict, wall_s: float) -> str:
    base = Path(cfg.out_dir) / "base"
    clusters = "; ".join(f"cluster {c['cluster']} {c['coverage']} (measured α {c['alpha_geomean']:.3g})"
                         for c in support["clusters"])
    lines = ["# make prm: which learned PRMs break the base model barrier", "",
             f"Base `{base}`: {clusters}; off-support when base α < {support['offsupport_threshold']:g}. Every arm "
             f"spends at most {cfg.budget:,} verifier queries, labelling included: the exact arms in post-training, "
             "each PRM on its labels (its post-training asks the verifier nothing and takes as many Algorithm 2 steps "
             f"as the exact process arm of its seed). Seeds {cfg.seeds}. This run of the driver took {wall_s:.0f} s "
             "(runs it reused cost nothing here).", "", "## Verdicts", ""]
    lines += [f"- {v}" for v in verdicts(table, support["k"], support["N"])]
    lines += ["", "## Table", "", "Mean [min, max] over seeds; PRM quality from `eval/eval.json` (every prefix of 4 "
              "base draws and of y* per eval prompt; verdict: probability > 0.5; per cluster there too).", "",
              *arm_table(table), "", "## Figure", "", "![off-support likelihood against verifier queries](prm.png)", "",
              "<details><summary>Configs</summary>", "", f"`{cfg.pretrain_config}`, "
              + ", ".join(f"`{c}`" for c in cfg.prm_configs.values())
              + f", `{cfg.outcome_config}`, `{cfg.process_config}`, `{cfg.eval_config}`; overrides: PRMs {cfg.prm_args}, "
              f"post-training {cfg.posttrain_args}.", "", "</details>"]
    return "\n".join(lines) + "\n"
