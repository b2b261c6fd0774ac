"""``report.md``: the figures, the headline numbers, the resolved configs and what was observed, in one file.

``build_report(run_dir)`` reads what ``python -m eval`` wrote into ``run_dir`` (eval.json, per_prompt.csv,
config.yaml). Checkpoints that live in a post-training run folder (beside its metrics.jsonl) become the
arms of the barrier figure and the training table (``eval.arms``). The sentences are generated from the numbers.
"""

from __future__ import annotations

import csv
import json
from collections import defaultdict
from pathlib import Path

from barrierlab.errors import UserError
from barrierlab.metrics import fmt_value
from barrierlab.rundir import atomic_write_text
from eval import figures, rate_figures
from eval.arms import Arm, arm_table, barrier_sentences, tracked_alpha, training_runs
from eval.passk import fmt_k
from eval.prm_quality import prm_table
from eval.rates import METHOD, alpha_analysis, alpha_verdict, scaling_analysis, scaling_verdict


def _best(at: dict[str, list[float]], i: int) -> str:
    """The checkpoint(s) with the highest pass@k at index ``i``; all of them when tied (common at k = n)."""
    top = max(v[i] for v in at.values())
    names = [n for n, v in at.items() if v[i] == top]
    return names[0] if len(names) == 1 else " and ".join(names) + " (tied)"


def _passk_sentences(results: dict) -> list[str]:
    ks, lines = results["pass_k"], []
    for split in ("onsupport", "offsupport"):
        at = {name: c["pass_at_k"][split] for name, c in results["checkpoints"].items() if c["pass_at_k"][split]}
        if not at:
            continue
        values = ", ".join(f"{n} {fmt_value(v[0])} → {fmt_value(v[-1])}" for n, v in at.items())
        lines.append(f"pass@k on {figures.SPLIT_TITLES[split]} (k = 1 → {ks[-1]}): {values}; "
                     f"best at k = 1: {_best(at, 0)}, at k = {ks[-1]}: {_best(at, -1)}.")
    return lines


def _design(base: Path) -> dict[int, dict]:
    """Cluster → its design (coverage mode, designed α) from the base run's support.json; empty without one."""
    support = base / "support.json"
    return {c["cluster"]: c for c in json.loads(support.read_text())["clusters"]} if support.exists() else {}


def _exact_at(run_dir: Path) -> dict[tuple[str, str, str], list[float]]:
    """passk_exact.csv as (checkpoint, split, cluster) → exact pass@k along eval.json's ``exact_pass_k``."""
    curves: dict[tuple[str, str, str], list[float]] = defaultdict(list)
    with open(run_dir / "passk_exact.csv", newline="") as f:
        for row in csv.DictReader(f):
            curves[row["checkpoint"], row["split"], row["cluster"]].append(float(row["pass_at_k"]))
    return curves


def _overtakes(k_cross: float | None, base: list[float], other: list[float], k_max: int) -> str:
    """Where the base's exact pass@k overtakes another model's, in words: the k, or why there is none."""
    if k_cross is not None:
        return f"k = {fmt_k(k_cross)}"
    return "ahead from k = 1" if base[0] > other[0] else f"not by k = {fmt_k(k_max)}"


def _inverse_alpha(prompts: dict, split: str | None = None, cluster: int | None = None) -> tuple[float, float] | None:
    """``(ᾱ, 1/ᾱ)``: the mean base α over a split's or a cluster's prompts, and the k near which the base's pass@k
    rises (pass@k ≈ kᾱ while kα ≪ 1); None for no prompts."""
    alphas = [a for a, s, c in zip(prompts["base_alpha"], prompts["split"], prompts["cluster"], strict=True)
              if split in (None, s) and cluster in (None, c)]
    mean = sum(alphas) / len(alphas) if alphas else 0.0
    return (mean, 1 / mean) if mean > 0 else None


