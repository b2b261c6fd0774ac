"""The evaluation stage: pass@k, quantiles, the on/off split, figures, ``python -m eval`` and the report."""

from __future__ import annotations

import csv
import json
import math
import shutil
import warnings
from collections import defaultdict
from pathlib import Path

import matplotlib
import numpy as np
import pytest
import torch

from barrierlab.config import ConfigValueError, build, load_config
from barrierlab.loading import load_dataset_dir, load_model_dir, prompt_tensors
from barrierlab.metrics import split_masks
from barrierlab.policy import target_stats
from barrierlab.rundir import read_metrics
from barrierlab.tokenizer import ANSWER0
from eval.config import EvalStageConfig
from eval.evaluate import summarise
from eval.passk import crossing_k, exact_pass_at_k, fmt_k, log_grid, pass_at_k
from eval.report import build_report
from tests.conftest import ROOT, TINY, one_line_error, run_stage
from tests.test_passk import sampled_interval

PNG = b"\x89PNG\r\n\x1a\n"


# ----------------------------------------------------------------------------- quantiles and splits


def test_lq_and_token_lq_against_hand_computed_quantiles():
    likelihood = torch.tensor([0.5, 0.1, 0.9, 0.3, 0.7], dtype=torch.float64)
    token_min = torch.tensor([0.8, 0.4, 0.95, 0.6, 0.2], dtype=torch.float64)
    eps = [0.0, 0.1, 0.2, 0.3, 0.5, 0.8]
    masks = split_masks(torch.ones(5), 0.5)
    out = summarise(likelihood.log(), token_min.log(), torch.zeros(5, dtype=torch.long), masks, 4, [1], eps)
    # Q(ε) = sup{a : P(v ≤ a) ≤ ε}: with 5 prompts, the (⌊5ε⌋ + 1)-th smallest value
    assert out["LQ"] == pytest.approx([0.1, 0.1, 0.3, 0.3, 0.5, 0.9])
    assert out["token_LQ"] == pytest.approx([0.2, 0.2, 0.4, 0.4, 0.6, 0.95])


def test_on_off_split_uses_the_base_alpha_and_fills_every_split():
    base_alpha = torch.tensor([1e-9, 1e-5, 0.5, 2e-6, 0.9], dtype=torch.float64)
    masks = split_masks(base_alpha, 1e-5)
    assert masks["offsupport"].tolist() == [True, False, False, True, False]  # strictly below the threshold
    assert (masks["onsupport"] == ~masks["offsupport"]).all() and masks["all"].all()
    p = torch.tensor([0.1, 0.2, 0.3, 0.4, 0.5], dtype=torch.float64)
    correct = torch.tensor([0, 1, 2, 3, 4])
    out = summarise(p.log(), p.log(), correct, masks, 4, [1, 2], [0.5])
    assert out["likelihood"]["offsupport"] == pytest.approx(0.25) and out["likelihood"]["onsupport"] == pytest.approx(1 / 3)
    assert out["expected_error"]["all"] == pytest.approx(0.7)
    assert out["pass_at_k"]["offsupport"][0] == pytest.approx((0 + 3) / 4 / 2)
    assert out["pass_at_k"]["onsupport"][1] == pytest.approx(np.mean(pass_at_k([1, 2, 4], 4, 2)))
    empty = summarise(p.log(), p.log(), correct, split_masks(base_alpha, 1e-12), 4, [1], [0.5])
    assert empty["likelihood"]["offsupport"] is None and empty["pass_at_k"]["offsupport"] is None


# ----------------------------------------------------------------------------- config and command line


def test_checkpoints_config_and_command_line_flags():
    cfg = build(EvalStageConfig, {"checkpoints": ["runs/o1/model", "runs/pr1"]})
    assert cfg.named_checkpoints() == {"o1": "runs/o1/model", "pr1": "runs/pr1"}
    cfg = load_config(EvalStageConfig, ["--n_samples", "8", "--checkpoints.outcome", "runs/a", "--checkpoints.p=runs/b"])
    assert cfg.n_samples == 8 and cfg.named_checkpoints() == {"outcome": "runs/a", "p": "runs/b"}
    with pytest.raises(ConfigValueError, match="n_samples"):
        build(EvalStageConfig, {"n_samples": 4, "pass_k": [8]})
    with pytest.raises(ConfigValueError, match="must be in \\[1, 1e30\\], e.g. 1e12") as info:
        build(EvalStageConfig, {"exact_pass_k_max": 0.5})
    assert info.value.key == "exact_pass_k_max"
    with pytest.raises(ConfigValueError, match="must be ≥ 1") as info:
        build(EvalStageConfig, {"exact_pass_k_per_decade": 0})
    assert info.value.key == "exact_pass_k_per_decade"
    with pytest.raises(ConfigValueError, match="'base' names the base model's own row"):
        build(EvalStageConfig, {"checkpoints": {"base": "runs/outcome"}})  # it would be reported as the base


# ----------------------------------------------------------------------------- figures


