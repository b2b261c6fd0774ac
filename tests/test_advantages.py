"""Every baseline against a hand computation, and the batch baselines over two processes."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from posttrain.advantages import advantages

# 4 responses of 2 prompts (G = 2), N = 2: process rewards
R = torch.tensor([[1.0, 1.0], [1.0, 0.0], [0.0, 0.0], [1.0, 1.0]])


def test_none_is_the_reward():
    assert torch.equal(advantages(R, "none"), R)


def test_batch_mean():
    assert torch.allclose(advantages(R, "batch_mean"), R - 5 / 8)


def test_position_mean():
    assert torch.allclose(advantages(R, "position_mean"), R - torch.tensor([[0.75, 0.5]]))


def test_group_mean_and_std_scaling():
    expected = torch.tensor([[0.0, 0.5], [0.0, -0.5], [-0.5, -0.5], [0.5, 0.5]])
    assert torch.allclose(advantages(R, "group_mean", group_size=2), expected)
    # sample std of a pair {a, b} is |a - b| / sqrt(2); a zero-std group stays 0
    scaled = advantages(R, "group_mean", group_size=2, scale_std=True)
    s = 2**-0.5
    assert torch.allclose(scaled, torch.tensor([[0.0, 0.5 / (s + 1e-4)], [0.0, -0.5 / (s + 1e-4)],
                                                [-0.5 / (s + 1e-4), -0.5 / (s + 1e-4)], [0.5 / (s + 1e-4), 0.5 / (s + 1e-4)]]))


def test_rloo_leaves_one_out():
    r = torch.tensor([[1.0], [0.0], [1.0], [0.0], [0.0], [0.0]])  # G = 3
    expected = torch.tensor([[1 - 1 / 2], [0 - 2 / 2], [1 - 1 / 2], [0.0], [0.0], [0.0]])
    assert torch.allclose(advantages(r, "rloo", group_size=3), expected)


def test_mask_excludes_positions_from_means_and_zeroes_them():
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0], [1.0, 0.0], [1.0, 1.0]])
    adv = advantages(R, "batch_mean", mask=mask)
    mean = (1 + 1 + 1 + 0 + 1 + 1) / 6
    assert torch.allclose(adv, (R - mean) * mask)


def test_group_baselines_need_groups():
    with pytest.raises(ValueError, match="baseline 'rloo' needs group_size ≥ 2 dividing the batch \\(4\\)"):
        advantages(R, "rloo", group_size=3)


def test_group_baselines_with_a_mask_use_only_the_positions_that_exist():
    # G = 3, N = 2; the second response stopped after its first position (its second reward is a placeholder)
    r = torch.tensor([[1.0, 1.0], [0.0, 9.0], [1.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0], [1.0, 1.0]])
    # position 1: rewards {1, 0, 1}, mean 2/3; position 2: rewards {1, 0} of rows 0 and 2, mean 1/2
    group = torch.tensor([[1 / 3, 0.5], [-2 / 3, 0.0], [1 / 3, -0.5]])
    assert torch.allclose(advantages(r, "group_mean", group_size=3, mask=mask), group)
    # sample std: position 1 sqrt(((1/3)² + (2/3)² + (1/3)²) / 2) = sqrt(1/3); position 2 sqrt((1/4 + 1/4) / 1)
    std = torch.tensor([[3**-0.5, 0.5**0.5]])
    assert torch.allclose(advantages(r, "group_mean", group_size=3, scale_std=True, mask=mask), group / (std + 1e-4))
    # leave one out: position 1 the mean of the two others; position 2 the one other that exists
    rloo = torch.tensor([[1 - 1 / 2, 1 - 0], [0 - 2 / 2, 0.0], [1 - 1 / 2, 0 - 1]])
    assert torch.allclose(advantages(r, "rloo", group_size=3, mask=mask), rloo)


# two processes' halves of a batch of 4 (N = 2); the second process has no position 2 at all
MASK = torch.tensor([[1.0, 1.0], [1.0, 0.0], [1.0, 0.0], [1.0, 0.0]])
HALVES = (slice(0, 2), slice(2, 4))


def split(baseline: str, mean: bool) -> torch.Tensor:
    """Each half's advantages with ``reduce`` summing (or, as ``Accelerator.reduce`` does, averaging) what the two
    halves hand it, in-process."""
    local = []
    for h in HALVES:  # what each process hands to reduce
        advantages(R[h], baseline, mask=MASK[h], reduce=lambda t: local.append(t) or t)
    together = (local[0] + local[1]) / (2 if mean else 1)
    return torch.cat([advantages(R[h], baseline, mask=MASK[h], reduce=lambda t: together) for h in HALVES])


@pytest.mark.parametrize("mean", [False, True])
def test_batch_baselines_do_not_change_with_the_number_of_processes(mean):
    # batch_mean: rewards 1, 1, 1, 0, 1 at the 5 positions that exist, mean 4/5
    assert torch.allclose(split("batch_mean", mean), (R - 4 / 5) * MASK)
    assert torch.allclose(split("batch_mean", mean), advantages(R, "batch_mean", mask=MASK))
    # position_mean: position 1 over all four rows 3/4; position 2 only row 0's reward, though half 2 has none there
    assert torch.allclose(split("position_mean", mean), (R - torch.tensor([[0.75, 1.0]])) * MASK)
    assert torch.allclose(split("position_mean", mean), advantages(R, "position_mean", mask=MASK))
    # without the reduce, each process would subtract its own half's mean: 3/3 and 1/2
    alone = torch.cat([advantages(R[h], "batch_mean", mask=MASK[h]) for h in HALVES])
    assert torch.allclose(alone, (R - torch.tensor([[1.0], [1.0], [0.5], [0.5]])) * MASK)


def data_parallel_worker(out: str) -> None:
    """One of two torchrun processes with half the batch and posttrain's reduce (``Accelerator.reduce``, gloo on
    CPU); rank 0 saves the gathered advantages."""
    from barrierlab.training import RunConfig, make_accelerator

    acc = make_accelerator(RunConfig())
    h = HALVES[acc.process_index]
    adv = {b: acc.gather(advantages(R[h], b, mask=MASK[h], reduce=acc.reduce)) for b in ("batch_mean", "position_mean")}
    if acc.is_main_process:
        torch.save(adv, out)
    acc.end_training()


def test_batch_baselines_on_two_torchrun_processes(tmp_path):
    out = tmp_path / "adv.pt"
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           __file__, str(out)], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    got = torch.load(out)
    assert torch.allclose(got["batch_mean"], (R - 4 / 5) * MASK)
    assert torch.allclose(got["position_mean"], (R - torch.tensor([[0.75, 1.0]])) * MASK)


if __name__ == "__main__":  # under torchrun, for test_batch_baselines_on_two_torchrun_processes
    data_parallel_worker(sys.argv[1])