def _exact_sentences(results: dict, exact: dict, prompts: dict) -> list[str]:
    """The exact pass@k on each split: where the base overtakes each other checkpoint (Yue et al.'s crossing)."""
    ks, crossings, lines = results["exact_pass_k"], results["crossing_k"]["split"], []
    for split in ("onsupport", "offsupport"):
        at = {n: exact[n, split, "all"] for n in results["checkpoints"] if (n, split, "all") in exact}
        alpha = _inverse_alpha(prompts, split)
        if "base" not in at or alpha is None:
            continue
        where = "; ".join(f"{n}: {_overtakes(crossings[split][n], at['base'], v, ks[-1])}" for n, v in at.items() if n != "base")
        values = ", ".join(f"{n} {fmt_value(v[0])} → {fmt_value(v[-1])}" for n, v in at.items())
        lines.append(f"Exact pass@k on {figures.SPLIT_TITLES[split]} (mean base α ᾱ = {fmt_value(alpha[0])}, "
                     f"1/ᾱ = {fmt_k(alpha[1])}), k = 1 → {fmt_k(ks[-1])}: {values}." + (f" The base overtakes {where}." if where else ""))
    return lines


def _exact_cluster_table(results: dict, exact: dict, prompts: dict, base: Path) -> list[str]:
    """Per cluster: its designed and mean base α, 1/ᾱ, and the k at which the base overtakes each other checkpoint
    (the crossing of the split's curves is a mixture of these)."""
    others = [n for n in results["checkpoints"] if n != "base"]
    if "base" not in results["checkpoints"] or not others:
        return []
    design = _design(base)
    ks, crossings = results["exact_pass_k"], results["crossing_k"]["cluster"]
    lines = ["| cluster | coverage | designed α | mean base α ᾱ | 1/ᾱ | " + " | ".join(f"base overtakes {n} at" for n in others)
             + " |", "|---" * (5 + len(others)) + "|"]
    for cluster in sorted(set(prompts["cluster"])):
        alpha, d, c = _inverse_alpha(prompts, cluster=cluster), design.get(cluster, {}), str(cluster)
        cells = [_overtakes(crossings[c][n], exact["base", "all", c], exact[n, "all", c], ks[-1]) for n in others]
        mean = "n/a | n/a" if alpha is None else f"{fmt_value(alpha[0])} | {fmt_k(alpha[1])}"
        lines.append(f"| {cluster} | {d.get('coverage', 'n/a')} | {fmt_value(d.get('designed_alpha'))} | {mean} | "
                     + " | ".join(cells) + " |")
    return lines


def _coverage_sentence(results: dict) -> str:
    eps = results["eps"]
    j = eps.index(0.1) if 0.1 in eps else len(eps) // 2
    parts = [f"{n}: Q = {fmt_value(c['LQ'][j])}, Q^TL = {fmt_value(c['token_LQ'][j])}" for n, c in results["checkpoints"].items()]
    n_off, n_all = results["prompts"]["offsupport"], results["prompts"]["all"]
    return (f"{n_off} of {n_all} eval prompts are off-support (base α < {results['offsupport_threshold']:g}). "
            f"At ε = {eps[j]:g}: " + "; ".join(parts) + f" (uniform policy: Q = k^-N = {fmt_value(results['uniform_alpha'])}, "
            f"Q^TL = 1/k = {fmt_value(1 / results['k'])}).")


def _per_prompt(run_dir: Path) -> dict[str, dict[str, list]]:
    """per_prompt.csv as checkpoint → column → values (in prompt order)."""
    columns: dict[str, dict[str, list]] = defaultdict(lambda: defaultdict(list))
    with open(run_dir / "per_prompt.csv", newline="") as f:
        for row in csv.DictReader(f):
            for key in ("likelihood", "log10_likelihood", "base_alpha"):
                columns[row["checkpoint"]][key].append(float(row[key]))
            columns[row["checkpoint"]]["cluster"].append(int(row["cluster"]))
            columns[row["checkpoint"]]["split"].append(row["split"])
    return columns


