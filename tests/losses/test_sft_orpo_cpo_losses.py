"""SFT, ORPO and CPO: values worked out by hand, gradients, and the reference they never need."""

import math

import pytest
import torch

from prefopt.errors import PrefoptError
from prefopt.losses import CompletionLogps, CPOLoss, ORPOLoss, PairLogps, SFTLoss


def pair(chosen, rejected, chosen_counts, rejected_counts, requires_grad=False):
    def side(summed, counts):
        return CompletionLogps(
            torch.tensor(summed, dtype=torch.float64, requires_grad=requires_grad),
            torch.tensor(counts, dtype=torch.float64),
        )

    return PairLogps(side(chosen, chosen_counts), side(rejected, rejected_counts))


def test_sft_value_by_hand():
    """Chosen sums −3 (3 tokens) and −1 (1 token): NLL = (3 + 1)/(3 + 1) = 1 per token.
    Rewards = mean log-probs: chosen −1, −1; rejected −4/2 = −2, −0.5/1 = −0.5; accuracy 1, 0.
    ∂L/∂sum_w = −1/4 for every pair; the rejected side gets no gradient."""
    policy = pair([-3.0, -1.0], [-4.0, -0.5], [3, 1], [2, 1], requires_grad=True)
    out = SFTLoss()(policy)
    assert out.loss.item() == pytest.approx(1.0)
    assert out.metrics["rewards/chosen"].tolist() == [-1.0, -1.0]
    assert out.metrics["rewards/rejected"].tolist() == [-2.0, -0.5]
    assert out.metrics["rewards/accuracies"].tolist() == [1.0, 0.0]
    out.loss.backward()
    assert policy.chosen.summed.grad.tolist() == [-0.25, -0.25]
    assert policy.rejected.summed.grad is None
    assert not SFTLoss.needs_reference


def orpo_pair(requires_grad=False):
    """Chosen: 2 tokens, mean log-prob log 0.5; rejected: 1 token, log-prob log 0.2."""
    return pair([2 * math.log(0.5)], [math.log(0.2)], [2], [1], requires_grad)


def test_orpo_value_by_hand():
    """P_w = 0.5: odds 1, log-odds 0. P_l = 0.2: odds 0.25, log-odds −log 4.
    log-odds ratio log 4; log σ(log 4) = log(4/5) = −0.2231436.
    NLL = −2·log 0.5 / 2 = log 2 = 0.6931472. β = 0.1:
    L = 0.6931472 + 0.1·0.2231436 = 0.7154616. Rewards β·mean log-prob: −0.0693147, −0.1609438."""
    out = ORPOLoss(beta=0.1)(orpo_pair())
    assert out.loss.item() == pytest.approx(0.7154616, abs=1e-6)
    assert out.metrics["log_odds_chosen"].item() == pytest.approx(math.log(4))
    assert out.metrics["log_odds_ratio"].item() == pytest.approx(math.log(0.8))
    assert out.metrics["nll"].item() == pytest.approx(math.log(2))
    assert out.metrics["rewards/chosen"].item() == pytest.approx(-0.0693147, abs=1e-6)
    assert out.metrics["rewards/rejected"].item() == pytest.approx(-0.1609438, abs=1e-6)


def test_orpo_gradient_by_hand():
    """z = log-odds ratio; ∂ log σ(z)/∂z = σ(−z) = 1/5.
    ∂z/∂(mean_w) = 1/(1 − P_w) = 2, ∂z/∂(mean_l) = −1/(1 − P_l) = −1.25.
    Chosen sum (2 tokens): −β·(1/5)·2/2 − 1/2 (NLL) = −0.02 − 0.5 = −0.52.
    Rejected sum (1 token): −β·(1/5)·(−1.25) = 0.025."""
    policy = orpo_pair(requires_grad=True)
    ORPOLoss(beta=0.1)(policy).loss.backward()
    assert policy.chosen.summed.grad.item() == pytest.approx(-0.52)
    assert policy.rejected.summed.grad.item() == pytest.approx(0.025)