def _metrics(off_final: float, seed: int) -> list[dict]:
    rng = np.random.default_rng(seed)
    return [{"step": s, "eval/likelihood": 0.3, "eval/expected_error": 0.7 - 0.05 * s,
             "eval/onsupport_likelihood": 0.5, "eval/offsupport_likelihood": 1e-6 * (off_final / 1e-6) ** (s / 5),
             "eval/tracked_likelihood": rng.uniform(0, 1, 4).tolist(), "train/reward_queries": 1000 * s}
            for s in range(6)]


def test_barrier_series_against_steps_and_queries():
    from eval.figures import _series

    rows = _metrics(1e-12, 0) + [{"step": 3, "train/loss": 0.1, "train/reward_queries": 3000}]  # a train/ row: no point
    steps, err = _series(rows, "eval/expected_error", "step")
    assert steps.tolist() == [0, 1, 2, 3, 4, 5] and err.tolist() == pytest.approx([0.7, 0.65, 0.6, 0.55, 0.5, 0.45])
    queries, _ = _series(rows, "eval/expected_error")  # the base model (0 queries) too: a symlog axis keeps it
    assert queries.tolist() == [0, 1000, 2000, 3000, 4000, 5000]


def _labelled_ticks(ax, which: str) -> list[str]:
    """The tick labels (major and minor) that show within the view of ``ax``'s ``which`` axis, once drawn."""
    lo, hi = sorted(getattr(ax, f"get_{which}lim")())
    return [t.get_text() for minor in (False, True) for t in getattr(ax, f"get_{which}ticklabels")(minor=minor)
            if t.get_text() and t.get_visible() and lo <= t.get_position()[which == "y"] <= hi]


def _reads_its_own_labels(ax, which: str) -> bool:
    """Whether ``ax`` shows its own ``which`` tick labels: not an inner panel that shares them with its neighbour."""
    shared = len(getattr(ax, f"get_shared_{which}_axes")().get_siblings(ax)) > 1
    return not shared or any(t.get_visible() for t in getattr(ax, f"get_{which}ticklabels")())


