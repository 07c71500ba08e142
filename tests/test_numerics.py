"""The float32 comparison helper: it passes what float32 rounding does, and fails what a bug does."""

import pytest
import torch

from .numerics import FLOAT32_EPS, RTOL, assert_close_f32, f32_tolerances


def test_the_tolerances_are_float32_ulps():
    assert FLOAT32_EPS == 2.0**-23
    assert RTOL == pytest.approx(7.63e-6, rel=1e-3)
    assert f32_tolerances() == {"rtol": RTOL, "atol": RTOL}
    assert f32_tolerances(tokens=torch.tensor([3, 7, 5])) == {"rtol": RTOL, "atol": 7 * RTOL}
    assert f32_tolerances(tokens=4, ulps=2) == {"rtol": 2 * FLOAT32_EPS, "atol": 8 * FLOAT32_EPS}


def test_a_loss_rounded_otherwise_on_another_cpu_passes():
    """TRL's sppo_hard loss on one CPU against prefopt's (85.126556 vs 85.126572, two float32
    ulps apart): an absolute 1e-5 fails them, although only the rounding differs."""
    ours, theirs = torch.tensor(85.126556), torch.tensor(85.126572)
    assert ours != theirs and float(ours) != pytest.approx(float(theirs), abs=1e-5)
    assert_close_f32(ours, theirs)
    assert_close_f32(float(ours), float(theirs))  # floats as well as tensors


def test_a_summed_log_prob_rounded_otherwise_passes_and_a_lost_token_fails():
    torch.manual_seed(0)
    per_token = -torch.rand(4, 30) * 6  # 30 tokens per sequence: sums of about -90
    summed = per_token.sum(-1)
    other_order = per_token.double().sum(-1).float()  # summed exactly, then rounded once
    assert_close_f32(other_order, summed, tokens=30)
    masked_one_token = summed.clone()
    masked_one_token[2] -= per_token[2, 0]  # the first completion token dropped by a mask bug
    with pytest.raises(AssertionError):
        assert_close_f32(masked_one_token, summed, tokens=30)


def test_a_small_token_error_is_caught_where_a_loose_rtol_would_miss_it():
    """One token's log-prob 0.01 off in a sum of 90: about 1e-4 relative, 11 times the budget."""
    summed = torch.tensor([-90.0, -45.0])
    with pytest.raises(AssertionError, match="Mismatched elements: 1 / 2"):
        assert_close_f32(summed + torch.tensor([0.01, 0.0]), summed, tokens=30)


def test_a_label_comes_before_torchs_report():
    with pytest.raises(AssertionError, match=r"^rewards/chosen: Scalars are not close"):
        assert_close_f32(1.0, 1.1, msg="rewards/chosen")
