"""make crosscheck and make bench end to end on the tiny configs: both backends, the table, the figure."""

from __future__ import annotations

import json
import statistics

import pytest

from tests.conftest import TINY, run_stage


@pytest.mark.slow  # eight post-training runs, half of them through TRL: about 3 minutes
def test_crosscheck_on_tiny_configs(tmp_path):
    out = tmp_path / "crosscheck"
    run_stage("posttrain.crosscheck", "--config", "configs/crosscheck.yaml", "--out_dir", str(out),
              "--pretrain_config", str(TINY / "pretrain.yaml"), "--pretrain_args", "[]", "--seeds", "[0, 1]",
              "--max_queries", "96", "--posttrain_configs",
              f"{{outcome: {TINY / 'posttrain_outcome.yaml'}, process: {TINY / 'posttrain_process.yaml'}}}")
    table = json.loads((out / "crosscheck.json").read_text())["table"]
    assert {(r["arm"], r["backend"]) for r in table} == {(a, b) for a in ("outcome", "process") for b in ("native", "trl")}
    assert all(r["seeds"] == 2 and 0 <= r["offsupport_mean"] <= 1 for r in table)
    assert (out / "crosscheck.png").stat().st_size > 10_000 and "native" in (out / "report.md").read_text()


def test_bench_on_a_tiny_base(tmp_path):
    out = tmp_path / "bench"
    run_stage("posttrain.bench", "--config", "configs/bench.yaml", "--out_dir", str(out),
              "--pretrain_config", str(TINY / "pretrain.yaml"), "--batch_sizes", "[8, 16]", "--group_size", "4",
              "--steps", "4", "--warmup_steps", "2")
    results = json.loads((out / "bench.json").read_text())["results"]
    assert {(r["backend"], r["batch"]) for r in results} == {(b, n) for b in ("native", "trl") for n in (8, 16)}
    for r in results:
        assert r["completions_per_s"] > 0 and r["peak_memory_mb"] > 0
        assert abs(r["completions_per_s"] * r["seconds_per_update"] - r["batch"]) < 1e-6 * r["batch"]
        # every update's time is kept; the warm-up is left out of the median
        assert len(r["update_times_s"]) == 4
        assert abs(r["seconds_per_update"] - statistics.median(r["update_times_s"][2:])) < 1e-5


def test_bench_rejects_a_warmup_as_long_as_the_run(tmp_path):
    proc = run_stage("posttrain.bench", "--config", "configs/bench.yaml", "--out_dir", str(tmp_path / "bench"),
                     "--steps", "3", "--warmup_steps", "3", check=False)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert "steps" in proc.stderr and "warmup_steps = 3" in proc.stderr
    assert not (tmp_path / "bench").exists()