def _cluster_table(per_prompt: dict, base: Path) -> list[str]:
    """Mean likelihood of y* per cluster and checkpoint, and in brackets over the cluster's off-support prompts:
    where each split's mean comes from (a few outliers of an on-support cluster can set the off-support mean)."""
    design = _design(base)
    names = list(per_prompt)
    first = per_prompt[names[0]]  # cluster and split are the same columns for every checkpoint
    lines = ["| cluster | coverage | designed α | prompts (off-support) | " + " | ".join(names) + " |",
             "|---" * (4 + len(names)) + "|"]
    for cluster in sorted(set(first["cluster"])):
        rows = [i for i, c in enumerate(first["cluster"]) if c == cluster]
        off = [i for i in rows if first["split"][i] == "offsupport"]
        cells = []
        for name in names:
            likelihood = per_prompt[name]["likelihood"]
            cell = fmt_value(sum(likelihood[i] for i in rows) / len(rows))
            cells.append(cell + (f" ({fmt_value(sum(likelihood[i] for i in off) / len(off))})" if off else ""))
        d = design.get(cluster, {})
        lines.append(f"| {cluster} | {d.get('coverage', 'n/a')} | {fmt_value(d.get('designed_alpha'))} | "
                     f"{len(rows)} ({len(off)}) | " + " | ".join(cells) + " |")
    return lines


# what each experiment's results.json must hold: keys at the top, and keys of every run
EXPERIMENT_SCHEMAS = {
    "scaling": (("k", "target_likelihood"), ("arm", "reward", "behaviour", "N", "base_alpha", "queries", "censored",
                                             "discovery", "discovery_censored")),
    "alpha": (("target_likelihood",), ("cluster", "alpha", "queries", "censored", "discovery", "discovery_censored"))}


def load_experiment(path, experiment: str) -> dict:
    """The results.json of ``python -m experiments.sweep`` for ``experiment`` (scaling or alpha), or one line saying
    what is wrong with it (the eval stage's key ``<experiment>_results`` named)."""
    top, keys = EXPERIMENT_SCHEMAS[experiment]
    key = f"{experiment}_results"
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise UserError(f"{key}: cannot read '{path}' as JSON ({type(err).__name__}); pass the results.json of "
                        f"make {experiment}") from None
    runs = data.get("runs") if isinstance(data, dict) else None
    if not runs or not all(isinstance(r, dict) and all(k in r for k in keys) for r in runs) or any(t not in data for t in top):
        needs = ", ".join(f"'{t}'" for t in (*top, "runs"))
        raise UserError(f"{key}: '{path}' is not an experiment's results: expected {needs}, and keys {', '.join(keys)} in "
                        f"every run (the results.json of make {experiment})")
    return data


def _config_block(title: str, path: Path, shown: Path | None = None) -> str:
    """The config file ``path`` as a collapsed block, named ``shown`` (default: ``path``)."""
    text = path.read_text() if path.exists() else "(not found)\n"
    return f"<details><summary>{title}: <code>{shown or path}</code></summary>\n\n```yaml\n{text}```\n</details>\n"


