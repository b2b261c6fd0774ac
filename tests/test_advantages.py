"""Every baseline against a hand computation."""

from __future__ import annotations

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
