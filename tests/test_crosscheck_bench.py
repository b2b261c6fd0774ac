"""make crosscheck and make bench end to end on the tiny configs, and the cross-check's exact tests against closed forms."""

from __future__ import annotations

import json
import math
import random
import statistics

import pytest

from barrierlab.loading import load_dataset_dir
from barrierlab.rundir import read_metrics
from eval.analysis import QUERIES
from experiments.crosscheck_analysis import (
    OFF,
    ON,
    TRAINED,
    binomial_test,
    discovery_lines,
    discovery_probability,
    discovery_test,
    final,
    first_success,
    likelihood_lines,
    moved_before_discovery,
    poisson_test,
    rate_ratio_test,
    summarise,
)
from tests.conftest import one_line_error, run_stage
from tests.conftest import run_make as make


def test_make_crosscheck_on_tiny_configs(tmp_path):  # eight post-training runs, half through TRL: about a minute
    make("crosscheck", "CONFIGS=configs/tiny", f"RUNS={tmp_path}")
    out = tmp_path / "crosscheck"
    result = json.loads((out / "crosscheck.json").read_text())
    table = result["table"]
    assert {(r["arm"], r["backend"]) for r in table} == {(a, b) for a in ("outcome", "process") for b in ("native", "trl")}
    runs = {(r["arm"], r["backend"]): [read_metrics(out / f"{r['arm']}_{r['backend']}_s{seed}" / "metrics.jsonl")
                                       for seed in (0, 1)] for r in table}
    for r in table:  # each backend's numbers are its own runs' last evaluations, and each run kept to the budget
        rows = runs[(r["arm"], r["backend"])]
        assert r["seeds"] == 2 and r["onsupport_per_seed"] == [final(run, ON) for run in rows]
        assert r["offsupport_mean"] == pytest.approx(statistics.fmean(final(run, OFF) for run in rows))
        assert all(run[-1]["done/stop_reason"] == "max_queries" and run[-1]["done/reward_queries"] >= 96 for run in rows)
    # the tiny outcome arm (0/1 rewards, on-policy) trains every eval prompt: its prediction is their mean base α
    alpha = load_dataset_dir(out / "base" / "data" / "eval_prompts", ["base_alpha"])["base_alpha"]
    (outcome,) = result["discovery"]
    assert outcome["arm"] == "outcome" and outcome["rate"] == pytest.approx(statistics.fmean(alpha))
    for backend in ("native", "trl"):
        times = [first_success(run) for run in runs[("outcome", backend)]]
        assert outcome["backends"][backend] == {**discovery_test(times, 96, outcome["rate"], 0.99),
                                                "moved": max(moved_before_discovery(run) for run in runs[("outcome", backend)])}
    report = (out / "report.md").read_text()
    assert "P(discovery within Q = 96) = 1 − (1 − E α)^Q" in report and "99% confidence" in report
    assert all(line in report for line in result["verdicts"]) and (out / "crosscheck.png").stat().st_size > 10_000
    assert sum(line.startswith("- outcome: native/trl discovery rate ratio") for line in result["verdicts"]) == 1


def test_exact_intervals_and_p_values_against_closed_forms():
    a = (1 - 0.95) / 2
    # Clopper–Pearson at the edges: (1 - a)^... solved in closed form; 3 of 10 is the textbook [0.0667, 0.6525]
    assert binomial_test(0, 4, 0.5, 0.95) == {"p_value": pytest.approx(2 / 16), "interval": [0.0, pytest.approx(1 - a ** 0.25)]}
    assert binomial_test(4, 4, 0.3, 0.95) == {"p_value": pytest.approx(2 * 0.3**4), "interval": [pytest.approx(a ** 0.25), 1.0]}
    assert binomial_test(3, 10, 0.3, 0.95)["interval"] == pytest.approx([0.066740, 0.652453], abs=1e-6)
    # Poisson: no event bounds the mean by -ln a, one event from below by -ln(1 - a); 10 events at 99%: chi-square's
    # [χ²(20, 0.005) / 2, χ²(22, 0.995) / 2]
    assert poisson_test(0, 1.0, 0.95) == {"p_value": pytest.approx(2 * math.exp(-1)), "interval": [0.0, pytest.approx(-math.log(a))]}
    assert poisson_test(1, 1.0, 0.95)["interval"][0] == pytest.approx(-math.log(1 - a))
    assert poisson_test(10, 10.0, 0.99)["interval"] == pytest.approx([3.71692, 21.39783], abs=1e-5)
    # the verdict reads either way: the tested value lies inside the interval exactly when p > 1 - confidence
    for k in range(11):
        t = binomial_test(k, 10, 0.35, 0.9)
        assert (t["interval"][0] <= 0.35 <= t["interval"][1]) == (t["p_value"] > 0.1), k
        t = poisson_test(k, 4.2, 0.9)
        assert (t["interval"][0] <= 4.2 <= t["interval"][1]) == (t["p_value"] > 0.1), k