def _make_figures(fig_dir: Path, results: dict, per_prompt: dict, arms: list[Arm], left_out: dict[str, str],
                  scaling: tuple[dict, dict] | None, alpha: tuple[dict, dict] | None) -> dict[str, str]:
    """Draw every figure the inputs allow (``scaling``, ``alpha``: an experiment's results and their analysis);
    title → file name."""
    made = {}
    prompts = next(iter(per_prompt.values()))  # base α, split and cluster: the same columns for every checkpoint
    if arms:
        tracked = {a.name: tracked_alpha(a, prompts["base_alpha"]) for a in arms}
        figures.barrier_figure({a.name: a.rows for a in arms}, fig_dir / "barrier.png",
                               {n: t for n, t in tracked.items() if t is not None},
                               threshold=results["offsupport_threshold"], left_out=left_out)
        made["Barrier: off-support likelihood and expected error against reward queries"] = "barrier.png"
    ckpts = results["checkpoints"]
    figures.coverage_figure(
        {n: {"log10_likelihood": per_prompt[n]["log10_likelihood"], "LQ": c["LQ"], "token_LQ": c["token_LQ"]}
         for n, c in ckpts.items()},
        results["eps"], fig_dir / "coverage.png", k=results["k"], N=results["N"],
        threshold=results["offsupport_threshold"])
    made["Coverage: CDF of log10 likelihood, Q(ε) and Q^TL(ε)"] = "coverage.png"
    figures.passk_figure({n: c["pass_at_k"] for n, c in ckpts.items()}, results["pass_k"], fig_dir / "passk.png")
    made["pass@k, on- and off-support"] = "passk.png"
    figures.exact_passk_figure(
        {n: c["exact_pass_at_k"] for n, c in ckpts.items()}, results["exact_pass_k"], fig_dir / "passk_exact.png",
        sampled={n: c["pass_at_k"] for n, c in ckpts.items()}, sampled_ks=results["pass_k"],
        crossings=results["crossing_k"]["split"],
        inverse_alpha={s: (_inverse_alpha(prompts, s) or (None, None))[1] for s in ("onsupport", "offsupport")})
    made["Exact pass@k to k = 1e12: where the base overtakes"] = "passk_exact.png"
    if scaling:
        rate_figures.scaling_figure(*scaling, fig_dir / "scaling.png")
        made["Scaling in N: discovery queries and queries to reach the target"] = "scaling.png"
    if alpha:
        rate_figures.alpha_figure(*alpha, fig_dir / "alpha.png")
        made["α dependence of outcome PG"] = "alpha.png"
    for stale in {"barrier.png", "scaling.png", "alpha.png"} - set(made.values()):  # an earlier evaluation's, here
        (fig_dir / stale).unlink(missing_ok=True)
    return made


def _checkpoint_table(results: dict) -> list[str]:
    ks = results["pass_k"]
    lines = [f"| checkpoint | on-support likelihood | off-support likelihood | expected error | "
             f"pass@{ks[0]} on / off | pass@{ks[-1]} on / off | eval time (s) |", "|---|---|---|---|---|---|---|"]
    for name, c in results["checkpoints"].items():
        on, off = c["pass_at_k"]["onsupport"] or [None], c["pass_at_k"]["offsupport"] or [None]
        lines.append(f"| {name} | {fmt_value(c['likelihood']['onsupport'])} | {fmt_value(c['likelihood']['offsupport'])} | "
                     f"{fmt_value(c['expected_error']['all'])} | {fmt_value(on[0])} / {fmt_value(off[0])} | "
                     f"{fmt_value(on[-1])} / {fmt_value(off[-1])} | {c['seconds']:.3g} |")
    return lines


