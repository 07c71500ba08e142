"""DPO loss: values worked out by hand, label smoothing, and the seed's gradient formula."""

import math

import pytest
import torch

from prefopt.losses import CompletionLogps, DPOLoss, PairLogps


def pair(chosen, rejected, requires_grad=False):
    chosen = torch.tensor(chosen, dtype=torch.float64, requires_grad=requires_grad)
    rejected = torch.tensor(rejected, dtype=torch.float64, requires_grad=requires_grad)
    ones = torch.ones_like(chosen)
    return PairLogps(CompletionLogps(chosen, ones), CompletionLogps(rejected, ones))


def test_dpo_value_by_hand():
    """policy logps: chosen -1, rejected -3; reference: -2 and -2; β = 0.5.

    h = (-1 - -2) - (-3 - -2) = 1 - (-1) = 2, β·h = 1
    loss = -log σ(1) = log(1 + e^-1) = 0.3132617
    rewards: chosen 0.5·1 = 0.5, rejected 0.5·(-1) = -0.5, margin 1, accuracy 1
    gradient weight σ(r̂_l - r̂_w) = σ(-1) = 0.2689414
    """
    out = DPOLoss(beta=0.5)(pair([-1.0], [-3.0]), pair([-2.0], [-2.0]))
    assert out.loss.item() == pytest.approx(0.3132617, abs=1e-6)
    assert out.metrics["rewards/chosen"].item() == pytest.approx(0.5)
    assert out.metrics["rewards/rejected"].item() == pytest.approx(-0.5)
    assert out.metrics["rewards/margins"].item() == pytest.approx(1.0)
    assert out.metrics["rewards/accuracies"].item() == 1.0
    assert out.metrics["gradient_weight"].item() == pytest.approx(0.2689414, abs=1e-6)
    assert out.metrics["logps/chosen"].item() == -1.0
    assert out.metrics["logps/rejected"].item() == -3.0


def test_dpo_label_smoothing_by_hand():
    """Same pair, ε = 0.2: 0.8·log(1 + e^-1) + 0.2·log(1 + e^1)
    = 0.8·0.3132617 + 0.2·1.3132617 = 0.2506093 + 0.2626523 = 0.5132617."""
    out = DPOLoss(beta=0.5, label_smoothing=0.2)(pair([-1.0], [-3.0]), pair([-2.0], [-2.0]))
    assert out.loss.item() == pytest.approx(0.5132617, abs=1e-6)


def test_dpo_mean_over_pairs_and_wrong_ranking():
    """Two pairs, β = 1, reference all zero. Pair 1: h = 0 -> log 2 = 0.6931472.
    Pair 2: h = -2 (rejected preferred) -> log(1 + e^2) = 2.1269280. Mean 1.4100376;
    accuracy (0 + 0)/2 = 0 because a tie is not a win."""
    out = DPOLoss(beta=1.0)(pair([-1.0, -4.0], [-1.0, -2.0]), pair([0.0, 0.0], [0.0, 0.0]))
    assert out.loss.item() == pytest.approx(1.4100376, abs=1e-6)
    assert out.metrics["rewards/accuracies"].tolist() == [0.0, 0.0]


def test_dpo_gradient_matches_seed_formula_on_logps():
    """-∇L = β σ(r̂_l - r̂_w) (∇log π(y_w) - ∇log π(y_l)), per pair, divided by the batch size."""
    beta = 0.3
    policy = pair([-5.0, -2.0, -7.0], [-6.0, -1.0, -7.5], requires_grad=True)
    reference = pair([-5.5, -2.5, -6.0], [-5.0, -1.5, -8.0])
    out = DPOLoss(beta=beta)(policy, reference)
    out.loss.backward()
    r_w = beta * (policy.chosen.summed - reference.chosen.summed)
    r_l = beta * (policy.rejected.summed - reference.rejected.summed)
    weight = torch.sigmoid(r_l - r_w).detach() / 3
    torch.testing.assert_close(policy.chosen.summed.grad, -beta * weight)
    torch.testing.assert_close(policy.rejected.summed.grad, beta * weight)


def test_dpo_gradient_matches_seed_formula_on_a_model():
    """Through a real network: the autograd gradient of the loss w.r.t. the weights equals
    -β σ(r̂_l - r̂_w) (∇log π(y_w) - ∇log π(y_l)) assembled from separate backward passes."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 5))
    x = torch.randn(1, 4)
    y_w, y_l = 2, 4
    ref_w, ref_l = torch.tensor([-1.2]), torch.tensor([-1.9])
    beta = 0.7

    def logp(token):
        return net(x).log_softmax(-1)[:, token]

    out = DPOLoss(beta=beta)(
        PairLogps(
            CompletionLogps(logp(y_w), torch.ones(1)), CompletionLogps(logp(y_l), torch.ones(1))
        ),
        PairLogps(CompletionLogps(ref_w, torch.ones(1)), CompletionLogps(ref_l, torch.ones(1))),
    )
    loss_grads = torch.autograd.grad(out.loss, list(net.parameters()))
    grad_w = torch.autograd.grad(logp(y_w).sum(), list(net.parameters()))
    grad_l = torch.autograd.grad(logp(y_l).sum(), list(net.parameters()))
    with torch.no_grad():
        weight = torch.sigmoid(beta * (logp(y_l) - ref_l) - beta * (logp(y_w) - ref_w)).item()
    for g_loss, g_w, g_l in zip(loss_grads, grad_w, grad_l, strict=True):
        torch.testing.assert_close(g_loss, -beta * weight * (g_w - g_l))


def test_dpo_gradient_vanishes_as_beta_grows():
    """For a pair the policy already ranks correctly (h = 1 > 0) the gradient magnitude, once β ≥ 1,
    β σ(-β h) falls towards 0 as β grows: the policy stops moving. (At h = 0 it is β/2: the
    vanishing in the seed's β -> ∞ limit is for pairs the policy has moved on at all.)"""
    magnitudes = []
    for beta in (2.0, 5.0, 10.0, 50.0):
        policy = pair([-1.0], [-2.0], requires_grad=True)
        DPOLoss(beta=beta)(policy, pair([-1.0], [-1.0])).loss.backward()
        magnitudes.append(policy.chosen.summed.grad.abs().item())
        assert magnitudes[-1] == pytest.approx(beta * (1 / (1 + math.exp(beta))), rel=1e-9)
    assert all(a > b for a, b in zip(magnitudes, magnitudes[1:]))
    assert magnitudes[-1] < 1e-15


@pytest.mark.parametrize("kwargs", [{"beta": 0.0}, {"beta": -1.0}, {"label_smoothing": 0.5}])
def test_dpo_rejects_invalid_hyperparameters(kwargs):
    with pytest.raises(ValueError, match="loss."):
        DPOLoss(**kwargs)


def test_dpo_needs_reference():
    with pytest.raises(ValueError, match="needs reference"):
        DPOLoss()(pair([-1.0], [-2.0]), None)