def test_predicted_discovery_from_the_base_alpha():
    # one query succeeds with E α: within Q queries 1 - (1 - E α)^Q, stable where α is far below float epsilon
    assert discovery_probability(statistics.fmean([0.1, 0.3]), 3) == pytest.approx(1 - 0.8**3)
    assert discovery_probability(1e-12, 10**6) == pytest.approx(1e-6 - 1e-12 / 2, rel=1e-9)
    # two runs discovered (at 100 and 300 queries), two ran out (one never, one after the budget): d / T with each
    # run's queries capped at the budget
    t = discovery_test([100, None, 300, 2000], 1000, 1e-3, 0.99)
    assert (t["runs"], t["discovered"], t["exposure"]) == (4, 2, 2400) and t["rate"] == pytest.approx(2 / 2400)
    p = 1 - 0.999**1000
    assert t["predicted_probability"] == pytest.approx(p) and t["expected"] == pytest.approx(4 * p)
    assert t["count_p_value"] == pytest.approx(binomial_test(2, 4, p, 0.99)["p_value"])
    assert t["rate_interval"] == pytest.approx([m / 2400 for m in poisson_test(2, 2.4, 0.99)["interval"]])
    # equal rates: 3 of the 4 discoveries fall in one of two equal exposures with probability C(4,3)/16 + 1/16
    r = rate_ratio_test({"discovered": 3, "exposure": 100, "rate": 0.03}, {"discovered": 1, "exposure": 100, "rate": 0.01}, 0.95)
    lo, hi = binomial_test(3, 4, 0.5, 0.95)["interval"]
    assert r == {"ratio": pytest.approx(3.0), "p_value": pytest.approx(2 * 5 / 16),
                 "interval": [pytest.approx(lo / (1 - lo)), pytest.approx(hi / (1 - hi))]}
    assert hi == pytest.approx(0.975 ** 0.25)  # P(X ≤ 3) = 1 - hi^4 = a
    assert rate_ratio_test({"discovered": 0, "exposure": 5}, {"discovered": 0, "exposure": 5}, 0.95) is None


def test_discovery_intervals_cover_the_truth_on_synthetic_censored_waiting_times():
    # geometric waiting times censored at the budget (P(discovery) = 0.78), 16 runs a backend, as the cross-check
    # sees them: each 90% interval holds the truth in about 90% of 200 seeded experiments or more (Clopper–Pearson
    # is conservative), and is not so wide that it always does
    rng, rate, budget, covered = random.Random(0), 1e-3, 1500, [0, 0, 0]
    for _ in range(200):
        sets = [[math.ceil(math.log(1 - rng.random()) / math.log1p(-rate)) for _ in range(16)] for _ in (0, 1)]
        a, b = (discovery_test([t if t <= budget else None for t in ts], budget, rate, 0.9) for ts in sets)
        covered[0] += a["share_interval"][0] <= a["predicted_probability"] <= a["share_interval"][1]
        covered[1] += a["rate_interval"][0] <= rate <= a["rate_interval"][1]
        c = rate_ratio_test(a, b, 0.9)
        covered[2] += c is None or c["interval"][0] <= 1 <= c["interval"][1]
    assert [n / 200 for n in covered] == [0.92, 0.905, 0.93]
    assert all(0.86 <= n / 200 <= 0.97 for n in covered)


