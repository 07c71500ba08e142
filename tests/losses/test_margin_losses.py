"""hinge, robust, exo_pair, discopop, sigmoid_norm, aot, aot_unpaired: losses of the log-ratio
margin. Values worked out by hand; gradients against the derivative written out in each test."""

import math

import pytest
import torch

from prefopt.losses import (
    AOTLoss,
    AOTUnpairedLoss,
    CompletionLogps,
    DiscoPOPLoss,
    DPOLoss,
    ExoPairLoss,
    HingeLoss,
    PairLogps,
    RobustLoss,
    SigmoidNormLoss,
)


def pair(chosen, rejected, requires_grad=False, chosen_tokens=None, rejected_tokens=None):
    def side(values, tokens):
        t = torch.tensor(values, dtype=torch.float64, requires_grad=requires_grad)
        counts = torch.ones_like(t) if tokens is None else torch.tensor(tokens)
        return CompletionLogps(t, counts)

    return PairLogps(side(chosen, chosen_tokens), side(rejected, rejected_tokens))


# The DPO test's pair: policy chosen −1, rejected −3; reference −2 and −2.
# Log-ratios: chosen 1, rejected −1, margin h = 2.
POLICY, REFERENCE = ([-1.0], [-3.0]), ([-2.0], [-2.0])


def sigmoid(z):
    return torch.sigmoid(torch.as_tensor(z, dtype=torch.float64))


def assert_margin_gradient(policy, dloss_dh, beta=1.0):
    """A loss of h alone: ∂L/∂log π(y_w) = ∂L/∂h and ∂L/∂log π(y_l) = −∂L/∂h (per pair,
    divided by the batch size, which the caller folds into `dloss_dh`)."""
    torch.testing.assert_close(policy.chosen.summed.grad, dloss_dh)
    torch.testing.assert_close(policy.rejected.summed.grad, -dloss_dh)


def test_hinge_by_hand_and_its_gradient():
    """β = 0.25: pair 1 (h = 2): max(0, 1 − 0.5) = 0.5. Pair 2, policy chosen 0, rejected −4
    against the same reference (h = 2 − (−2) = 4): max(0, 1 − 1) = 0, and no gradient.
    Mean 0.25. ∂L/∂h = −β/2 = −0.125 for pair 1 (active), 0 for pair 2."""
    policy = pair([-1.0, 0.0], [-3.0, -4.0], requires_grad=True)
    out = HingeLoss(beta=0.25)(policy, pair([-2.0, -2.0], [-2.0, -2.0]))
    assert out.loss.item() == pytest.approx(0.25)
    assert out.metrics["rewards/chosen"].tolist() == pytest.approx([0.25, 0.5])
    assert out.metrics["rewards/rejected"].tolist() == pytest.approx([-0.25, -0.5])
    out.loss.backward()
    assert_margin_gradient(policy, torch.tensor([-0.125, 0.0], dtype=torch.float64))


def test_robust_by_hand_both_readings_and_its_gradient():
    """β = 0.5, ε = 0.25, z = βh = 1: log σ(1) = −0.3132617, log σ(−1) = −1.3132617.
    [−0.75·(−0.3132617) + 0.25·(−1.3132617)] / (1 − 0.5) = (0.2349463 − 0.3283154) / 0.5
    = −0.1867383 (negative: the flipped-label term is subtracted, unlike cDPO's 0.5132617...).
    ε = 0 is DPO: −log σ(1) = 0.3132617.
    ∂L/∂z = [−(1−ε)σ(−z) − εσ(z)] / (1−2ε) = [−0.75·0.2689414 − 0.25·0.7310586] / 0.5
    = −0.7689414; ∂L/∂h = β ∂L/∂z = −0.3844707."""
    policy = pair(*POLICY, requires_grad=True)
    out = RobustLoss(beta=0.5, label_smoothing=0.25)(policy, pair(*REFERENCE))
    assert out.loss.item() == pytest.approx(-0.1867383, abs=1e-6)
    out.loss.backward()
    assert_margin_gradient(policy, torch.tensor([-0.3844707], dtype=torch.float64))
    expected = 0.5 * (-0.75 * sigmoid(-1.0) - 0.25 * sigmoid(1.0)) / 0.5
    assert policy.chosen.summed.grad.item() == pytest.approx(expected.item(), rel=1e-12)

    plain = RobustLoss(beta=0.5, label_smoothing=0.0)(pair(*POLICY), pair(*REFERENCE))
    assert plain.loss.item() == pytest.approx(0.3132617, abs=1e-6)
    dpo = DPOLoss(beta=0.5)(pair(*POLICY), pair(*REFERENCE))
    assert plain.loss.item() == pytest.approx(dpo.loss.item(), rel=1e-12)


