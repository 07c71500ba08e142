"""RLOO's rewards, leave-one-out advantages and clipped loss, worked by hand."""

from __future__ import annotations

import math

import pytest
import torch

from prefopt.errors import PrefoptError
from prefopt.losses import CompletionLogps, RLOOLoss, SampleLogps
from prefopt.losses.rloo import rloo_advantages

NAN = float("nan")


def test_advantages_are_the_reward_minus_the_mean_of_the_other_samples():
    """β = 0.5, k = 3.

    Prompt 0: scores 1, 2, 4 and sequence KLs 0.5, −1, 2 (k1: a sum that can be negative)
      rewards = 1 − 0.25, 2 + 0.5, 4 − 1 = 0.75, 2.5, 3.0
      baselines = (2.5 + 3)/2, (0.75 + 3)/2, (0.75 + 2.5)/2 = 2.75, 1.875, 1.625
      advantages = −2.0, 0.625, 1.375 (they sum to 0)
    Prompt 1: scores 1, NaN (judge failure), 3, KL 0: the failed sample enters no baseline:
      advantages = 1 − 3, 0, 3 − 1 = −2, 0, 2
    Prompt 2: one scored sample (5, NaN, NaN): no baseline (0/0): advantages 0, 0, 0.
    """
    scores = torch.tensor([[1.0, 2.0, 4.0], [1.0, NAN, 3.0], [5.0, NAN, NAN]])
    kl = torch.tensor([[0.5, -1.0, 2.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    out = rloo_advantages(scores, kl, beta=0.5)
    torch.testing.assert_close(
        out.advantages, torch.tensor([[-2.0, 0.625, 1.375], [-2.0, 0.0, 2.0], [0.0, 0.0, 0.0]])
    )
    torch.testing.assert_close(out.rewards[0], torch.tensor([0.75, 2.5, 3.0]))
    assert math.isnan(out.rewards[1, 1])


def test_normalized_advantages_are_standardised_with_bessel_s_correction():
    """Advantages −2, 0.625, 1.375 (β = 0, prompt 0 above with KL left out: scores 0.75, 2.5,
    3): mean 0, variance (4 + 0.390625 + 1.890625)/2 = 3.140625, so each is divided by
    √3.140625 + 1e-4 = 1.772181… + 1e-4."""
    out = rloo_advantages(torch.tensor([[0.75, 2.5, 3.0]]), torch.zeros(1, 3), 0.0, normalize=True)
    expected = torch.tensor([[-2.0, 0.625, 1.375]]) / (math.sqrt(3.140625) + 1e-4)
    torch.testing.assert_close(out.advantages, expected)


def test_the_loss_is_the_clipped_surrogate_on_sequence_ratios():
    """ε = 0.2, four samples (ρ = π/π_old, A):

      ρ = 1,   A =  2: −min(2, 2)           = −2    (not clipped)
      ρ = 1.5, A =  1: −min(1.5, 1.2)       = −1.2  (clipped high: no gradient)
      ρ = 0.5, A = −1: −min(−0.5, −0.8)     =  0.8  (clipped low: no gradient)
      ρ = 1.5, A = −1: −min(−1.5, −1.2)     =  1.5  (outside the range, but the unclipped
                                                    term binds: not clipped)
    loss = (−2 − 1.2 + 0.8 + 1.5)/4 = −0.225; clip fraction 2/4.
    d loss / d log π = −ρ·A/4 where unclipped: −0.5, 0, 0, 0.375.
    """
    old = torch.tensor([-3.0, -2.0, -4.0, -1.0])
    log_ratio = torch.tensor([0.0, math.log(1.5), math.log(0.5), math.log(1.5)])
    current = (old + log_ratio).requires_grad_()
    advantages = torch.tensor([2.0, 1.0, -1.0, -1.0])
    logps = CompletionLogps(summed=current, token_counts=torch.tensor([3, 2, 4, 1]))
    out = RLOOLoss(epsilon=0.2)(SampleLogps(logps, old, advantages))
    torch.testing.assert_close(out.loss, torch.tensor(-0.225))
    torch.testing.assert_close(out.metrics["clip_fraction"], torch.tensor([0.0, 1.0, 1.0, 0.0]))
    torch.testing.assert_close(out.metrics["clip_fraction/high"], torch.tensor([0.0, 1, 0, 0]))
    torch.testing.assert_close(out.metrics["clip_fraction/low"], torch.tensor([0.0, 0, 1, 0]))
    out.loss.backward()
    torch.testing.assert_close(current.grad, torch.tensor([-0.5, 0.0, 0.0, 0.375]))


def test_an_asymmetric_clip_uses_epsilon_high_above():
    """ε = 0.2, ε_high = 0.6: ρ = 1.5 with A = 1 is inside [0.8, 1.6]: −1.5, unclipped."""
    old = torch.zeros(1)
    logps = CompletionLogps(summed=torch.tensor([math.log(1.5)]), token_counts=torch.ones(1))
    out = RLOOLoss(epsilon=0.2, epsilon_high=0.6)(SampleLogps(logps, old, torch.ones(1)))
    torch.testing.assert_close(out.loss, torch.tensor(-1.5))
    assert out.metrics["clip_fraction"].item() == 0.0


@pytest.mark.parametrize(
    ("kwargs", "key"), [({"beta": -0.1}, "loss.beta"), ({"epsilon": 0.0}, "loss.epsilon")]
)
def test_bad_values_are_one_line_errors(kwargs, key):
    with pytest.raises(PrefoptError, match=key):
        RLOOLoss(**kwargs)