def test_figure_functions_write_non_empty_pngs(tmp_path, monkeypatch):
    from eval import figures

    drawn = {}  # file name → [(x label, y label, x scale, y scale, line colours, texts)] of each axes with a label
    titles, log_labels, fig_texts = {}, {}, {}

    def record(fig, path, save=figures._save):
        fig.canvas.draw()
        name = Path(path).name
        panels = [ax for ax in fig.get_axes() if ax.get_xlabel()]
        drawn[name] = [(ax.get_xlabel(), ax.get_ylabel(), ax.get_xscale(), ax.get_yscale(),
                        [matplotlib.colors.to_hex(line.get_color()) for line in ax.get_lines()],
                        [text.get_text() for text in ax.texts]) for ax in panels]
        titles[name] = [ax.get_title() for ax in panels]
        log_labels[name] = [_labelled_ticks(ax, w) for ax in fig.get_axes() for w in "xy"
                            if getattr(ax, f"get_{w}scale")() in ("log", "symlog") and _reads_its_own_labels(ax, w)]
        fig_texts[name] = [t.get_text() for f in (fig, *fig.subfigs) for t in f.texts]
        return save(fig, path)

    monkeypatch.setattr(figures, "_save", record)
    arms = {"outcome": _metrics(1e-12, 0), "process": _metrics(0.9, 1)}
    alpha = [1e-8, 1e-4, 0.1, 0.9]
    exact_ks = [1, 10, 100, 10**3, 10**4]
    paths = [
        figures.barrier_figure(arms, tmp_path / "barrier.png", {"outcome": alpha, "process": alpha}, threshold=1e-5,
                               left_out={"trl": "no metrics.jsonl beside it"}),
        figures.coverage_figure({"base": {"log10_likelihood": [-8, -3, -1, 0], "LQ": [1e-8, 1e-3], "token_LQ": [0.1, 0.5]},
                                 "process": {"log10_likelihood": [-1, -0.5, 0, 0], "LQ": [0.1, 0.9], "token_LQ": [0.5, 1]}},
                                [0.1, 0.5], tmp_path / "coverage.png", k=3, N=4, threshold=1e-5),
        figures.passk_figure({"base": {"onsupport": [0.2, 0.4, 0.6], "offsupport": [0.0, 0.0, 0.01]},
                              "outcome": {"onsupport": [0.8, 0.8, 0.8], "offsupport": None}}, [1, 2, 4],
                             tmp_path / "passk.png"),
        figures.exact_passk_figure({"base": {"onsupport": [0.3, 0.9, 1, 1, 1], "offsupport": [1e-3, 0.01, 0.1, 0.6, 1]},
                                    "outcome": {"onsupport": [0.9, 1, 1, 1, 1], "offsupport": [0.05] * 5}}, exact_ks,
                                   tmp_path / "passk_exact.png", sampled={"base": {"onsupport": [0.3, 0.9], "offsupport": [0, 0]}},
                                   sampled_ks=[1, 10], crossings={"offsupport": {"outcome": 52.0}},
                                   inverse_alpha={"onsupport": 3.0, "offsupport": 1e3}),
    ]
    for path in paths:
        data = path.read_bytes()
        assert data.startswith(PNG) and len(data) > 5000, path
    # the axes are named in science.md's terms, reward queries and likelihoods on log scales
    queries = "reward queries (0: the base model q0; log scale from 1000)"
    barrier = drawn["barrier.png"]
    assert [(x, y) for x, y, *_ in barrier[:4]] == [
        ("PG steps", "mean likelihood of y* on off-support prompts"), ("PG steps", "expected error err(p)"),
        (queries, "mean likelihood of y* on off-support prompts"), (queries, "expected error err(p)")]
    assert barrier[2][2:4] == ("symlog", "log")  # symlog: the base model's point at 0 queries stays on the axis
    for x, _, xscale, yscale, lines, _ in barrier[4:]:  # one panel per arm: the tracked prompts, coloured by base α
        assert (x, xscale, yscale) == (queries, "symlog", "log") and len(set(lines)) == len(alpha)
    assert barrier[4][1] == "likelihood p(y*(x) | x)"
    # at a glance: every panel titled, every log axis numbered at two ticks or more, the left-out checkpoint named
    for name in ("barrier.png", "coverage.png", "passk.png", "passk_exact.png"):
        assert all(titles[name]), (name, titles[name])
        assert log_labels[name] and all(len(labels) >= 2 for labels in log_labels[name]), (name, log_labels[name])
    assert "$\\mathdefault{0}$" in log_labels["barrier.png"][1]  # the base model's tick on the query axis
    assert fig_texts["barrier.png"] == ["Training curves left out: trl (no metrics.jsonl beside it)"]
    assert [x for x, *_ in drawn["coverage.png"]] == ["log10 likelihood of y*(x)  (base model: log10 α(x))",
                                                       "ε (fraction of worst prompts excluded)"]
    assert drawn["passk.png"][0][:3] == ("k (samples drawn per prompt)", "unbiased pass@k", "log")
    on, off, off_log = drawn["passk_exact.png"]  # on- and off-support, then off-support again on a log y-axis
    assert on[:4] == ("k (samples drawn per prompt)", "pass@k = 1 − (1 − p(y*|x))^k, mean over prompts", "log", "linear")
    assert off[2:4] == ("log", "linear") and off_log[2:4] == ("log", "log") and off_log[4:] == off[4:]
    assert len(on[4]) == 4 and on[5] == [] and off[5] == ["base overtakes outcome\nat k = 52"]
    assert len(off[4]) == 6  # 2 exact curves, 1 sampled, the crossing (line and point) and 1/ᾱ
    assert titles["passk_exact.png"][2] == "Exact pass@k on off-support prompts (log scale)"
    with warnings.catch_warnings():  # a split no model has: a note in the panel, no empty-legend warning
        warnings.simplefilter("error")
        figures.passk_figure({"base": {"onsupport": None, "offsupport": [0.0, 0.1]}}, [1, 2], tmp_path / "p.png")
    (*_, on_lines, on_texts), (*_, off_lines, off_texts) = drawn["p.png"]
    assert (on_lines, on_texts) == ([], ["no on-support prompts in this evaluation"])
    assert len(off_lines) == 1 and off_texts == []


def test_the_tracked_prompts_colour_bar_marks_the_offsupport_threshold(tmp_path, monkeypatch):
    from eval import figures

    bars = []
    monkeypatch.setattr(figures, "_save", lambda fig, path: bars.extend(ax for ax in fig.get_axes() if not ax.get_xlabel()))
    figures.barrier_figure({"outcome": _metrics(1e-12, 0)}, tmp_path / "b.png", {"outcome": [1e-8, 1e-4, 0.1, 0.9]},
                           threshold=1e-5)
    (bar,) = bars
    assert bar.get_yscale() == "log" and bar.get_ylim() == pytest.approx((1e-8, 1))  # α on a log colour scale
    assert [line.get_ydata()[0] for line in bar.get_lines()] == [1e-5] and "off-support threshold 1e-05" in bar.get_ylabel()


# ----------------------------------------------------------------------------- the stage and the report


@pytest.fixture(scope="module")
def tiny_eval(tmp_path_factory, tiny_base):
    """Outcome and process runs on the tiny base, evaluated with ``python -m eval``."""
    root = tmp_path_factory.mktemp("eval")
    for reward in ("outcome", "process"):
        run_stage("posttrain", "--config", str(TINY / "posttrain_outcome.yaml"), "--base", str(tiny_base),
                  "--run.run_dir", str(root / reward), "--reward.name", reward, "--optim.lr", "0.05")
    out = root / "eval"
    run_stage("eval", "--config", str(TINY / "eval.yaml"), "--base", str(tiny_base), "--out_dir", str(out),
              "--checkpoints.outcome", str(root / "outcome"), "--checkpoints.process", str(root / "process" / "model"),
              "--checkpoints.base_again", str(tiny_base / "model"))
    return out