def test_exo_pair_by_hand_and_its_gradient():
    """β = 0.5, ε = 0.25, z = βh = 1: q_w = σ(1) = 0.7310586, q_l = σ(−1) = 0.2689414.
    L = q_w (log q_w − log 0.75) + q_l (log q_l − log 0.25)
      = 0.7310586·(−0.3132617 + 0.2876821) + 0.2689414·(−1.3132617 + 1.3862944)
      = −0.0187002 + 0.0196415 = 0.0009413 (a KL: ≥ 0, 0 only at q_w = 1 − ε).
    With q = σ(z), ∂L/∂z = q(1 − q)·(z − log((1 − ε)/ε)) = 0.1966119·(1 − 1.0986123) = −0.0193884,
    ∂L/∂h = β ∂L/∂z = −0.0096942: the margin still grows, towards z = log 3."""
    policy = pair(*POLICY, requires_grad=True)
    out = ExoPairLoss(beta=0.5, label_smoothing=0.25)(policy, pair(*REFERENCE))
    assert out.loss.item() == pytest.approx(0.0009413, abs=1e-7)
    out.loss.backward()
    q = sigmoid(1.0)
    expected = 0.5 * q * (1 - q) * (1 - math.log(3))
    assert expected.item() == pytest.approx(-0.0096942, abs=1e-7)
    assert_margin_gradient(policy, expected.reshape(1))

    at_target = pair([math.log(3)], [0.0], requires_grad=True)  # β = 1: z = h = log 3
    out = ExoPairLoss(beta=1.0, label_smoothing=0.25)(at_target, pair([0.0], [0.0]))
    out.loss.backward()
    assert out.loss.item() == pytest.approx(0.0, abs=1e-12)
    assert at_target.chosen.summed.grad.item() == pytest.approx(0.0, abs=1e-12)


def test_discopop_by_hand_and_its_gradient():
    """β = 0.5, ρ = βh = 1. τ = 1: m = σ(1) = 0.7310586;
    L = (1 − m)·(−log σ(1)) + m·e^−1 = 0.2689414·0.3132617 + 0.7310586·0.3678794
      = 0.0842491 + 0.2689414 = 0.3531905 (m·e^−1 = σ(−1) exactly).
    The paper's τ = 0.05: m = σ(20) ≈ 1, L ≈ e^−1 = 0.3678794 (a pair ranked right gets the
    exponential loss). ∂L/∂ρ = m(1−m)/τ·(e^−ρ + log σ(ρ)) − (1 − m)σ(−ρ) − m e^−ρ."""
    policy = pair(*POLICY, requires_grad=True)
    out = DiscoPOPLoss(beta=0.5, discopop_tau=1.0)(policy, pair(*REFERENCE))
    assert out.loss.item() == pytest.approx(0.3531905, abs=1e-6)
    out.loss.backward()
    rho, tau = torch.tensor(1.0, dtype=torch.float64), 1.0
    m = sigmoid(rho / tau)
    dloss_drho = (
        m * (1 - m) / tau * (torch.exp(-rho) + torch.nn.functional.logsigmoid(rho))
        - (1 - m) * sigmoid(-rho)
        - m * torch.exp(-rho)
    )
    assert_margin_gradient(policy, (0.5 * dloss_drho).reshape(1))

    sharp = DiscoPOPLoss(beta=0.5)(pair(*POLICY), pair(*REFERENCE))
    assert DiscoPOPLoss().discopop_tau == 0.05
    assert sharp.loss.item() == pytest.approx(math.exp(-1), abs=1e-7)


