"""The drivers' runs as Ray tasks: one GPU per run where the cluster has GPUs, a set number of CPU threads per run
otherwise.

A driver plans its runs (``experiments.stages.plan_run``: a finished run is reused, an unfinished one resumes, a
folder of other settings is refused before anything starts), then hands them to ``Cluster.run`` wave by wave, the
bases before the runs that post-train them. By default Ray is a local one that the driver starts on its first wave
with work and stops at the end (nothing to install or keep running); ``ray.address`` joins a running cluster. In a
Ray worker each run is still a forked child of the process that imported its stage once (``stages.run_stage``): its
own seeds, accelerator state, thread count and exit code. Ray and torch are imported only once there is work.
"""

from __future__ import annotations

import logging
import os
import re
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from barrierlab.config import require
from barrierlab.errors import UserError


@dataclass
class RayConfig:
    address: str | None = None
    """Ray cluster to run on. null: a local Ray started for this command and stopped at its end. 'auto' (the cluster
    this machine joined with `ray start`) or host:port: a running cluster, whose nodes must all see out_dir and the
    configs at the same paths (a shared filesystem; docs/clusters.md)."""
    cpus_per_run: int | None = None
    """CPU threads of each run (torch.set_num_threads in its process), the CPUs it reserves from Ray. null: torch's
    default here (every core, or OMP_NUM_THREADS if set), so on a CPU machine runs go one at a time and give the
    numbers of a run started by hand; never more than one node has, and with GPUs, a run's share of the smallest GPU
    node's CPUs. 1 on a CPU machine runs one run per core, with the numbers of OMP_NUM_THREADS=1 (1 and 2 threads may
    round differently)."""
    gpus_per_run: float = 1.0
    """GPUs each run reserves where the cluster has GPUs (1: one run per GPU, which it sees as cuda:0; 0.5: two runs
    share a GPU). Unused on a cluster without GPUs."""

    def check(self):
        require(self.cpus_per_run is None or self.cpus_per_run >= 1, "cpus_per_run", "must be ≥ 1, or null")
        require(self.gpus_per_run > 0, "gpus_per_run", "must be > 0")
        require(self.address in (None, "auto") or re.fullmatch(r"[^\s:/]+:\d+", self.address) is not None, "address",
                "must be null (a local Ray), 'auto' or host:port of a Ray head")


@dataclass(frozen=True)
class Job:
    """One stage run: ``python -m <stage> args``, writing the run folder ``run_dir``."""

    stage: str
    run_dir: Path
    args: tuple[str, ...]


def run_job(job: Job, cwd: str, threads: int) -> tuple[float, float, str | None]:
    """(In a Ray worker) ``job`` in a forked child with ``threads`` CPU threads, from the driver's working directory
    ``cwd``: its start and end times and, if it failed, its log's last lines."""
    from experiments.stages import StageFailed, run_stage

    if not Path(cwd).is_dir():
        raise UserError(f"the driver's working directory {cwd} does not exist on node {os.uname().nodename}; every "
                        "node needs the project and out_dir at the same paths (a shared filesystem)")
    os.chdir(cwd)  # stage configs and run folders are given relative to it, as in a run started by hand
    if cwd not in sys.path:
        sys.path.insert(0, cwd)  # a user's reward module, importable from there
    start = time.time()
    try:
        run_stage(job.stage, *job.args, threads=threads)
    except StageFailed as err:
        return start, time.time(), err.tail
    return start, time.time(), None


def check_reachable(address: str) -> None:
    """One line, at once, if nothing answers at ``address`` (host:port): Ray itself retries for minutes."""
    host, port = address.rsplit(":", 1)
    try:
        socket.create_connection((host, int(port)), timeout=10).close()
    except OSError as err:
        raise UserError(f"ray.address {address}: nothing answers there ({err.strerror or err}); start the head with "
                        "`ray start --head`, or leave ray.address null for a local Ray") from None


def run_resources(cfg: RayConfig, default: int, nodes: list[dict]) -> tuple[int, float]:
    """The CPU threads and GPUs each run reserves on a cluster whose live nodes have the resources ``nodes``
    (``default``: torch's thread count on the driver's machine, capped at what one node has), or one line if no node
    can hold a run: Ray would keep such a task waiting forever."""
    gpu_nodes = [r for r in nodes if r.get("GPU", 0) > 0]
    if gpu_nodes:  # a run's share of a GPU node's CPUs, on the smallest such node
        gpus = cfg.gpus_per_run
        threads = cfg.cpus_per_run or max(1, min(default, min(int(r.get("CPU", 0) * gpus / r["GPU"]) for r in gpu_nodes)))
    else:
        gpus = 0
        threads = cfg.cpus_per_run or max(1, min(default, max(int(r.get("CPU", 0)) for r in nodes)))
    if not any(r.get("CPU", 0) >= threads and r.get("GPU", 0) >= gpus for r in gpu_nodes or nodes):
        sizes = ", ".join(sorted({f"{r.get('CPU', 0):g} CPUs" + (f" {r['GPU']:g} GPUs" if r.get("GPU") else "")
                                  for r in nodes}))
        raise UserError(f"ray.cpus_per_run {threads}{f' and ray.gpus_per_run {gpus:g}' if gpus else ''}: no node of the "
                        f"Ray cluster has that much for one run (its nodes: {sizes}); lower them")
    return threads, gpus