def test_nothing_moves_before_the_first_success():
    def rows(values, first):  # eval rows at 0, 100, 200 queries, then the done/ row
        return [*({"eval/likelihood": v, TRAINED: v, QUERIES: 100 * i} for i, v in enumerate(values)),
                {"done/steps": 3, "done/first_success_queries": first}]

    assert moved_before_discovery(rows([1e-4, 1e-4, 0.3], 150)) == 0.0  # the evaluation after 200 queries came later
    assert moved_before_discovery(rows([1e-4, 1.5e-4, 0.3], 150)) == pytest.approx(0.5)
    assert moved_before_discovery(rows([1e-4, 1e-4, 2e-4], None)) == pytest.approx(1.0)  # never succeeded: every one


def test_crosscheck_verdicts_on_hand_made_runs():
    def run(off, on):  # one seed's eval rows: the base, then the final likelihoods (None: no such prompts)
        base = {OFF: None if off is None else 1e-6, ON: None if on is None else 0.2}
        return [{"step": 0, "eval/likelihood": 0.1, QUERIES: 0, **base},
                {"step": 1, "train/loss": 0.5, QUERIES: 8},  # a train/ row: not an evaluation
                {"step": 9, "eval/likelihood": 0.5, QUERIES: 72, OFF: off, ON: on}]

    runs = {("process", "native"): {0: run(0.9, 0.9), 1: run(0.7, 0.7)},
            ("process", "trl"): {0: run(0.4, 0.8), 1: run(0.8, 0.6)},
            ("outcome", "native"): {0: run(None, None)}}
    table = summarise(runs)
    assert [(r["arm"], r["backend"], r["seeds"]) for r in table] == [("process", "native", 2), ("process", "trl", 2),
                                                                     ("outcome", "native", 1)]
    assert table[0]["offsupport_mean"] == pytest.approx(0.8) and table[1]["onsupport_spread"] == pytest.approx(0.2)
    assert table[2]["offsupport_mean"] is None and table[2]["onsupport_per_seed"] == []
    arms = {"process": {"rate": None, "trains_onsupport": True}, "outcome": {"rate": None, "trains_onsupport": False}}
    assert likelihood_lines(table, arms) == [
        "- native process: off-support in its lowest seed 0.7 > 0.5 (mean 0.8) (as predicted)",
        "- trl process: off-support in its lowest seed 0.4 ≤ 0.5 (mean 0.6) (NOT as predicted)",
        "- native outcome: the base has no off-support eval prompts, so there is no barrier to check (NOT as predicted)",
        "- process: final on-support likelihoods differ by 0.1 between backends; the spread across seeds is up to 0.2 "
        "(within the spread)",
        "- outcome: trains no on-support prompt, so its on-support likelihood is not compared",
    ]
    # the discovery lines: 2 of 2 native seeds found y*, against 1 - 0.99^100 = 0.634 a seed
    native = {**discovery_test([50, 70], 100, 0.01, 0.99), "moved": 0.0}
    trl = {**discovery_test([None, None], 100, 0.01, 0.99), "moved": 2e-3}
    result = {"arm": "outcome", "rate": 0.01, "backends": {"native": native, "trl": trl}, "compared": ["native", "trl"],
              "comparison": rate_ratio_test(native, trl, 0.99)}
    lines = discovery_lines(result, 100, 0.99)
    assert lines[0] == ("- native outcome: 2 of 2 seeds discovered y* within 100 queries, predicted 0.634 a seed (1.27 "
                        "expected); the share's 99% interval [0.0707, 1] holds it, p = 0.804 (as predicted)")  # 2 × 0.634²
    assert lines[2].endswith("moved by at most 0 (relative) in any seed (as predicted: nothing is learnt before it)")
    assert lines[5].endswith("moved by at most 0.002 (relative) in any seed (NOT as predicted: nothing is learnt before it)")
    assert lines[6].startswith("- outcome: native/trl discovery rate ratio inf (99% interval [")


