"""nca_pair, sppo_hard, apo_zero, apo_down, bco_pair: losses that move each completion's
log-ratio on its own, not only their margin. Values worked out by hand; gradients against the
derivative written out in each test; BCO's running baseline as state."""

import pytest
import torch

from prefopt.errors import PrefoptError
from prefopt.losses import (
    TRL_LOSSES,
    AOTLoss,
    APODownLoss,
    APOZeroLoss,
    BCOPairLoss,
    CompletionLogps,
    DiscoPOPLoss,
    ExoPairLoss,
    NCAPairLoss,
    PairLogps,
    RobustLoss,
    SPPOHardLoss,
)


def pair(chosen, rejected, requires_grad=False):
    chosen = torch.tensor(chosen, dtype=torch.float64, requires_grad=requires_grad)
    rejected = torch.tensor(rejected, dtype=torch.float64, requires_grad=requires_grad)
    ones = torch.ones_like(chosen)
    return PairLogps(CompletionLogps(chosen, ones), CompletionLogps(rejected, ones))


# Policy chosen −1, rejected −3; reference −2 and −2: log-ratios chosen 1, rejected −1.
POLICY, REFERENCE = ([-1.0], [-3.0]), ([-2.0], [-2.0])


def s(z):
    return torch.sigmoid(torch.tensor(z, dtype=torch.float64))


def assert_gradients(policy, chosen, rejected):
    torch.testing.assert_close(
        policy.chosen.summed.grad, torch.as_tensor(chosen, dtype=torch.float64).reshape(1)
    )
    torch.testing.assert_close(
        policy.rejected.summed.grad, torch.as_tensor(rejected, dtype=torch.float64).reshape(1)
    )


def test_nca_pair_by_hand_and_its_gradient():
    """β = 1: r_w = 1, r_l = −1. L = −log σ(1) − ½ log σ(−1) − ½ log σ(1)
    = 0.3132617 + 0.6566309 + 0.1566309 = 1.1265234.
    ∂L/∂r_w = −σ(−r_w) + ½σ(r_w) = −0.2689414 + 0.3655293 = 0.0965879 (> 0: with r_w = 1 the
    chosen reward is pushed back down: NCA bounds it, DPO would not), ∂L/∂r_l = ½σ(r_l)
    = 0.1344707; ∂r/∂log π = β."""
    policy = pair(*POLICY, requires_grad=True)
    out = NCAPairLoss(beta=1.0)(policy, pair(*REFERENCE))
    assert out.loss.item() == pytest.approx(1.1265234, abs=1e-6)
    assert out.metrics["rewards/chosen"].item() == 1.0
    out.loss.backward()
    assert_gradients(policy, -s(-1.0) + 0.5 * s(1.0), 0.5 * s(-1.0))
    assert policy.chosen.summed.grad.item() == pytest.approx(0.0965879, abs=1e-7)


def test_sppo_hard_by_hand_and_its_gradient():
    """β = 0.25: targets ±1/(2β) = ±2. (1 − 2)² + (−1 + 2)² = 1 + 1 = 2.
    ∂L/∂log π(y_w) = 2(1 − 2) = −2, ∂L/∂log π(y_l) = 2(−1 + 2) = 2.
    At the targets (chosen log-ratio 2, rejected −2) loss and gradient are 0."""
    policy = pair(*POLICY, requires_grad=True)
    out = SPPOHardLoss(beta=0.25)(policy, pair(*REFERENCE))
    assert out.loss.item() == pytest.approx(2.0)
    assert out.metrics["rewards/chosen"].item() == pytest.approx(0.25)
    out.loss.backward()
    assert_gradients(policy, -2.0, 2.0)
    at_target = pair([0.0], [-4.0], requires_grad=True)
    out = SPPOHardLoss(beta=0.25)(at_target, pair(*REFERENCE))
    out.loss.backward()
    assert out.loss.item() == 0.0
    assert_gradients(at_target, 0.0, 0.0)


def test_apo_zero_by_hand_both_readings_and_its_gradient():
    """β = 1, r_w = 1, r_l = −1. L = (1 − σ(1)) + σ(−1) = 0.2689414 + 0.2689414 = 0.5378828;
    the paper's −σ(r_w) + σ(r_l) is the same minus 1: −0.4621172, with the same gradient:
    ∂L/∂r_w = −σ(1)σ(−1) = −0.1966119 (chosen up), ∂L/∂r_l = σ(−1)σ(1) = 0.1966119 (rejected
    down)."""
    policy = pair(*POLICY, requires_grad=True)
    out = APOZeroLoss(beta=1.0)(policy, pair(*REFERENCE))
    assert out.loss.item() == pytest.approx(0.5378828, abs=1e-6)
    paper = -s(1.0) + s(-1.0)
    assert paper.item() == pytest.approx(out.loss.item() - 1, abs=1e-12)
    out.loss.backward()
    assert_gradients(policy, -s(1.0) * s(-1.0), s(1.0) * s(-1.0))
    assert policy.chosen.summed.grad.item() == pytest.approx(-0.1966119, abs=1e-7)


