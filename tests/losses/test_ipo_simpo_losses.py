"""IPO and SimPO: values worked out by hand, target margins, length normalisation."""

import pytest
import torch

from prefopt.losses import CompletionLogps, IPOLoss, PairLogps, SimPOLoss


def logps(chosen_sum, chosen_tokens, rejected_sum, rejected_tokens, requires_grad=False):
    chosen = torch.tensor([chosen_sum], dtype=torch.float64, requires_grad=requires_grad)
    rejected = torch.tensor([rejected_sum], dtype=torch.float64, requires_grad=requires_grad)
    return PairLogps(
        CompletionLogps(chosen, torch.tensor([chosen_tokens])),
        CompletionLogps(rejected, torch.tensor([rejected_tokens])),
    )


# policy: chosen −4 over 2 tokens (mean −2), rejected −9 over 3 tokens (mean −3)
# reference: chosen −5 over 2 tokens (mean −2.5), rejected −6 over 3 tokens (mean −2)
POLICY = (-4.0, 2, -9.0, 3)
REFERENCE = (-5.0, 2, -6.0, 3)


def test_ipo_length_normalised_by_hand():
    """β = 0.5 -> target 1/(2β) = 1. Mean log-ratios: chosen −2 − (−2.5) = 0.5,
    rejected −3 − (−2) = −1, h = 1.5; loss = (1.5 − 1)² = 0.25.
    Rewards: β·0.5 = 0.25 and β·(−1) = −0.5."""
    out = IPOLoss(beta=0.5)(logps(*POLICY), logps(*REFERENCE))
    assert out.loss.item() == pytest.approx(0.25)
    assert out.metrics["rewards/chosen"].item() == pytest.approx(0.25)
    assert out.metrics["rewards/rejected"].item() == pytest.approx(-0.5)
    assert out.metrics["rewards/accuracies"].item() == 1.0


def test_ipo_summed_form_by_hand():
    """The seed's form: chosen −4 − (−5) = 1, rejected −9 − (−6) = −3, h = 4;
    loss = (4 − 1)² = 9."""
    out = IPOLoss(beta=0.5, length_normalize=False)(logps(*POLICY), logps(*REFERENCE))
    assert out.loss.item() == pytest.approx(9.0)


def test_ipo_is_minimal_exactly_at_the_target_margin():
    """β = 0.25 -> target 1/(2β) = 2. Summed margin h = 2 gives loss 0 and zero gradient;
    beyond the target (h = 3) the gradient pushes the margin back down (unlike DPO)."""
    at_target = logps(-1.0, 1, -3.0, 1, requires_grad=True)
    out = IPOLoss(beta=0.25, length_normalize=False)(at_target, logps(0.0, 1, 0.0, 1))
    out.loss.backward()
    assert out.loss.item() == 0.0
    assert at_target.chosen.summed.grad.item() == 0.0

    beyond = logps(0.0, 1, -3.0, 1, requires_grad=True)
    IPOLoss(beta=0.25, length_normalize=False)(beyond, logps(0.0, 1, 0.0, 1)).loss.backward()
    # dL/dπ_w = 2(h − 2) = 2 > 0: gradient descent lowers the chosen log-prob.
    assert beyond.chosen.summed.grad.item() == pytest.approx(2.0)


def test_simpo_by_hand():
    """β = 2, γ/β = 0.5 -> γ = 1. Average log-probs −2 and −3:
    z = 2·(−2) − 2·(−3) − 1 = 1; loss = log(1 + e^−1) = 0.3132617.
    Rewards are β·avg: −4 and −6, margin 2."""
    out = SimPOLoss(beta=2.0, gamma_beta_ratio=0.5)(logps(*POLICY))
    assert out.loss.item() == pytest.approx(0.3132617, abs=1e-6)
    assert out.metrics["rewards/chosen"].item() == pytest.approx(-4.0)
    assert out.metrics["rewards/rejected"].item() == pytest.approx(-6.0)
    assert out.metrics["rewards/margins"].item() == pytest.approx(2.0)


def test_simpo_gamma_and_label_smoothing_by_hand():
    """γ = 0: z = 2, loss = log(1 + e^−2) = 0.1269280.
    γ/β = 0.5 with ε = 0.1: 0.9·log(1 + e^−1) + 0.1·log(1 + e^1)
    = 0.9·0.3132617 + 0.1·1.3132617 = 0.4132617."""
    assert SimPOLoss(beta=2.0, gamma_beta_ratio=0.0)(logps(*POLICY)).loss.item() == pytest.approx(
        0.1269280, abs=1e-6
    )
    smoothed = SimPOLoss(beta=2.0, gamma_beta_ratio=0.5, label_smoothing=0.1)(logps(*POLICY))
    assert smoothed.loss.item() == pytest.approx(0.4132617, abs=1e-6)


def test_simpo_ignores_length_and_needs_no_reference():
    """Doubling a completion's tokens and its summed log-prob leaves its average, and so the
    loss, unchanged: no length bias."""
    assert not SimPOLoss.needs_reference
    short = SimPOLoss()(logps(-4.0, 2, -9.0, 3)).loss
    long = SimPOLoss()(logps(-8.0, 4, -9.0, 3)).loss
    assert short.item() == pytest.approx(long.item())


@pytest.mark.parametrize(
    "make",
    [lambda: IPOLoss(beta=0), lambda: SimPOLoss(beta=-1), lambda: SimPOLoss(gamma_beta_ratio=-0.1)],
)
def test_invalid_hyperparameters(make):
    with pytest.raises(ValueError, match="loss."):
        make()
