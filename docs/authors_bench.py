"""Times the authors' own policy-gradient loop (github mousavih/rlvr-base-model-barrier) on their Figure 1 workload,
for the README's side-by-side with ``make bench``. Not part of the project: run it with their code and its venv,

    python3 -m venv /tmp/authors-venv && /tmp/authors-venv/bin/pip install torch==2.13.0 omegaconf hydra-core
    git clone https://github.com/mousavih/rlvr-base-model-barrier /tmp/authors
    /tmp/authors-venv/bin/python docs/authors_bench.py /tmp/authors [threads]

It runs their ``outcome_reward_pg`` and ``process_reward_pg`` (d = 32, k = 32, N = 128, batch 1,024, Adagrad 0.1, the
Gaussian-mixture inputs, on-policy) for a few steps each and prints completions/s (a step's 1,024 responses over its
wall time, and per second of the calling thread's CPU time, which other processes on a shared machine change far
less; with one torch thread that is all of its work)."""

import sys
import time

import torch

sys.path.insert(0, sys.argv[1])
from utils.data_generator import GroundTruth, MixtureInputGenerator, sample_batch  # noqa: E402
from utils.training import outcome_reward_pg, process_reward_pg  # noqa: E402

torch.set_num_threads(int(sys.argv[2]) if len(sys.argv) > 2 else 2)
d, k, N, B = 32, 32, 128, 1024


def run(loop, outcome: bool, steps: int, gt, gen, test_x, test_y) -> None:
    loop(d, k, N, gt, torch.device("cpu"), test_x, test_y, steps=steps, batch_size=B,
         optimizer_partial=lambda p: torch.optim.Adagrad(p, lr=0.1), test_every=10**9, baseline=outcome,
         data_generator=gen)


for name, loop in (("outcome", outcome_reward_pg), ("process", process_reward_pg)):
    torch.manual_seed(0)
    gt, gen = GroundTruth(), MixtureInputGenerator(num_mix=32, sigma=0.05)
    test = sample_batch(1024, d, k, N, gt, torch.device("cpu"), gen)
    run(loop, name == "outcome", 1, gt, gen, *test)  # warm-up: first calls build kernel caches
    spent = []
    for steps in (2, 8):  # the difference leaves out each call's set-up
        cpu, wall = time.thread_time(), time.perf_counter()
        run(loop, name == "outcome", steps, gt, gen, *test)
        spent.append((time.thread_time() - cpu, time.perf_counter() - wall))
    per_cpu, per_wall = ((b - a) / 6 for a, b in zip(*spent))
    print(f"authors' {name} PG: {B / per_wall:,.0f} completions/s of wall time, {B / per_cpu:,.0f} of this thread's "
          f"CPU time ({torch.get_num_threads()} threads)")
