"""The drivers on a real local Ray (no mocks): runs at once, a failed run reported while the others finish, a rerun
that reuses what finished without starting Ray, and Ctrl-C leaving no process behind; and their --help and config
errors, which import neither Ray nor torch."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import yaml

from barrierlab.errors import UserError
from barrierlab.rundir import read_metrics
from experiments.cluster import RayConfig, run_resources
from tests.conftest import ROOT, TINY, run_stage, wait_for

TWO_CPUS = pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="two runs at once need two CPUs")


@pytest.mark.parametrize("driver, args, code, says", [
    ("sweep", ["--help"], 0, "--ray.cpus_per_run"),
    ("crosscheck", ["--help"], 0, "--ray.address"),
    ("bench", ["--help"], 0, "--posttrain_args"),
    ("sweep", ["--ray.address", "nohost"], 2, "key 'ray.address': must be null (a local Ray), 'auto' or host:port"),
    ("sweep", ["--extra_args", "[--train.lr, '-1']"], 2, "pretraining too): command line: key 'train.lr': must be > 0"),
    ("crosscheck", ["--ray.cpus_per_run", "0"], 2, "key 'ray.cpus_per_run': must be ≥ 1, or null"),
    ("crosscheck", ["--posttrain_args", "[--optim.lr, '-1']"], 2, "posttrain_args: command line: key 'optim.lr'"),
    ("bench", ["--batch_sizes", "[8, 8]"], 2, "key 'batch_sizes'"),
    ("prm", ["--help"], 0, "--ray.cpus_per_run"),
    ("paper", ["--help"], 0, "--ray.cpus_per_run"),
    ("paper", ["--models", "[linear, linear]"], 2, "key 'models'"),
    ("crosscheck", ["--posttrain_args", "[--algo.baseline, none, --algo.group_size, '1']"], 2,
     "posttrain_args: algo.group_size 1: the trl backend needs ≥ 2"),
    ("prm", ["--budget", "0"], 2, "key 'budget': must be ≥ 1"),
])
def test_help_and_config_errors_import_neither_ray_nor_torch(driver, args, code, says):
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", f"experiments.{driver}", *args], cwd=ROOT,
                          capture_output=True, text=True)
    imported = {line.rsplit("|", 1)[1].strip().split(".")[0] for line in proc.stderr.splitlines()
                if line.startswith("import time:") and "|" in line}
    assert "barrierlab" in imported and not imported & {"ray", "torch", "transformers", "matplotlib", "trl"}
    said = proc.stdout + "".join(line for line in proc.stderr.splitlines(True) if not line.startswith("import time:"))
    assert proc.returncode == code and says in said, said[-2000:]


def test_what_a_run_reserves_fits_a_node_or_is_one_line():
    cpu_nodes, gpu_node = [{"CPU": 2.0}, {"CPU": 8.0}], [{"CPU": 16.0, "GPU": 8.0}, {"CPU": 0.0}]
    assert run_resources(RayConfig(), 4, cpu_nodes) == (4, 0)  # torch's threads here, where a node holds them
    assert run_resources(RayConfig(), 16, cpu_nodes) == (8, 0)  # capped at the largest node: Ray would wait forever
    assert run_resources(RayConfig(cpus_per_run=2), 16, cpu_nodes) == (2, 0)
    assert run_resources(RayConfig(), 16, gpu_node) == (2, 1.0)  # a GPU's share of its node's CPUs
    assert run_resources(RayConfig(gpus_per_run=0.5), 16, gpu_node) == (1, 0.5)
    with pytest.raises(UserError, match=r"ray.cpus_per_run 9: no node of the Ray cluster has that much for one run "
                                        r"\(its nodes: 2 CPUs, 8 CPUs\); lower them"):
        run_resources(RayConfig(cpus_per_run=9), 2, cpu_nodes)
    with pytest.raises(UserError, match="ray.cpus_per_run 16 and ray.gpus_per_run 9: no node"):
        run_resources(RayConfig(gpus_per_run=9.0), 16, gpu_node)


def sweep_config(tmp_path: Path, arms: dict, Ns: list[int], seeds: list[int], max_queries: int) -> Path:
    """A scaling experiment on the tiny bases, with runs that never reach the target (they spend the whole budget)."""
    cfg = {"experiment": "scaling", "pretrain_config": str(TINY / "pretrain.yaml"), "posttrain_configs": arms, "Ns": Ns,
           "seeds": seeds, "target_likelihood": 1.0, "max_queries": max_queries, "ray": {"cpus_per_run": 1}}
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def times(run: Path) -> tuple[float, float]:
    """When a run started (its config.yaml is written once, at its start) and when it last logged."""
    return (run / "config.yaml").stat().st_mtime, (run / "metrics.jsonl").stat().st_mtime


def files(folder: Path) -> dict:
    return {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in folder.rglob("*") if p.is_file()}


@TWO_CPUS
def test_runs_go_at_once_a_rerun_reuses_them_and_a_failure_is_reported_while_the_others_finish(tmp_path):
    outcome, out = str(TINY / "posttrain_outcome.yaml"), tmp_path / "sweep"
    config = sweep_config(tmp_path, {"outcome": outcome}, Ns=[3, 4], seeds=[0], max_queries=320)
    proc = run_stage("experiments.sweep", "--config", str(config), "--out_dir", str(out))
    start = re.search(r"a local Ray \(([\d.]+) s to start\): \d+ CPUs, 0 GPUs; each run 1 CPU thread\n", proc.stdout)
    print(f"ray.init: {start[1]} s")
    # two at a time: the two bases, then the two post-training runs (each started before the other ended)
    for a, b in (("N3/base", "N4/base"), ("N3/outcome_s0", "N4/outcome_s0")):
        (start_a, end_a), (start_b, end_b) = times(out / a), times(out / b)
        assert start_a < end_b and start_b < end_a, (a, b)
    runs = json.loads((out / "results.json").read_text())["runs"]
    assert [(r["N"], r["arm"], r["queries"], r["censored"]) for r in runs] == [
        (n, "outcome", read_metrics(out / f"N{n}" / "outcome_s0" / "metrics.jsonl")[-1]["done/reward_queries"], True)
        for n in (3, 4)]
    assert runs[0]["queries"] >= 320

    # the same command again: every run is there, so nothing runs, not even Ray, and no file of a run changes
    kept = {run: files(out / run) for run in ("N3/base", "N4/base", "N3/outcome_s0", "N4/outcome_s0")}
    proc = run_stage("experiments.sweep", "--config", str(config), "--out_dir", str(out))
    assert "Ray" not in proc.stdout and "done in" not in proc.stdout
    assert {run: files(out / run) for run in kept} == kept

    # at N = 3, another seed and an arm whose reward answers NaN (its runs fail at their first step): the new outcome
    # run finishes, each failure is reported with its log's last lines, then one line names them all
    broken = tmp_path / "broken.yaml"
    broken.write_text(Path(outcome).read_text().replace("name: outcome", "name: tests.user_reward:NaNReward"))
    proc = run_stage("experiments.sweep", "--config", str(config), "--out_dir", str(out), "--Ns", "[3]", "--seeds", "[0, 1]",
                     "--posttrain_configs", json.dumps({"outcome": outcome, "broken": str(broken)}), check=False)
    *blocks, last = proc.stderr.strip().split("\n")
    failed = f"{out}/N3/broken_s0, {out}/N3/broken_s1"
    assert proc.returncode == 2 and last == (f"error: 2 runs failed (their logs' last lines are above): {failed}; fix the "
                                             "cause and rerun the same command (finished runs are reused)"), proc.stderr
    assert sum(line.endswith("posttrain FAILED; its log ends:") for line in blocks) == 2
    assert sum("NaN" in line for line in blocks) >= 2, proc.stderr
    assert {run: files(out / run) for run in kept} == kept
    assert read_metrics(out / "N3" / "outcome_s1" / "metrics.jsonl")[-1]["done/stop_reason"] == "max_queries"


def processes_with(marker: str) -> list[int]:
    """The live processes whose environment holds ``marker`` (the driver, Ray's processes, the runs)."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            alive = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
            if entry.name.isdigit() and alive and marker.encode() in (entry / "environ").read_bytes():
                found.append(int(entry.name))
        except OSError:  # gone meanwhile, or not ours
            pass
    return found


@TWO_CPUS
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
@pytest.mark.slow  # 20 to 45 s each, under load
@pytest.mark.parametrize("group", [True, False], ids=["ctrl-c in a terminal", "sigint to the driver alone"])
def test_ctrl_c_stops_the_sweep_and_leaves_no_process(tmp_path, group):
    config = sweep_config(tmp_path, {"outcome": str(TINY / "posttrain_outcome.yaml")}, Ns=[3], seeds=[0, 1],
                          max_queries=10**8)
    out, marker = tmp_path / "sweep", f"BARRIERLAB_TEST_{uuid.uuid4().hex}"
    env = {**os.environ, "OMP_NUM_THREADS": "1", marker: "1"}
    # as a terminal starts it: its own process group, Ctrl-C not ignored
    proc = subprocess.Popen([sys.executable, "-m", "experiments.sweep", "--config", str(config), "--out_dir", str(out)],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        runs = [out / "N3" / f"outcome_s{seed}" for seed in (0, 1)]
        assert wait_for(lambda: all((run / "metrics.jsonl").exists() for run in runs), 120), proc.stderr
        stages = [int((run / ".lock").read_text()) for run in runs]
        assert set(stages) <= set(processes_with(marker))  # two post-training runs at once (they never end)
        # a terminal signals the driver's process group (Ray's own services among it, not its workers); a scheduler
        # (timeout -s INT, scancel --signal=INT) may signal the driver alone
        (os.killpg if group else os.kill)(proc.pid, signal.SIGINT)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 130, err
        assert err.strip().endswith("interrupted: the last checkpoint is intact; re-run the same command to resume")
        assert wait_for(lambda: not processes_with(marker), 15), processes_with(marker)
    finally:
        for pid in processes_with(marker):  # a failure must not leave hundred-million-query runs behind
            os.kill(pid, signal.SIGKILL)