def test_eval_stage_end_to_end(tiny_eval, tiny_base):
    results = json.loads((tiny_eval / "eval.json").read_text())
    assert list(results["checkpoints"]) == ["base", "outcome", "process", "base_again"]
    assert results["n_samples"] == 16 and results["pass_k"] == [1, 2, 4, 8, 16] and results["offsupport_threshold"] == 0.06
    assert results["prompts"]["all"] == 48 == results["prompts"]["onsupport"] + results["prompts"]["offsupport"]
    base, again = results["checkpoints"]["base"], results["checkpoints"]["base_again"]
    assert base["pass_at_k"] == again["pass_at_k"]  # each checkpoint's samples are seeded alike: reproducible
    eval_set = load_dataset_dir(tiny_base / "data" / "eval_prompts", ["base_alpha"])
    alpha = torch.tensor(eval_set["base_alpha"], dtype=torch.float64)
    assert base["likelihood"]["all"] == pytest.approx(alpha.mean().item(), rel=1e-5)
    off = alpha < 0.06
    assert base["likelihood"]["offsupport"] == pytest.approx(alpha[off].mean().item(), rel=1e-5)
    for ckpt in results["checkpoints"].values():
        assert set(ckpt) >= {"path", "seconds", "likelihood", "expected_error", "token_min_prob", "LQ", "token_LQ", "pass_at_k"}
        assert all(tl >= q for tl, q in zip(ckpt["token_LQ"], ckpt["LQ"], strict=True))  # Q^TL ≥ Q
        curve = ckpt["pass_at_k"]["all"]
        assert len(curve) == 5 and curve == sorted(curve) and 0 <= curve[0] <= curve[-1] <= 1
        assert ckpt["expected_error"]["all"] == pytest.approx(1 - ckpt["likelihood"]["all"])
    with open(tiny_eval / "per_prompt.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 4 * 48 and {r["split"] for r in rows} <= {"onsupport", "offsupport"}
    # against the plain Hugging Face forward (not the lean forward eval uses): the product over the response of the
    # next-token softmax restricted to the k answer tokens
    model, _, task = load_model_dir(tiny_base / "model")
    answers = slice(ANSWER0, ANSWER0 + task["task"]["k"])
    prompts = load_dataset_dir(tiny_base / "data" / "eval_prompts", ["prompt_ids", "target_ids"])
    for i in (0, 47):
        ids = torch.tensor([prompts[i]["prompt_ids"] + prompts[i]["target_ids"]])
        with torch.no_grad():
            probs = torch.softmax(model(input_ids=ids).logits[0, :, answers].double(), -1)
        P = len(prompts[i]["prompt_ids"])
        want = math.prod(probs[P - 1 + j, t - ANSWER0].item() for j, t in enumerate(prompts[i]["target_ids"]))
        got = next(r for r in rows if r["checkpoint"] == "base" and r["prompt"] == str(i))
        assert float(got["likelihood"]) == pytest.approx(want, rel=1e-4)
    assert all(0 <= int(r["correct"]) <= 16 for r in rows)
    for name, ckpt in results["checkpoints"].items():
        mine = sorted((r for r in rows if r["checkpoint"] == name), key=lambda r: int(r["prompt"]))
        p = np.array([float(r["likelihood"]) for r in mine])
        correct = np.array([int(r["correct"]) for r in mine])
        # the split is the base's, for every checkpoint: a post-trained one keeps its base's on/off-support prompts
        assert [r["split"] for r in mine] == ["offsupport" if a < 0.06 else "onsupport" for a in alpha.tolist()]
        assert ckpt["likelihood"]["offsupport"] == pytest.approx(p[off.numpy()].mean(), rel=1e-5)
        assert ckpt["likelihood"]["onsupport"] == pytest.approx(p[~off.numpy()].mean(), rel=1e-5)
        # pass@k samples come from this checkpoint: 16 draws per prompt hit y* with its likelihood
        assert abs(correct.sum() - 16 * p.sum()) <= 4 * (16 * (p * (1 - p)).sum()) ** 0.5
        for split, mask in (("all", np.ones(48, bool)), ("offsupport", off.numpy())):
            want = [pass_at_k(correct[mask], 16, k).mean() for k in (1, 2, 4, 8, 16)]
            assert ckpt["pass_at_k"][split] == pytest.approx(want, abs=1e-12)
    likelihoods = {name: ckpt["likelihood"]["all"] for name, ckpt in results["checkpoints"].items()}
    assert len(set(likelihoods.values())) == 3  # base (twice), outcome and process: three different models
    with open(tiny_eval / "passk.csv", newline="") as f:
        assert {r["k"] for r in csv.DictReader(f)} == {"1", "2", "4", "8", "16"}
    assert "n_samples: 16" in (tiny_eval / "config.yaml").read_text()


def test_exact_pass_at_k_of_the_stage_and_its_sampled_check(tiny_eval):
    results = json.loads((tiny_eval / "eval.json").read_text())
    ks, names = results["exact_pass_k"], list(results["checkpoints"])
    assert ks == log_grid(1e12, 10) and ks[-1] == 10**12
    with open(tiny_eval / "per_prompt.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    with open(tiny_eval / "passk_exact.csv", newline="") as f:
        exact = list(csv.DictReader(f))
    assert list(exact[0]) == ["checkpoint", "split", "cluster", "prompts", "k", "pass_at_k"]
    assert len(exact) == len(names) * (3 + 3) * len(ks)  # per split (all, on, off) and per cluster (3)
    table = defaultdict(list)
    for r in exact:
        table[r["checkpoint"], r["split"], r["cluster"]].append(float(r["pass_at_k"]))
    log_p, subsets, checks = {}, {}, len(names) * 3 * len(results["pass_k"])
    for name in names:
        mine = sorted((r for r in rows if r["checkpoint"] == name), key=lambda r: int(r["prompt"]))
        log_p[name] = np.array([float(r["log10_likelihood"]) for r in mine]) * math.log(10)
        split, cluster = np.array([r["split"] for r in mine]), np.array([r["cluster"] for r in mine])
        subsets = {("all", "all"): np.ones(48, bool), ("onsupport", "all"): split == "onsupport",
                   ("offsupport", "all"): split == "offsupport"} | {("all", c): cluster == c for c in "012"}
        for (s, c), mask in subsets.items():
            want = exact_pass_at_k(log_p[name][mask], ks).mean(1)
            assert table[name, s, c] == pytest.approx(want, rel=1e-12), (name, s, c)
            if c == "all":
                assert results["checkpoints"][name]["exact_pass_at_k"][s] == table[name, s, c]
                # exact pass@1 is the mean likelihood; the sampled pass@k lies in its binomial interval of the exact one
                assert table[name, s, c][0] == pytest.approx(results["checkpoints"][name]["likelihood"][s], rel=1e-6)
                p = np.exp(log_p[name][mask])
                for k, sampled in zip(results["pass_k"], results["checkpoints"][name]["pass_at_k"][s], strict=True):
                    exact_mean, lo, hi = sampled_interval(p, 16, k, 0.99, checks)
                    assert exact_mean == pytest.approx(table[name, s, c][ks.index(k)], rel=1e-9)
                    assert lo <= sampled <= hi, (name, s, k)
    # the k where the base overtakes each checkpoint, per split and per cluster; never the base model itself again
    for (s, c), mask in subsets.items():
        at = results["crossing_k"]["split"][s] if c == "all" else results["crossing_k"]["cluster"][c]
        assert list(at) == ["outcome", "process", "base_again"] and at["base_again"] is None
        for name in ("outcome", "process"):
            assert at[name] == crossing_k(log_p["base"], log_p[name], mask, ks)


def test_report_on_tiny_finished_runs(tiny_eval, tiny_base, tmp_path):
    report = (tiny_eval / "report.md").read_text()
    for name in ("barrier.png", "coverage.png", "passk.png", "passk_exact.png"):
        assert f"(figures/{name})" in report and (tiny_eval / "figures" / name).read_bytes().startswith(PNG)
    assert "## What was observed" in report and "Outcome PG (outcome) left the mean off-support likelihood" in report
    assert "| outcome | outcome reward, on_policy behaviour | 384 | 12 | max_steps |" in report
    assert report.count("<details>") == 4  # eval, base, outcome and process configs
    # by cluster: the mean likelihood over each cluster's prompts, off-support ones in brackets, from per_prompt.csv
    with open(tiny_eval / "per_prompt.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["checkpoint"] == "outcome"]
    design = {c["cluster"]: c for c in json.loads((tiny_base / "support.json").read_text())["clusters"]}
    assert "| cluster | coverage | designed α | prompts (off-support) | base | outcome | process | base_again |" in report
    for cluster in sorted({int(r["cluster"]) for r in rows}):
        mine = [float(r["likelihood"]) for r in rows if int(r["cluster"]) == cluster]
        off = [float(r["likelihood"]) for r in rows if int(r["cluster"]) == cluster and r["split"] == "offsupport"]
        line = next(x for x in report.splitlines() if x.startswith(f"| {cluster} | {design[cluster]['coverage']} |"))
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert cells[3] == f"{len(mine)} ({len(off)})"
        mean, _, bracket = cells[5].partition(" (")
        assert float(mean) == pytest.approx(sum(mine) / len(mine), rel=2e-3)
        assert (float(bracket.rstrip(")")) == pytest.approx(sum(off) / len(off), rel=2e-3)) if off else bracket == ""
    assert "reward:" in report and "profile:" in report
    # exact pass@k: where the base overtakes, per split in words and per cluster in a table
    results = json.loads((tiny_eval / "eval.json").read_text())
    for split in ("on-support", "off-support"):  # the words themselves: test_exact_pass_at_k_sentences
        sentence = next(x for x in report.splitlines() if x.startswith(f"- Exact pass@k on {split} prompts (mean base α"))
        assert "The base overtakes outcome: " in sentence and sentence.endswith("base_again: not by k = 1.0e12.")
    assert "| cluster | coverage | designed α | mean base α ᾱ | 1/ᾱ | base overtakes outcome at | base overtakes process at " \
           "| base overtakes base_again at |" in report
    for cluster, at in results["crossing_k"]["cluster"].items():
        line = [x for x in report.splitlines() if x.startswith(f"| {cluster} | {design[int(cluster)]['coverage']} |")][-1]
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert cells[5:] == [f"k = {fmt_k(at[n])}" if at[n] else cells[5 + i] for i, n in enumerate(at)]
        assert all(c.startswith(("k = ", "ahead from k = 1", "not by k = 1.0e12")) for c in cells[5:])
    assert "Training curves left out: base_again (a pretraining run: no reward-query evaluations). Their checkpoints are " \
           "evaluated below like the others." in report
    scaling = tmp_path / "scaling.json"
    # the results.json of make scaling and make alpha (experiments.sweep), seeds alike at every x: exact rates
    scaling.write_text(json.dumps({"k": 3, "target_likelihood": 0.5, "max_queries": 10**6, "runs": [
        {"arm": arm, "reward": arm, "behaviour": "on_policy", "N": n, "seed": 0, "base_alpha": 3.0**-n,
         "discovery": q, "discovery_censored": False, "queries": 2 * q, "censored": False}
        for arm, f in (("outcome", lambda n: 10 * 3**n), ("process", lambda n: 40 * n)) for n in (2, 3, 4)
        for q in [f(n)]]}))
    alpha = tmp_path / "alpha.json"
    alpha.write_text(json.dumps({"target_likelihood": 0.5, "max_queries": 10**6, "runs": [
        {"cluster": c, "seed": 0, "alpha": a, "discovery": int(1 / a), "discovery_censored": False,
         "queries": int(100 / a), "censored": False} for c, a in enumerate([0.5, 0.05, 0.005])]}))
    out = tmp_path / "eval"  # a copy: the module's other tests read the fixture's report
    shutil.copytree(tiny_eval, out)
    report = build_report(out, scaling=scaling, alpha=alpha).read_text()
    assert "(figures/scaling.png)" in report and "(figures/alpha.png)" in report
    assert "**outcome** discovery: ×**3 per unit N** (95% interval [3, 3]); theory k = 3" in report
    assert "**process** queries to target: ∝ **N^1.00** (95% interval [1, 1])" in report
    assert "queries to target against the base α: log-log slope **-1.00** (95% interval [-1, -1])" in report


def test_report_leaves_out_curves_measured_on_other_prompts_or_splits(tiny_eval, tmp_path, monkeypatch):
    from eval import figures

    drawn = {}  # what the barrier figure was asked to draw, and to name as left out

    def barrier(arms, path, tracked, **kw):
        drawn.update(arms=list(arms), **kw)
        return draw(arms, path, tracked, **kw)

    draw = figures.barrier_figure
    monkeypatch.setattr(figures, "barrier_figure", barrier)
    out = tmp_path / "eval"
    shutil.copytree(tiny_eval, out)
    other = tmp_path / "outcome"  # the outcome run, as if trained from another base: its own step-0 numbers differ
    shutil.copytree(tiny_eval.parent / "outcome", other)
    rows = read_metrics(other / "metrics.jsonl")
    rows[0]["eval/offsupport_likelihood"] *= 2
    (other / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    results = json.loads((out / "eval.json").read_text())
    results["checkpoints"]["outcome"]["path"] = str(other / "model")
    (out / "eval.json").write_text(json.dumps(results))
    report = build_report(out).read_text()
    assert "Training curves left out: outcome (its run's step-0 evaluation is of other prompts or another split); " \
           "base_again (a pretraining run: no reward-query evaluations)." in report
    assert "| process | process reward" in report and "| outcome | outcome reward" not in report  # runs table
    assert "(figures/barrier.png)" in report  # process's curves still drawn
    assert drawn == {"arms": ["process"], "threshold": 0.06, "left_out": {
        "base_again": "a pretraining run: no reward-query evaluations",
        "outcome": "its run's step-0 evaluation is of other prompts or another split"}}  # named in the figure itself too
    # an evaluation that splits at base α < 0.2 (the runs split at 0.06): no curves at all, and no stale figure
    with open(out / "per_prompt.csv", newline="") as f:
        table = list(csv.DictReader(f))
    for r in table:
        r["split"] = "offsupport" if float(r["base_alpha"]) < 0.2 else "onsupport"
    with open(out / "per_prompt.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(table[0]))
        writer.writeheader()
        writer.writerows(table)
    report = build_report(out).read_text()
    assert "Training curves left out: outcome (its run's step-0 evaluation is of other prompts or another split); process " \
           "(its run's step-0 evaluation is of other prompts or another split); base_again" in report
    assert "## Post-training runs" not in report
    assert "(figures/barrier.png)" not in report and not (out / "figures" / "barrier.png").exists()


def test_pass_at_k_sentences_name_every_checkpoint_tied_at_the_best():
    from eval.report import _passk_sentences

    at = {"base": [0.1, 0.6875], "outcome": [0.3, 0.5], "process": [0.2, 0.6875]}
    results = {"pass_k": [1, 16], "checkpoints": {n: {"pass_at_k": {"onsupport": v, "offsupport": None}} for n, v in at.items()}}
    assert _passk_sentences(results)[0].endswith("best at k = 1: outcome, at k = 16: base and process (tied).")


def test_exact_pass_at_k_sentences():
    from eval.report import _exact_sentences

    ks = [1, 10, 10**12]
    curves = {"base": [1e-7, 1e-6, 1.0], "outcome": [0.05, 0.05, 0.05], "process": [0.6, 0.9, 1.0]}
    results = {"exact_pass_k": ks, "checkpoints": dict.fromkeys(curves),
               "crossing_k": {"split": {"offsupport": {"outcome": 512933.0, "process": None}}}}
    prompts = {"base_alpha": [1e-7, 1e-7, 0.5], "split": ["offsupport", "offsupport", "onsupport"], "cluster": [0, 0, 1]}
    exact = {(n, "offsupport", "all"): v for n, v in curves.items()}
    assert _exact_sentences(results, exact, prompts) == [
        "Exact pass@k on off-support prompts (mean base α ᾱ = 1e-07, 1/ᾱ = 1.0e7), k = 1 → 1.0e12: base 1e-07 → 1, "
        "outcome 0.05 → 0.05, process 0.6 → 1. The base overtakes outcome: k = 5.1e5; process: not by k = 1.0e12."]
    exact["base", "offsupport", "all"] = [0.7, 0.8, 1.0]  # ahead of both at k = 1: nothing to overtake
    assert _exact_sentences(results, exact, prompts)[0].endswith("outcome: k = 5.1e5; process: ahead from k = 1.")


def test_a_mid_run_checkpoint_is_a_model_folder_eval_reads(tiny_eval, tiny_base, tmp_path):
    from eval.__main__ import main

    step = tiny_eval.parent / "outcome" / "checkpoints" / "step_0000010"
    main(["--config", str(TINY / "eval.yaml"), "--base", str(tiny_base), "--out_dir", str(tmp_path / "e"),
          "--include_base", "false", "--checkpoints.mid", str(step), "--n_samples", "2"])
    mid = json.loads((tmp_path / "e" / "eval.json").read_text())["checkpoints"]["mid"]["likelihood"]["all"]
    final = json.loads((tiny_eval / "eval.json").read_text())["checkpoints"]["outcome"]["likelihood"]["all"]
    model, _, info = load_model_dir(step)  # the step-10 weights, not the final model's
    eval_set = load_dataset_dir(tiny_base / "data" / "eval_prompts", ["prompt_ids", "target_ids"])
    log_p, _ = target_stats(model, *prompt_tensors(eval_set), info["task"]["k"])
    assert mid == pytest.approx(log_p.exp().mean().item(), rel=1e-6) and mid != pytest.approx(final, rel=1e-5)
    report = (tmp_path / "e" / "report.md").read_text()  # no training curves of its own: the report says so
    assert "Training curves left out: mid (no metrics.jsonl beside it, e.g. a TRL script's model folder or a mid-run " \
           "checkpoint). Their checkpoints are evaluated below like the others." in report
    assert "(figures/passk_exact.png)" in report and "## Exact pass@k by cluster" not in report  # no base to compare


def test_eval_rejects_bad_paths_in_one_line(tmp_path, tiny_base, capsys):
    proc = run_stage("eval", "--config", str(TINY / "eval.yaml"), "--base", str(tiny_base), "--out_dir",
                     str(tmp_path / "e"), "--checkpoints.ghost", str(tmp_path / "nowhere"), check=False)
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0
    assert "checkpoint" in proc.stderr and "nowhere" in proc.stderr and not (tmp_path / "e").exists()
    proc = run_stage("eval", "--config", str(TINY / "eval.yaml"), "--base", str(tmp_path / "nobase"), "--out_dir",
                     str(tmp_path / "e"), check=False)
    assert proc.returncode == 2 and "nobase" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "e").exists()
    # experiment results are checked before anything is evaluated or written
    (tmp_path / "results.json").write_text('{"runs": [{"arm": "outcome"}]}')
    from eval.__main__ import main

    args = ["--config", str(TINY / "eval.yaml"), "--base", str(tiny_base)]
    for key, path, words in (("scaling_results", "README.md", "scaling_results: cannot read 'README.md' as JSON"),
                             ("alpha_results", str(tmp_path / "results.json"), "alpha_results: '")):
        assert words in one_line_error(main, [*args, "--out_dir", str(tmp_path / "e"), f"--{key}", path], capsys)
        assert not (tmp_path / "e").exists()
    other = tmp_path / "other_task"  # a checkpoint of another task (its task.json says so)
    shutil.copytree(tiny_base / "model", other)
    info = json.loads((other / "task.json").read_text())
    info["task"]["flip_prob"] = 0.3
    (other / "task.json").write_text(json.dumps(info))
    err = one_line_error(main, [*args, "--out_dir", str(tmp_path / "e"), "--checkpoints.other", str(other)], capsys)
    assert f"checkpoint 'other' ({other}) was trained on a different task than the base run" in err
    assert not (tmp_path / "e").exists()
    err = one_line_error(main, [*args, "--out_dir", str(tmp_path / "e"), "--exact_pass_k_max", "1e40"], capsys)
    assert "exact_pass_k_max" in err and "must be in [1, 1e30]" in err and not (tmp_path / "e").exists()
    (tmp_path / "file").write_text("")
    err = one_line_error(main, [*args, "--out_dir", str(tmp_path / "file")], capsys)
    assert "out_dir: '" in err and "is a file, not a folder" in err
    run_like = tmp_path / "run_like"  # a run folder (its config.yaml) must not get the eval's config.yaml and report
    run_like.mkdir()
    shutil.copy(tiny_base / "config.yaml", run_like / "config.yaml")
    err = one_line_error(main, [*args, "--out_dir", str(run_like)], capsys)
    assert f"out_dir: '{run_like}' is a run folder (it has a config.yaml); pass a new or empty folder as out_dir" in err
    assert [p.name for p in run_like.iterdir()] == ["config.yaml"]
    # an unfinished run (no model/ yet) as a checkpoint: the advice names that run's folder
    err = one_line_error(main, [*args, "--out_dir", str(tmp_path / "e"), "--checkpoints.x", str(run_like)], capsys)
    assert f"no barrierlab checkpoint at '{run_like / 'model'}'" in err and f"finish the run in '{run_like}' first" in err
    # a folder that is no run and holds no model: what to pass instead, not a run to finish
    err = one_line_error(main, [*args, "--out_dir", str(tmp_path / "e"), "--checkpoints.x", str(ROOT / "configs")], capsys)
    assert err.endswith(f"no barrierlab checkpoint at '{ROOT / 'configs'}' (config.json and task.json expected); pass a "
                        "run folder, its model/ or one of its checkpoints/step_N\n")


@pytest.mark.parametrize("span, labels", [((128, 710), ["$\\mathdefault{2\\times10^{2}}$", "$\\mathdefault{5\\times10^{2}}$"]),
                                          ((27_000, 300_000), ["$\\mathdefault{10^{5}}$", "$\\mathdefault{5\\times10^{4}}$",
                                                               "$\\mathdefault{2\\times10^{5}}$"]),
                                          ((1e-9, 0.5), ["$\\mathdefault{10^{-8}}$", "$\\mathdefault{10^{-6}}$",
                                                         "$\\mathdefault{10^{-4}}$", "$\\mathdefault{10^{-2}}$",
                                                         "$\\mathdefault{10^{0}}$"])])
def test_log_axes_carry_two_numbers_or_more_and_query_axes_keep_the_base(span, labels):
    import matplotlib.pyplot as plt

    from eval.figures import _log_axis, _queries_axis

    fig, (ax, ax_q) = plt.subplots(1, 2)
    ax.plot(span, [1, 2])
    _log_axis(ax, "x")  # a short run, less than one decade with one or no decade tick in it, or many decades
    ax_q.plot([0, 300, 300_000], [1, 2, 3])
    _queries_axis(ax_q, [0, 300, 300_000])  # linear up to 100, the first evaluation's decade
    fig.canvas.draw()
    assert _labelled_ticks(ax, "x") == labels
    assert _labelled_ticks(ax_q, "x") == [f"$\\mathdefault{{{t}}}$" for t in ("0", "10^{2}", "10^{3}", "10^{4}", "10^{5}")]
    assert ax_q.get_xlim()[0] == 0 and ax_q.get_xlabel() == "reward queries (0: the base model q0; log scale from 100)"
    plt.close(fig)


def test_an_evaluation_that_fails_late_leaves_the_previous_outputs_whole(tmp_path, tiny_base, monkeypatch):
    import eval.stage as stage
    from eval.__main__ import main

    out = tmp_path / "e"
    args = ["--config", str(TINY / "eval.yaml"), "--base", str(tiny_base), "--out_dir", str(out), "--progress", "false"]
    main(args)
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file() and p.name != ".lock"}

    def failing_report(run_dir, **kw):  # the new outputs are written, the report fails (or the process is killed)
        (run_dir / "figures").mkdir()
        (run_dir / "figures" / "coverage.png").write_bytes(b"half")
        raise RuntimeError("killed while drawing")

    monkeypatch.setattr(stage, "build_report", failing_report)
    with pytest.raises(RuntimeError, match="killed while drawing"):
        main([*args, "--seed", "7"])
    after = {p.relative_to(out): p.read_bytes() for p in out.rglob("*")
             if p.is_file() and p.name != ".lock" and ".tmp_outputs" not in p.parts}
    assert after == before  # not the new config.yaml and eval.json beside the old report.md
    monkeypatch.undo()
    main([*args, "--seed", "7"])  # the rerun clears the staging folder and replaces everything
    assert json.loads((out / "eval.json").read_text())["seed"] == 7 and not (out / ".tmp_outputs").exists()
    report = (out / "report.md").read_text()
    assert report.startswith(f"# Evaluation report: `{out}`") and ".tmp_outputs" not in report
