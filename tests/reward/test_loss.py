"""The Bradley–Terry loss of a reward model, its margin and centering terms, worked by hand."""

import math

import pytest
import torch

from prefopt.reward.loss import bradley_terry_loss


def test_bradley_terry_loss_and_accuracy_by_hand():
    """Two pairs: r_c − r_r = 2 − 0 = 2 and 0.5 − 1.5 = −1.

    loss = (−log σ(2) − log σ(−1)) / 2 = (log(1 + e^−2) + log(1 + e^1)) / 2
         = (0.126928 + 1.313262) / 2 = 0.720095
    accuracy = [1, 0] (the second pair is ordered wrongly), margins = [2, −1], mean 0.5.
    """
    out = bradley_terry_loss(torch.tensor([2.0, 0.5]), torch.tensor([0.0, 1.5]))
    want = (math.log1p(math.exp(-2)) + math.log1p(math.exp(1))) / 2
    assert out.loss.item() == pytest.approx(want, rel=1e-6)
    assert out.loss.item() == pytest.approx(0.720095, rel=1e-5)
    assert out.metrics["accuracy"].tolist() == [1.0, 0.0]
    assert out.metrics["margin"].tolist() == [2.0, -1.0]


def test_a_tie_costs_ln2_and_counts_as_wrong():
    """r_c = r_r: −log σ(0) = ln 2 = 0.693147; accuracy 0 (strictly greater, as TRL)."""
    out = bradley_terry_loss(torch.tensor([0.3]), torch.tensor([0.3]))
    assert out.loss.item() == pytest.approx(math.log(2), rel=1e-6)
    assert out.metrics["accuracy"].tolist() == [0.0]


def test_the_margin_is_subtracted_inside_the_sigmoid():
    """r_c − r_r = 2, margin 1: −log σ(2 − 1) = log(1 + e^−1) = 0.313262; with a per-pair
    margin [1, 3]: (log(1 + e^−1) + log(1 + e^1)) / 2 = (0.313262 + 1.313262) / 2 = 0.813262."""
    chosen, rejected = torch.tensor([2.0, 2.0]), torch.tensor([0.0, 0.0])
    assert bradley_terry_loss(chosen, rejected, 1.0).loss.item() == pytest.approx(
        0.313262, rel=1e-5
    )
    per_pair = bradley_terry_loss(chosen, rejected, torch.tensor([1.0, 3.0]))
    assert per_pair.loss.item() == pytest.approx(0.813262, rel=1e-5)
    # The margin changes the loss only: accuracy and the logged margin are the rewards' own.
    assert per_pair.metrics["margin"].tolist() == [2.0, 2.0]


def test_reward_centering_adds_c_times_the_mean_square_of_the_sums():
    """TRL's center_rewards_coefficient: + c·mean((r_c + r_r)²). Rewards (2, 0) and (0.5, 1.5):
    sums 2 and 2, mean square 4; c = 0.01 adds 0.04 to 0.720095 = 0.760095. Its gradient
    pulls both rewards of a pair down alike (∂/∂r_c = ∂/∂r_r = c·2·(r_c + r_r)/B = 0.02 here,
    on top of the Bradley–Terry gradient)."""
    chosen = torch.tensor([2.0, 0.5], requires_grad=True)
    rejected = torch.tensor([0.0, 1.5], requires_grad=True)
    plain = bradley_terry_loss(chosen, rejected).loss
    centred = bradley_terry_loss(chosen, rejected, center_rewards_coefficient=0.01).loss
    assert centred.item() == pytest.approx(0.760095, rel=1e-5)
    assert (centred - plain).item() == pytest.approx(0.04, rel=1e-5)
    (g_plain_c, g_plain_r) = torch.autograd.grad(plain, (chosen, rejected))
    (g_c, g_r) = torch.autograd.grad(centred, (chosen, rejected))
    torch.testing.assert_close(g_c - g_plain_c, torch.full((2,), 0.02), rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(g_r - g_plain_r, torch.full((2,), 0.02), rtol=1e-5, atol=1e-7)
