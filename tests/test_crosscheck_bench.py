"""make crosscheck and make bench end to end on the tiny configs: both backends, the table, the figure."""

from __future__ import annotations

import json
import statistics

import pytest

from barrierlab.run import read_metrics
from eval.analysis import QUERIES
from posttrain.crosscheck import OFF, ON, final, summarise, verdict
from tests.conftest import one_line_error, run_stage
from tests.conftest import run_make as make


def test_make_crosscheck_on_tiny_configs(tmp_path):  # eight post-training runs, half through TRL: about a minute
    make("crosscheck", "CONFIGS=configs/tiny", f"RUNS={tmp_path}")
    out = tmp_path / "crosscheck"
    table = json.loads((out / "crosscheck.json").read_text())["table"]
    assert {(r["arm"], r["backend"]) for r in table} == {(a, b) for a in ("outcome", "process") for b in ("native", "trl")}
    for r in table:  # each backend's numbers are its own runs' last evaluations, and each run kept to the budget
        runs = [read_metrics(out / f"{r['arm']}_{r['backend']}_s{seed}" / "metrics.jsonl") for seed in (0, 1)]
        assert r["seeds"] == 2 and r["onsupport_per_seed"] == [final(rows, ON) for rows in runs]
        assert r["offsupport_mean"] == pytest.approx(statistics.fmean(final(rows, OFF) for rows in runs))
        assert all(rows[-1]["done/stop_reason"] == "max_queries" and rows[-1]["done/reward_queries"] >= 96 for rows in runs)
    report = (out / "report.md").read_text()
    assert all(line in report for line in verdict(table)) and (out / "crosscheck.png").stat().st_size > 10_000


def test_crosscheck_table_and_verdict_on_hand_made_runs():
    def run(off, on):  # one seed's eval rows: the base, then the final likelihoods (None: no such prompts)
        base = {OFF: None if off is None else 1e-6, ON: None if on is None else 0.2}
        return [{"step": 0, "eval/likelihood": 0.1, QUERIES: 0, **base},
                {"step": 1, "train/loss": 0.5, QUERIES: 8},  # a train/ row: not an evaluation
                {"step": 9, "eval/likelihood": 0.5, QUERIES: 72, OFF: off, ON: on}]

    runs = {("outcome", "native"): {0: run(1e-5, 0.9), 1: run(3e-5, 0.7)},
            ("outcome", "trl"): {0: run(2e-3, 0.8), 1: run(4e-3, 0.6)},
            ("process", "native"): {0: run(None, None)}}
    table = summarise(runs)
    assert [(r["arm"], r["backend"], r["seeds"]) for r in table] == [("outcome", "native", 2), ("outcome", "trl", 2),
                                                                     ("process", "native", 1)]
    assert table[0]["offsupport_mean"] == pytest.approx(2e-5) and table[1]["onsupport_spread"] == pytest.approx(0.2)
    assert table[2]["offsupport_mean"] is None and table[2]["onsupport_per_seed"] == []
    assert verdict(table) == [
        "- native outcome: off-support 2e-05 < 1e-3 (as the barrier predicts)",
        "- trl outcome: off-support 0.003 ≥ 1e-3 (NOT as predicted)",
        "- native process: the base has no off-support eval prompts, so there is no barrier to check (NOT as predicted)",
        "- outcome: final on-support likelihoods differ by 0.1 between backends; the spread across seeds is up to 0.2 "
        "(within the spread)",
    ]


def test_make_bench_on_the_tiny_base(tmp_path):
    stdout = make("bench", "CONFIGS=configs/tiny", f"RUNS={tmp_path}").stdout
    out = tmp_path / "bench"
    results = json.loads((out / "bench.json").read_text())["results"]
    assert [(r["backend"], r["batch"]) for r in results] == [("native", 8), ("trl", 8)]
    native, trl = results
    ratio = native["completions_per_s"] / trl["completions_per_s"]
    assert f"| native | 8 | {native['completions_per_s']:,.0f} | " in stdout and stdout.count(f"| {ratio:.1f}× |") == 1
    for r in results:
        rows = read_metrics(out / f"{r['backend']}_b{r['batch']}" / "metrics.jsonl")
        steps = [row for row in rows if "train/update_time_s" in row]
        # every update's time is kept, as the run logged it; the 2 warm-up updates are left out of the median
        assert r["update_times_s"] == [round(row["train/update_time_s"], 5) for row in steps] and len(steps) == 4
        assert r["seconds_per_update"] == pytest.approx(statistics.median(row["train/update_time_s"] for row in steps[2:]))
        # outcome rewards: one reward query per completion, counted by the run itself
        assert [b["train/reward_queries"] - a["train/reward_queries"] for a, b in zip(steps, steps[1:])] == [r["batch"]] * 3
        assert r["queries_per_s"] == pytest.approx(r["completions_per_s"]) and r["peak_memory_mb"] > 0
        assert r["completions_per_s"] == pytest.approx(r["batch"] / r["seconds_per_update"])
        assert isinstance(r["load_average"], float)