def test_make_bench_on_the_tiny_base(tmp_path):
    stdout = make("bench", "CONFIGS=configs/tiny", f"RUNS={tmp_path}").stdout
    out = tmp_path / "bench"
    results = json.loads((out / "bench.json").read_text())["results"]
    assert [(r["backend"], r["batch"], r["signal"]) for r in results] == [("native", 8, True), ("native", 8, False),
                                                                          ("trl", 8, True)]
    native, quiet, trl = results
    ratio = native["completions_per_s"] / trl["completions_per_s"]
    assert f"| native | outcome | 8 | {native['completions_per_s']:,.0f} | " in stdout and stdout.count(f"| {ratio:.1f}× |") == 1
    # the no-signal row: its own line, with its ratio to the full native step at the same batch
    quiet_ratio = quiet["completions_per_s"] / native["completions_per_s"]
    assert f"| native, no signal | outcome | 8 | {quiet['completions_per_s']:,.0f} | " in stdout
    assert stdout.count(f"|  | {quiet_ratio:.1f}× |") == 1
    for r in results:
        folder = f"{r['backend']}{'' if r['signal'] else '_nosignal'}_b{r['batch']}"
        rows = read_metrics(out / folder / "metrics.jsonl")
        steps = [row for row in rows if "train/update_time_s" in row]
        # every update's time is kept, as the run logged it; the 2 warm-up updates are left out of the median
        assert r["update_times_s"] == [round(row["train/update_time_s"], 5) for row in steps] and len(steps) == 4
        assert r["seconds_per_update"] == pytest.approx(statistics.median(row["train/update_time_s"] for row in steps[2:]))
        # outcome rewards: one reward query per completion, counted by the run itself
        assert [b["train/reward_queries"] - a["train/reward_queries"] for a, b in zip(steps, steps[1:])] == [r["batch"]] * 3
        assert r["queries_per_s"] == pytest.approx(r["completions_per_s"]) and r["peak_memory_mb"] > 0
        assert r["completions_per_s"] == pytest.approx(r["batch"] / r["seconds_per_update"])
        assert isinstance(r["load_average"], float)
        # a step without signal: zero gradient and no entropy, counted from the run's own metrics
        silent = [row["train/grad_norm"] == 0 and row["train/entropy"] is None for row in steps]
        assert r["steps_without_signal"] == sum(silent)
    # ±1 rewards always carry signal; the tiny base samples its y* (α ≈ 0.3 at k = 3, N = 3), so 0/1 steps have it too,
    # and the bench says that its no-signal time is not one
    assert native["steps_without_signal"] == trl["steps_without_signal"] == 0
    assert quiet["steps_without_signal"] < 4
    assert (f"warning: the no-signal run at batch 8 had {4 - quiet['steps_without_signal']} of 4 steps with signal "
            "(the base sampled y*), so its time mixes in full steps") in stdout
    # the authors' workload beside it: the linear model on a continuous task, outcome and process, one response a prompt
    linear = json.loads((tmp_path / "bench_linear" / "bench.json").read_text())["results"]
    assert [(r["backend"], r["reward"], r["signal"]) for r in linear] == [("native", "outcome", True),
                                                                          ("native", "process", True)]
    assert all(r["completions_per_s"] > 0 and r["steps_without_signal"] == 0 for r in linear)
    assert linear[1]["queries_per_s"] > linear[1]["completions_per_s"]  # process rewards: a query per prefix checked


def test_bench_no_signal_rows_warn_only_when_a_step_had_signal():
    from experiments.bench import signal_warnings, table

    row = {"batch": 64, "reward": "outcome", "queries_per_s": 1, "seconds_per_update": 1, "peak_memory_mb": 1, "update_times_s": [0.1] * 5}
    results = [{**row, "backend": "native", "signal": True, "completions_per_s": 2000.0, "steps_without_signal": 0},
               {**row, "backend": "native", "signal": False, "completions_per_s": 9000.0, "steps_without_signal": 5},
               {**row, "backend": "trl", "signal": True, "completions_per_s": 800.0, "steps_without_signal": 0}]
    assert signal_warnings(results) == []
    assert table(results).splitlines()[2:] == [
        "| native | outcome | 64 | 2,000 | 1 | 1.000 | 1 | 2.5× |  |",
        "| native, no signal | outcome | 64 | 9,000 | 1 | 1.000 | 1 |  | 4.5× |",
        "| trl | outcome | 64 | 800 | 1 | 1.000 | 1 |  |  |"]
    results[1]["steps_without_signal"] = 3
    assert signal_warnings(results) == ["warning: the no-signal run at batch 64 had 2 of 5 steps with signal (the base "
                                        "sampled y*), so its time mixes in full steps"]


def test_bench_warns_when_other_processes_ran_beside_it():
    from experiments.bench import busy_warning

    assert busy_warning([{"load_average": 1.9}, {"load_average": 2.4}], cpus=2) is None  # its own two threads
    warning = busy_warning([{"load_average": 1.9}, {"load_average": 3.96}], cpus=2)
    assert warning.startswith("warning: the machine was busy (1-minute load average up to 4.0 on 2 CPUs")