class Cluster:
    """Ray for one driver invocation, started on the first wave with work: ``with Cluster(cfg.ray, out) as cluster:
    cluster.run(bases); cluster.run(runs); cluster.check()``. ``out``: the driver's output folder."""

    def __init__(self, cfg: RayConfig, out: Path):
        self.cfg, self.out = cfg, out
        self.started = False
        self.task = None  # run_job as a Ray task with what each run reserves, once Ray is up
        self.threads = 0
        self.failed: list[Job] = []
        self.seconds: dict[Path, float] = {}  # wall time of each run that finished here, by run folder

    def __enter__(self) -> Cluster:
        return self

    def __exit__(self, *exc) -> None:
        if self.started:
            import ray

            ray.shutdown()  # a local Ray stops with its workers (and their runs: they die with their worker)

    def start(self) -> None:
        """Start a local Ray ("local": a new one even where a cluster runs) or join ``ray.address``; what each run
        reserves from it."""
        import ray
        import torch

        default = torch.get_num_threads()  # before Ray: its workers get OMP_NUM_THREADS set to what they reserve
        if self.cfg.address not in (None, "auto"):
            check_reachable(self.cfg.address)
        started, self.started = time.time(), True
        try:
            ray.init(address=self.cfg.address or "local", include_dashboard=False, logging_level=logging.ERROR,
                     log_to_driver=False, configure_logging=True)
        except ConnectionError as err:
            raise UserError(f"ray.address {self.cfg.address}: no Ray cluster there ({str(err).splitlines()[0]}); start "
                            "one with `ray start --head`, or leave ray.address null for a local Ray") from None
        self.threads, gpus = run_resources(self.cfg, default, [n["Resources"] for n in ray.nodes() if n["Alive"]])
        self.task = ray.remote(run_job).options(num_cpus=self.threads, num_gpus=gpus, max_retries=0)
        total = ray.cluster_resources()
        where = f"Ray at {self.cfg.address}" if self.cfg.address else "a local Ray"
        print(f"{where} ({time.time() - started:.1f} s to start): {total.get('CPU', 0):g} CPUs, {total.get('GPU', 0):g} "
              f"GPUs; each run {self.threads} CPU thread{'s' * (self.threads > 1)}{f', {gpus:g} GPU' if gpus else ''}",
              flush=True)
        if self.cfg.address:
            print(f"run folders go to {self.out.resolve()} and configs are read from {os.getcwd()}: every node must see "
                  "both at these paths (a shared filesystem)", flush=True)

    def run(self, jobs: list[Job | None]) -> list[Job]:
        """Run ``jobs`` (None: a finished run, left out) at once as far as the resources go, each failure reported with
        its log's last lines as it comes while the others go on; the failed jobs (also kept for ``check``). Ctrl-C
        cancels every job: each run dies with its worker."""
        jobs = [job for job in jobs if job is not None]
        if not jobs:
            return []
        if self.task is None:
            self.start()
        import ray

        cwd = os.getcwd()
        refs = {self.task.remote(job, cwd, self.threads): job for job in jobs}
        pending, failed = list(refs), []
        try:
            while pending:  # waits of a second: Python handles a Ctrl-C (SIGINT) only between them
                ready, pending = ray.wait(pending, num_returns=1, timeout=1.0)
                for ref in ready:
                    if not self.report(ref, refs[ref], f"[{len(refs) - len(pending)}/{len(refs)}]"):
                        failed.append(refs[ref])
        except KeyboardInterrupt:
            for ref in pending:
                ray.cancel(ref, force=True)  # kills the worker; the run, its forked child, dies with it
            raise
        return failed

    def report(self, ref, job: Job, count: str) -> bool:
        """Print how the finished ``job`` (its task ``ref``) went, a failure with its log's last lines; whether it
        succeeded."""
        import ray

        try:
            start, end, tail = ray.get(ref)
        except ray.exceptions.RayError as err:  # the worker died, or the job could not start on its node
            start = end = time.time()
            tail = str(err.cause if isinstance(err, ray.exceptions.RayTaskError) else err).strip()
        if tail is None:
            self.seconds[job.run_dir] = round(end - start, 1)
            print(f"{count} {job.run_dir}: {job.stage} done in {end - start:.1f} s", flush=True)
            return True
        self.failed.append(job)
        lines = "\n".join("    " + line for line in tail.splitlines()[-8:])
        print(f"{count} {job.run_dir}: {job.stage} FAILED; its log ends:\n{lines}", file=sys.stderr, flush=True)
        return False

    def check(self) -> None:
        """One line naming the failed runs, if any (a failed base's runs were not started)."""
        if self.failed:
            names = ", ".join(str(job.run_dir) for job in self.failed)
            bases = any(job.stage == "pretrain" for job in self.failed)
            raise UserError(f"{len(self.failed)} run{'s' * (len(self.failed) > 1)} failed (their logs' last lines are "
                            f"above): {names}{'; the runs on a failed base were not started' if bases else ''}; fix the "
                            "cause and rerun the same command (finished runs are reused)")