def test_orpo_is_stable_near_certain_completions():
    """A mean log-prob of −1e−9 (P ≈ 1) has log-odds ≈ 20.7: finite loss and gradient."""
    policy = pair([-1e-9], [-1.0], [1], [1], requires_grad=True)
    out = ORPOLoss()(policy)
    out.loss.backward()
    assert math.isfinite(out.loss.item()) and torch.isfinite(policy.chosen.summed.grad).all()


def cpo_pair(requires_grad=False):
    """Chosen sum −2 over 2 tokens (mean −1), rejected −4 over 4 tokens (mean −1)."""
    return pair([-2.0], [-4.0], [2], [4], requires_grad)


@pytest.mark.parametrize(
    "loss_type, beta, expected",
    [
        # summed h = −2 + 4 = 2, βh = 1: log(1 + e^−1) = 0.3132617, + NLL 2/2 = 1
        ("sigmoid", 0.5, 1.3132617),
        # max(0, 1 − 0.25·2) = 0.5, + 1
        ("hinge", 0.25, 1.5),
        # length-normalised h = −1 + 1 = 0: (0 − 1/(2·0.5))² = 1, + 1
        ("ipo", 0.5, 2.0),
        # length-normalised h = 0, γ = 0.5: −log σ(−0.5) = log(1 + e^0.5) = 0.9740770, + 1
        ("simpo", 0.5, 1.9740770),
    ],
)
def test_cpo_loss_types_by_hand(loss_type, beta, expected):
    out = CPOLoss(beta=beta, loss_type=loss_type)(cpo_pair())
    assert out.loss.item() == pytest.approx(expected, abs=1e-6)
    assert out.metrics["nll"].item() == pytest.approx(1.0)


def test_cpo_gradient_by_hand():
    """sigmoid, β = 0.5, cpo_alpha = 1: ∂/∂sum_w = −β σ(−βh) − 1/|y_w| = −0.5·σ(−1) − 0.5
    = −0.1344707 − 0.5; ∂/∂sum_l = +0.1344707. cpo_alpha = 0 drops the NLL's −0.5."""
    policy = cpo_pair(requires_grad=True)
    CPOLoss(beta=0.5)(policy).loss.backward()
    assert policy.chosen.summed.grad.item() == pytest.approx(-0.6344707, abs=1e-6)
    assert policy.rejected.summed.grad.item() == pytest.approx(0.1344707, abs=1e-6)
    policy = cpo_pair(requires_grad=True)
    CPOLoss(beta=0.5, cpo_alpha=0.0)(policy).loss.backward()
    assert policy.chosen.summed.grad.item() == pytest.approx(-0.1344707, abs=1e-6)


@pytest.mark.parametrize(
    "loss",
    [
        SFTLoss(),
        ORPOLoss(beta=0.3),
        CPOLoss(beta=0.2),
        CPOLoss(beta=0.2, loss_type="hinge"),
        CPOLoss(beta=0.2, loss_type="ipo"),
        CPOLoss(beta=0.2, loss_type="simpo", label_smoothing=0.1),
    ],
    ids=["sft", "orpo", "cpo", "cpo-hinge", "cpo-ipo", "cpo-simpo"],
)
def test_gradients_match_finite_differences(loss):
    counts = torch.tensor([3.0, 2.0], dtype=torch.float64)

    def value(chosen, rejected):
        return loss(
            PairLogps(CompletionLogps(chosen, counts), CompletionLogps(rejected, counts))
        ).loss

    chosen = torch.tensor([-1.2, -3.0], dtype=torch.float64, requires_grad=True)
    rejected = torch.tensor([-2.5, -0.7], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(value, (chosen, rejected))


def test_reference_free_and_their_checks():
    for cls in (SFTLoss, ORPOLoss, CPOLoss):
        assert cls.needs_reference is False and cls.paired is True
    with pytest.raises(
        PrefoptError, match="loss.loss_type='dpo' for loss 'cpo'.*sigmoid, hinge, ipo, simpo"
    ):
        CPOLoss(loss_type="dpo")
    with pytest.raises(PrefoptError, match="loss.beta=0"):
        ORPOLoss(beta=0)