@pytest.mark.parametrize("steps, warmup, words", [("3", "3", "must exceed warmup_steps = 3"),
                                                  ("3", "0", "must be ≥ 1 (a TRL run's first update")])
def test_bench_rejects_a_warmup_that_times_nothing_or_the_setup(tmp_path, steps, warmup, words):
    proc = run_stage("experiments.bench", "--config", "configs/bench.yaml", "--out_dir", str(tmp_path / "bench"),
                     "--steps", steps, "--warmup_steps", warmup, check=False)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert words in proc.stderr and not (tmp_path / "bench").exists()


@pytest.mark.parametrize("driver, args, words", [
    ("experiments.bench", ["--posttrain_args", "[--optim.bogus, '1']"], "posttrain_args: command line: --optim.bogus: unknown key"),
    ("experiments.bench", ["--pretrain_args", "[--model.widht, '8']"], "pretrain_args: command line: --model.widht"),
    ("experiments.crosscheck", ["--posttrain_args", "[--algo.bogus, '1']"], "posttrain_args: command line: --algo.bogus"),
    ("experiments.sweep", ["--extra_args", "[--optim.bogus, '1']"], "extra_args (given to the bases' pretraining too): "
                                                                   "command line: --optim.bogus"),
    # what the driver sets for each run is its own: a user's --run.run_dir would write into another folder, a
    # --run.seed would make every seed's run the same run
    ("experiments.bench", ["--posttrain_args", "[--run.run_dir, elsewhere]"],
     "posttrain_args: --run.run_dir would override run.run_dir, which the driver sets for each run"),
    ("experiments.bench", ["--posttrain_args", "[--run, '{run_dir: elsewhere}']"], "--run would override run.checkpoint_every, "
                                                                                "run.progress, run.report_to, run.run_dir"),
    ("experiments.sweep", ["--extra_args", "['--base=elsewhere']"], "--base would override base"),
    ("experiments.sweep", ["--extra_args", "[--run.seed, '3']"], "extra_args: --run.seed would override run.seed"),
    ("experiments.crosscheck", ["--posttrain_args", "[--backend, trl]"], "--backend would override backend"),
    ("experiments.bench", ["--posttrain_args", "[--config, x.yaml]"], "posttrain_args: holds --config, which is not an override"),
    # nothing to measure or compare: refused, not an empty result written over the last one
    ("experiments.bench", ["--backends", "[]"], "key 'backends': list at least one of: native, trl"),
    ("experiments.bench", ["--batch_sizes", "[]"], "key 'batch_sizes': must list at least one batch size"),
    ("experiments.bench", ["--group_size", "0"], "key 'group_size': must be ≥ 2"),
    ("experiments.crosscheck", ["--backends", "[]"], "key 'backends': list at least one of: native, trl"),
    ("experiments.crosscheck", ["--posttrain_configs", "{}"], "key 'posttrain_configs': must name at least one arm"),
    # groups of 1: the TRL runs would fail after the base and the native runs
    ("experiments.crosscheck", ["--posttrain_args", "[--algo.baseline, none, --algo.group_size, '1']"],
     "posttrain_args: algo.group_size 1: the trl backend needs ≥ 2"),
    # every run trains the base's eval prompts, whose α predicts the discovery
    ("experiments.crosscheck", ["--posttrain_args", "[--prompts.dataset, elsewhere]"],
     "--prompts.dataset would override prompts.dataset, which the driver sets for each run"),
])
def test_drivers_check_stage_overrides_before_touching_runs(tmp_path, capsys, driver, args, words):
    import importlib

    # an earlier invocation's run folders stay as they were: the overrides are checked before any run is reused or redone
    kept = tmp_path / "out" / "native_b64" / "metrics.jsonl"
    kept.parent.mkdir(parents=True)
    kept.write_text("{}\n")
    main = importlib.import_module(driver).main
    assert words in one_line_error(main, ["--out_dir", str(tmp_path / "out"), *args], capsys)
    assert sorted(p.name for p in (tmp_path / "out").rglob("*")) == ["metrics.jsonl", "native_b64"]