def test_apo_down_by_hand_both_readings_and_its_gradient():
    """β = 1, r_w = 1, r_l = −1. L = σ(1) + (1 − σ(1 − (−1))) = 0.7310586 + 1 − 0.8807971
    = 0.8502615; the paper's σ(r_w) − σ(r_w − r_l) is the same minus 1. ∂L/∂r_w =
    σ'(1) − σ'(2) = 0.1966119 − 0.1049936 = 0.0916183 > 0 (chosen DOWN),
    ∂L/∂r_l = σ'(2) = 0.1049936 (rejected down, faster), σ'(z) = σ(z)σ(−z)."""
    policy = pair(*POLICY, requires_grad=True)
    out = APODownLoss(beta=1.0)(policy, pair(*REFERENCE))
    assert out.loss.item() == pytest.approx(0.8502615, abs=1e-6)
    paper = s(1.0) - s(2.0)
    assert paper.item() == pytest.approx(out.loss.item() - 1, abs=1e-12)
    out.loss.backward()
    assert_gradients(policy, s(1.0) * s(-1.0) - s(2.0) * s(-2.0), s(2.0) * s(-2.0))
    assert policy.chosen.summed.grad.item() == pytest.approx(0.0916183, abs=1e-7)


def test_bco_pair_running_baseline_by_hand_and_its_gradient():
    """β = 0.5. Step 1: r_w = 0.5, r_l = −0.5, batch mean 0 -> δ = 0:
    L = −log σ(0.5) − log σ(0.5) = 2·0.4740770 = 0.9481540.
    Step 2: policy chosen 0, rejected −2 (r_w = 1, r_l = 0), batch mean 0.5 -> δ = (0 + 0.5)/2
    = 0.25: L = −log σ(0.75) − log σ(0.25) = 0.3868710 + 0.5759394 = 0.9628104.
    TRL 1.16's reading (running_baseline=false, δ = 0): −log σ(1) − log σ(0) = 0.3132617 +
    0.6931472 = 1.0064089. δ is detached: ∂L/∂log π(y_w) = −β σ(−(r_w − δ)) = −0.5σ(−0.75),
    ∂L/∂log π(y_l) = β σ(r_l − δ) = 0.5σ(−0.25)."""
    loss = BCOPairLoss(beta=0.5)
    first = loss(pair(*POLICY), pair(*REFERENCE))
    assert first.loss.item() == pytest.approx(0.9481540, abs=1e-6)
    assert first.metrics["reward_baseline"].item() == 0.0
    policy = pair([0.0], [-2.0], requires_grad=True)
    second = loss(policy, pair(*REFERENCE))
    assert second.metrics["reward_baseline"].item() == pytest.approx(0.25)
    assert second.loss.item() == pytest.approx(0.9628104, abs=1e-6)
    second.loss.backward()
    assert_gradients(policy, -0.5 * s(-0.75), 0.5 * s(-0.25))

    trl_reading = BCOPairLoss(beta=0.5, running_baseline=False)
    trl_reading(pair(*POLICY), pair(*REFERENCE))
    out = trl_reading(pair([0.0], [-2.0]), pair(*REFERENCE))
    assert out.loss.item() == pytest.approx(1.0064089, abs=1e-6)
    assert out.metrics["reward_baseline"].item() == 0.0


def test_bco_pair_baseline_holds_in_validation_and_is_averaged_across_devices():
    """Validation uses δ without moving it. In training the batch mean goes through
    `mean_across_devices` first: local mean 0 and another rank's 2 make 1, so δ = 1."""
    loss = BCOPairLoss(beta=0.5)
    loss(pair([0.0], [-2.0]), pair(*REFERENCE))  # batch mean 0.5 -> δ = 0.5
    held = loss(pair(*POLICY), pair(*REFERENCE), training=False)
    assert held.metrics["reward_baseline"].item() == pytest.approx(0.5)
    assert loss.baseline_count == 1

    seen = []

    def fake_all_reduce_mean(t):
        seen.append(t.item())
        return (t + 2.0) / 2

    fresh = BCOPairLoss(beta=0.5)
    out = fresh(pair(*POLICY), pair(*REFERENCE), mean_across_devices=fake_all_reduce_mean)
    assert seen == [0.0]
    assert out.metrics["reward_baseline"].item() == pytest.approx(1.0)


def test_bco_pair_state_dict_round_trip():
    """A fresh loss loaded from `state_dict` continues exactly where the first one was."""
    loss = BCOPairLoss(beta=0.5)
    loss(pair([0.0], [-2.0]), pair(*REFERENCE))
    restored = BCOPairLoss(beta=0.5)
    restored.load_state_dict(loss.state_dict())
    a = loss(pair([-1.5], [-2.5]), pair(*REFERENCE))
    b = restored(pair([-1.5], [-2.5]), pair(*REFERENCE))
    assert restored.baseline_count == loss.baseline_count == 2
    assert a.loss.item() == b.loss.item()
    assert a.metrics["reward_baseline"].item() == b.metrics["reward_baseline"].item()


@pytest.mark.parametrize("loss_cls", TRL_LOSSES, ids=lambda c: c.name)
def test_every_new_loss_needs_a_reference_and_rejects_a_non_positive_beta(loss_cls):
    assert loss_cls.needs_reference and loss_cls.paired
    with pytest.raises(ValueError, match="needs reference"):
        loss_cls()(pair(*POLICY), None)
    with pytest.raises(PrefoptError, match="loss.beta"):
        loss_cls(beta=0.0)


@pytest.mark.parametrize(
    "make, key",
    [
        (lambda: RobustLoss(label_smoothing=0.5), "loss.label_smoothing"),
        (lambda: ExoPairLoss(label_smoothing=0.0), "loss.label_smoothing"),
        (lambda: AOTLoss(label_smoothing=-0.1), "loss.label_smoothing"),
        (lambda: DiscoPOPLoss(discopop_tau=0.0), "loss.discopop_tau"),
    ],
)
def test_invalid_hyperparameters_name_their_key(make, key):
    with pytest.raises(PrefoptError, match=key):
        make()