def build_report(run_dir, *, scaling=None, alpha=None, shown_as=None) -> Path:
    """Write ``run_dir/report.md`` and ``run_dir/figures/*.png`` from the eval stage's outputs in ``run_dir``.
    ``shown_as``: the folder the report names as its own, where they will be (default: ``run_dir``).

    ``scaling`` and ``alpha``: optional JSON files of the N-scaling and α-dependence experiments (required keys in
    ``EXPERIMENT_SCHEMAS``: the results.json of make scaling and make alpha). Returns the report's path.
    """
    run_dir = Path(run_dir)
    if not (run_dir / "eval.json").exists():
        raise UserError(f"no eval.json in '{run_dir}'; run python -m eval with --out_dir {run_dir} first")
    results = json.loads((run_dir / "eval.json").read_text())
    base = Path(results["base"])
    per_prompt = _per_prompt(run_dir)
    prompts = next(iter(per_prompt.values()))  # base α, split and cluster: the same columns for every checkpoint
    exact = _exact_at(run_dir)
    arms, left_out = training_runs(results, prompts)
    scaling_data = load_experiment(scaling, "scaling") if scaling else None
    alpha_data = load_experiment(alpha, "alpha") if alpha else None
    scaling_fit = (scaling_data, scaling_analysis(scaling_data)) if scaling_data else None  # (results, analysis)
    alpha_fit = (alpha_data, alpha_analysis(alpha_data)) if alpha_data else None
    made = _make_figures(run_dir / "figures", results, per_prompt, arms, left_out, scaling_fit, alpha_fit)

    observed = [a.sentence() for a in arms] + barrier_sentences(arms) + [_coverage_sentence(results)]
    if left_out:
        observed.append("Training curves left out: " + "; ".join(f"{n} ({why})" for n, why in left_out.items())
                        + ". Their checkpoints are evaluated below like the others.")
    observed += _passk_sentences(results) + _exact_sentences(results, exact, prompts)
    observed += scaling_verdict(*scaling_fit) if scaling_fit else []
    observed += alpha_verdict(alpha_fit[1]) if alpha_fit else []
    observed += [METHOD] if scaling_fit or alpha_fit else []

    shown_as = Path(shown_as or run_dir)
    other = "; ".join(f"`{name}` (from `{b}`)" for name, b in results["other_base"].items())
    lines = [f"# Evaluation report: `{shown_as}`", "",
             *([f"**Trained from another base than `{base}`**, evaluated anyway (allow_other_base) on this base's "
                f"on-/off-support split, not their own: {other}.", ""] if other else []),
             f"Base run `{base}` (k = {results['k']}, N = {results['N']}); {results['prompts']['all']} eval prompts, "
             f"off-support when base α < {results['offsupport_threshold']:g}; pass@k from n = {results['n_samples']} "
             f"samples per prompt at temperature {results['temperature']:g}.", "", "## What was observed", ""]
    lines += [f"- {s}" for s in observed]
    if arms:
        lines += ["", "## Post-training runs", "", *arm_table(arms)]
    lines += ["", "## Checkpoints on the eval prompts", "", *_checkpoint_table(results)]
    lines += ["", "## By cluster", "", "Mean likelihood of y* over each cluster's eval prompts; in brackets, over those "
              f"of them that are off-support (base α < {results['offsupport_threshold']:g}).", "",
              *_cluster_table(per_prompt, base), ""]
    if crossing_table := _exact_cluster_table(results, exact, prompts, base):
        lines += ["## Exact pass@k by cluster", "", "Where the base's exact pass@k 1 − (1 − p(y*|x))^k, averaged over a "
                  "cluster's prompts, overtakes each checkpoint's (the smallest k on the grid, refined by bisection in "
                  "log k); all curves, per split and per cluster, are in `passk_exact.csv`.", "", *crossing_table, ""]
    if results.get("prms"):
        lines += ["## Learned PRMs", "", "AUC / accuracy (verdict: probability > 0.5) of each PRM's prefix verdicts "
                  "against the true prefix correctness, on every prefix of base draws and of y* on the eval prompts, per "
                  "split and per cluster.", "", *prm_table(results["prms"]), ""]
    lines += ["## Figures", ""]
    for title, file in made.items():
        lines += [f"### {title}", "", f"![{title}](figures/{file})", ""]
    if not scaling_data:
        lines += ["(No scaling figure: pass a scaling-results JSON as `scaling_results`.)", ""]
    if not alpha_data:
        lines += ["(No α figure: pass an α-dependence JSON as `alpha_results`.)", ""]
    lines += ["## Resolved configs", "", _config_block("evaluation", run_dir / "config.yaml", shown_as / "config.yaml"),
              _config_block("base (pretraining)", base / "config.yaml")]
    lines += [_config_block(f"{a.name} (post-training)", a.run / "config.yaml") for a in arms]
    path = run_dir / "report.md"
    atomic_write_text(path, "\n".join(lines) + "\n")
    return path