@pytest.mark.parametrize("rho", [-100.0, -1000.0, 100.0])
def test_discopop_is_finite_far_from_zero(rho):
    """ρ = h (β = 1), τ = 0.05, in float32. At ρ < −88.7 the literal form overflows: exp(−ρ) is
    inf while m = σ(ρ/τ) is 0, and 0·inf is NaN. The float64 reference: at ρ = ±100 the literal
    form (e^100 fits in float64; σ(−2000) is 0 there too); at ρ = −1000 (e^1000 does not fit)
    its limit, m·e^−ρ ≤ e^(−20000+1000) = 0: L = softplus(−ρ) = −ρ + log(1 + e^ρ), and
    ∂L/∂ρ = −(1 − m)σ(−ρ) = −1."""
    tau = 0.05
    chosen = torch.tensor([rho], requires_grad=True)
    policy = PairLogps(
        CompletionLogps(chosen, torch.ones(1)), CompletionLogps(torch.zeros(1), torch.ones(1))
    )
    reference = PairLogps(*(CompletionLogps(torch.zeros(1), torch.ones(1)) for _ in range(2)))
    out = DiscoPOPLoss(beta=1.0, discopop_tau=tau)(policy, reference)
    out.loss.backward()
    assert torch.isfinite(out.loss) and torch.isfinite(chosen.grad).all()
    r = torch.tensor(rho, dtype=torch.float64, requires_grad=True)
    if rho > -700:
        m = sigmoid(r / tau)
        expected = (1 - m) * -torch.nn.functional.logsigmoid(r) + m * torch.exp(-r)
        (grad,) = torch.autograd.grad(expected, r)
    else:
        expected, grad = -r + math.log1p(math.exp(rho)), torch.tensor(-1.0, dtype=torch.float64)
    torch.testing.assert_close(out.loss.double(), expected.detach(), rtol=1e-6, atol=1e-30)
    torch.testing.assert_close(chosen.grad.double()[0], grad, rtol=1e-6, atol=1e-30)


def test_sigmoid_norm_by_hand_and_its_gradient():
    """Policy chosen −4 over 2 tokens, rejected −9 over 3; reference −5 over 2, −6 over 3.
    Mean log-ratios: chosen −2 − (−2.5) = 0.5, rejected −3 − (−2) = −1, h̄ = 1.5; β = 2:
    L = −log σ(3) = 0.0485874. Summed DPO would see h = 1 − (−3) = 4: −log σ(8) = 0.0003354.
    Rewards are β·(summed log-ratios): 2 and −6.
    ∂L/∂log π(y_w) = −β σ(−βh̄)/|y_w| = −2·0.0474259/2 = −0.0474259,
    ∂L/∂log π(y_l) = +β σ(−βh̄)/|y_l| = 2·0.0474259/3 = 0.0316173."""
    policy = pair([-4.0], [-9.0], True, [2], [3])
    reference = pair([-5.0], [-6.0], False, [2], [3])
    out = SigmoidNormLoss(beta=2.0)(policy, reference)
    assert out.loss.item() == pytest.approx(0.0485874, abs=1e-7)
    assert out.metrics["rewards/chosen"].item() == pytest.approx(2.0)
    assert out.metrics["rewards/rejected"].item() == pytest.approx(-6.0)
    summed = DPOLoss(beta=2.0)(pair([-4.0], [-9.0]), pair([-5.0], [-6.0]))
    assert summed.loss.item() == pytest.approx(0.0003354, abs=1e-7)
    out.loss.backward()
    weight = 2.0 * sigmoid(-3.0)
    torch.testing.assert_close(policy.chosen.summed.grad, (-weight / 2).reshape(1))
    torch.testing.assert_close(policy.rejected.summed.grad, (weight / 3).reshape(1))


# Two pairs. Policy: pair 1 chosen −1, rejected −3 (u = log π_w − log π_l = 2);
# pair 2 chosen −3, rejected −2 (u = −1). Reference: pair 1 −2, −2 (v = 0); pair 2 −1, −2 (v = 1).
AOT_POLICY = ([-1.0, -3.0], [-3.0, -2.0])
AOT_REFERENCE = ([-2.0, -1.0], [-2.0, -2.0])