def test_bench_warns_when_other_processes_ran_beside_it():
    from posttrain.bench import busy_warning

    assert busy_warning([{"load_average": 1.9}, {"load_average": 2.4}], cpus=2) is None  # its own two threads
    warning = busy_warning([{"load_average": 1.9}, {"load_average": 3.96}], cpus=2)
    assert warning.startswith("warning: the machine was busy (1-minute load average up to 4.0 on 2 CPUs")


@pytest.mark.parametrize("steps, warmup, words", [("3", "3", "must exceed warmup_steps = 3"),
                                                  ("3", "0", "must be ≥ 1 (a TRL run's first update")])
def test_bench_rejects_a_warmup_that_times_nothing_or_the_setup(tmp_path, steps, warmup, words):
    proc = run_stage("posttrain.bench", "--config", "configs/bench.yaml", "--out_dir", str(tmp_path / "bench"),
                     "--steps", steps, "--warmup_steps", warmup, check=False)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert words in proc.stderr and not (tmp_path / "bench").exists()


@pytest.mark.parametrize("driver, args, words", [
    ("posttrain.bench", ["--posttrain_args", "[--optim.bogus, '1']"], "posttrain_args: command line: --optim.bogus: unknown key"),
    ("posttrain.bench", ["--pretrain_args", "[--model.widht, '8']"], "pretrain_args: command line: --model.widht"),
    ("posttrain.crosscheck", ["--posttrain_args", "[--algo.bogus, '1']"], "posttrain_args: command line: --algo.bogus"),
    ("eval.experiments", ["--extra_args", "[--optim.bogus, '1']"], "extra_args (given to the bases' pretraining too): "
                                                                   "command line: --optim.bogus"),
    # what the driver sets for each run is its own: a user's --run.run_dir would write into another folder, a
    # --run.seed would make every seed's run the same run
    ("posttrain.bench", ["--posttrain_args", "[--run.run_dir, elsewhere]"],
     "posttrain_args: --run.run_dir would override run.run_dir, which the driver sets for each run"),
    ("posttrain.bench", ["--posttrain_args", "[--run, '{run_dir: elsewhere}']"], "--run would override run.checkpoint_every, "
                                                                                "run.progress, run.report_to, run.run_dir"),
    ("eval.experiments", ["--extra_args", "['--base=elsewhere']"], "--base would override base"),
    ("eval.experiments", ["--extra_args", "[--run.seed, '3']"], "extra_args: --run.seed would override run.seed"),
    ("posttrain.crosscheck", ["--posttrain_args", "[--backend, trl]"], "--backend would override backend"),
    ("posttrain.bench", ["--posttrain_args", "[--config, x.yaml]"], "posttrain_args: holds --config, which is not an override"),
    # nothing to measure or compare: refused, not an empty result written over the last one
    ("posttrain.bench", ["--backends", "[]"], "key 'backends': list at least one of: native, trl"),
    ("posttrain.bench", ["--batch_sizes", "[]"], "key 'batch_sizes': must list at least one batch size"),
    ("posttrain.bench", ["--group_size", "0"], "key 'group_size': must be ≥ 2"),
    ("posttrain.crosscheck", ["--backends", "[]"], "key 'backends': list at least one of: native, trl"),
    ("posttrain.crosscheck", ["--posttrain_configs", "{}"], "key 'posttrain_configs': must name at least one arm"),
    # replacing the default overrides drops G = 4: the TRL runs would fail after the base and the native runs
    ("posttrain.crosscheck", ["--posttrain_args", "[--optim.lr, '0.02']"],
     "posttrain_args: algo.group_size 1: the trl backend needs ≥ 2"),
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