def test_aot_sorts_the_margins_by_hand_with_its_gradient():
    """β = 1. Sorted u: [−1 (pair 2), 2 (pair 1)]; sorted v: [0, 1]; δ = [−1, 1].
    L = (−log σ(−1) − log σ(1)) / 2 = (1.3132617 + 0.3132617)/2 = 0.8132617.
    (DPO pairs them as given: 2 − 0 = 2 and −1 − 1 = −2, another loss.)
    ∂L/∂δ_k = −σ(−δ_k)/2: pair 2's u meets δ = −1: −σ(1)/2 = −0.3655293;
    pair 1's u meets δ = 1: −σ(−1)/2 = −0.1344707. ∂u/∂log π_w = 1, ∂u/∂log π_l = −1.
    ε = 0.1 adds label smoothing, −0.9 log σ(δ) − 0.1 log σ(−δ) per k:
    δ = −1: 0.9·1.3132617 + 0.1·0.3132617 = 1.2132617; δ = 1: 0.9·0.3132617 + 0.1·1.3132617
    = 0.4132617; mean 0.8132617 again (δ is symmetric here), and ∂L/∂δ = −(0.9σ(−δ) − 0.1σ(δ))/2."""
    policy = pair(*AOT_POLICY, requires_grad=True)
    out = AOTLoss(beta=1.0)(policy, pair(*AOT_REFERENCE))
    assert out.loss.item() == pytest.approx(0.8132617, abs=1e-6)
    assert out.metrics["rewards/chosen"].tolist() == pytest.approx([1.0, -2.0])  # unsorted
    dpo = DPOLoss(beta=1.0)(pair(*AOT_POLICY), pair(*AOT_REFERENCE))
    assert dpo.loss.item() != pytest.approx(out.loss.item(), abs=1e-3)
    out.loss.backward()
    expected = torch.tensor([-0.1344707, -0.3655293], dtype=torch.float64)
    torch.testing.assert_close(policy.chosen.summed.grad, expected, atol=1e-7, rtol=0)
    torch.testing.assert_close(policy.rejected.summed.grad, -expected, atol=1e-7, rtol=0)

    smoothed_policy = pair(*AOT_POLICY, requires_grad=True)
    smoothed = AOTLoss(beta=1.0, label_smoothing=0.1)(smoothed_policy, pair(*AOT_REFERENCE))
    assert smoothed.loss.item() == pytest.approx(0.8132617, abs=1e-6)
    smoothed.loss.backward()
    delta = torch.tensor([1.0, -1.0], dtype=torch.float64)  # pair 1's δ, pair 2's δ
    weights = -(0.9 * sigmoid(-delta) - 0.1 * sigmoid(delta)) / 2
    torch.testing.assert_close(smoothed_policy.chosen.summed.grad, weights)


def test_aot_unpaired_sorts_chosen_and_rejected_apart_by_hand_with_its_gradient():
    """β = 1. Chosen log-ratios a = [−1 − (−2), −3 − (−1)] = [1, −2]; rejected
    b = [−3 − (−2), −2 − (−2)] = [−1, 0]. Sorted a: [−2 (pair 2), 1 (pair 1)], sorted b:
    [−1 (pair 1), 0 (pair 2)]; δ = [−1, 1]: L = (1.3132617 + 0.3132617)/2 = 0.8132617.
    ∂L/∂δ_1 = −σ(1)/2 = −0.3655293 reaches pair 2's chosen (−) and pair 1's rejected (+);
    ∂L/∂δ_2 = −σ(−1)/2 = −0.1344707 reaches pair 1's chosen and pair 2's rejected."""
    policy = pair(*AOT_POLICY, requires_grad=True)
    out = AOTUnpairedLoss(beta=1.0)(policy, pair(*AOT_REFERENCE))
    assert out.loss.item() == pytest.approx(0.8132617, abs=1e-6)
    out.loss.backward()
    torch.testing.assert_close(
        policy.chosen.summed.grad,
        torch.tensor([-0.1344707, -0.3655293], dtype=torch.float64),
        atol=1e-7,
        rtol=0,
    )
    torch.testing.assert_close(
        policy.rejected.summed.grad,
        torch.tensor([0.3655293, 0.1344707], dtype=torch.float64),
        atol=1e-7,
        rtol=0,
    )


def test_aot_gradcheck_in_float64():
    """The sort's gradient, checked numerically on a batch without ties."""
    chosen = torch.tensor([-1.0, -3.0, -2.2], dtype=torch.float64, requires_grad=True)
    rejected = torch.tensor([-3.0, -2.0, -2.9], dtype=torch.float64, requires_grad=True)
    reference = pair([-2.0, -1.0, -1.5], [-2.0, -2.0, -1.1])
    ones = torch.ones(3)
    for loss in (AOTLoss(beta=0.7, label_smoothing=0.1), AOTUnpairedLoss(beta=0.7)):

        def value(c, r, loss=loss):
            return loss(
                PairLogps(CompletionLogps(c, ones), CompletionLogps(r, ones)), reference
            ).loss

        assert torch.autograd.gradcheck(value, (chosen, rejected))
