"""KTO: values by hand, the clamped and detached reference point, odd and one-class batches."""

import pytest
import torch

from prefopt.losses import CompletionLogps, KTOLoss, UnpairedLogps


def unpaired(completions, mismatched, desirable, requires_grad=False):
    def side(values):
        t = torch.tensor(values, dtype=torch.float64, requires_grad=requires_grad)
        return CompletionLogps(t, torch.ones(len(values)))

    return UnpairedLogps(side(completions), side(mismatched), torch.tensor(desirable))


# policy completions [-2, -4, -3], reference [-3, -3, -3] -> r = [1, -1, 0]
# mismatched: policy [-5, -6, -4], reference [-6, -6, -6] -> log-ratios [1, 0, 2], mean 1 = z_ref
POLICY = ([-2.0, -4.0, -3.0], [-5.0, -6.0, -4.0], [True, False, True])
REFERENCE = ([-3.0, -3.0, -3.0], [-6.0, -6.0, -6.0], [True, False, True])


def test_kto_by_hand_with_an_odd_batch():
    """β = 0.5, λ_D = λ_U = 1, z_ref = 1.
    desirable r=1:   1 − σ(0.5·(1 − 1))  = 1 − 0.5       = 0.5
    undesirable r=−1: 1 − σ(0.5·(1 + 1)) = 1 − σ(1)      = 0.2689414
    desirable r=0:   1 − σ(0.5·(0 − 1))  = 1 − σ(−0.5)   = 0.6224593
    mean = 1.3914007 / 3 = 0.4638002. Rewards β·r: desirable mean (0.5 + 0)/2 = 0.25,
    undesirable −0.5."""
    out = KTOLoss(beta=0.5)(unpaired(*POLICY), unpaired(*REFERENCE))
    assert out.loss.item() == pytest.approx(0.4638002, abs=1e-6)
    assert out.metrics["kl"].item() == pytest.approx(1.0)
    assert out.metrics["rewards/chosen"].nanmean().item() == pytest.approx(0.25)
    assert out.metrics["rewards/rejected"].nanmean().item() == pytest.approx(-0.5)
    # per example, NaN for the other class: the metrics count each class's examples
    assert out.metrics["rewards/chosen"].isnan().tolist() == [False, True, False]
    assert out.metrics["count/desirable"].item() == 2
    assert out.metrics["count/undesirable"].item() == 1


def test_kto_weights_by_hand():
    """λ_D = 2, λ_U = 0.5: (2·0.5 + 0.5·0.2689414 + 2·0.6224593) / 3 = 2.3793893 / 3 = 0.7931298."""
    out = KTOLoss(beta=0.5, desirable_weight=2.0, undesirable_weight=0.5)(
        unpaired(*POLICY), unpaired(*REFERENCE)
    )
    assert out.loss.item() == pytest.approx(0.7931298, abs=1e-6)


def test_kto_reference_point_is_clamped_at_zero():
    """Mismatched log-ratios with mean −1 give z_ref = max(0, −1) = 0. Desirable r = 1, β = 1:
    1 − σ(1) = 0.2689414."""
    policy = unpaired([-2.0], [-7.0], [True])
    reference = unpaired([-3.0], [-6.0], [True])
    out = KTOLoss(beta=1.0)(policy, reference)
    assert out.metrics["kl"].item() == 0.0
    assert out.loss.item() == pytest.approx(0.2689414, abs=1e-6)


def test_kto_reference_point_carries_no_gradient():
    policy = unpaired(*POLICY, requires_grad=True)
    out = KTOLoss(beta=0.5)(policy, unpaired(*REFERENCE))
    out.loss.backward()
    assert policy.mismatched.summed.grad is None
    assert policy.completions.summed.grad is not None


def test_kto_reference_point_is_averaged_across_devices():
    """`mean_across_devices` receives the local KL mean and whether this rank has one (1); the
    mean of the ranks' estimates is what z_ref uses."""
    seen = []

    def fake_all_reduce_mean(t):
        seen.append(t.tolist())
        return (t + torch.tensor([3.0, 1.0])) / 2  # as if another rank had a KL mean of 3

    out = KTOLoss(beta=0.5)(
        unpaired(*POLICY), unpaired(*REFERENCE), mean_across_devices=fake_all_reduce_mean
    )
    assert seen == [[1.0, 1.0]]
    assert out.metrics["kl"].item() == pytest.approx(2.0)


def test_kto_batch_of_one_gives_no_kl_estimate():
    """One example: its "mismatched" row is itself, with log-ratio r = 1 − (−3)... here policy
    −2 vs reference −6 gives 4, which would be z_ref = 4 (the implied reward itself). With no
    other rank, z_ref = 0: desirable r = 1, β = 1: 1 − σ(1) = 0.2689414. With another rank
    whose estimate is 3, z_ref = 3 (that rank's alone, not (0 + 3) / 2)."""
    policy, reference = unpaired([-2.0], [-2.0], [True]), unpaired([-3.0], [-6.0], [True])
    alone = KTOLoss(beta=1.0)(policy, reference)
    assert alone.metrics["kl"].item() == 0.0
    assert alone.loss.item() == pytest.approx(0.2689414, abs=1e-6)

    def with_other_rank(t):  # this rank sends (0, 0): no estimate
        assert t.tolist() == [0.0, 0.0]
        return (t + torch.tensor([3.0, 1.0])) / 2

    shared = KTOLoss(beta=1.0)(policy, reference, mean_across_devices=with_other_rank)
    assert shared.metrics["kl"].item() == pytest.approx(3.0)


def test_kto_single_class_batches():
    """Only desirable examples: undesirable metrics are NaN (absent), the loss stays finite."""
    only_good = KTOLoss(beta=0.5)(
        unpaired([-2.0, -3.0], [-5.0, -6.0], [True, True]),
        unpaired([-3.0, -3.0], [-6.0, -6.0], [True, True]),
    )
    assert torch.isfinite(only_good.loss)
    assert torch.isnan(only_good.metrics["rewards/rejected"]).all()
    assert only_good.metrics["count/undesirable"].item() == 0
    only_bad = KTOLoss(beta=0.5)(
        unpaired([-2.0], [-5.0], [False]), unpaired([-3.0], [-6.0], [False])
    )
    assert torch.isfinite(only_bad.loss)
    assert torch.isnan(only_bad.metrics["rewards/chosen"]).all()


def test_kto_weight_advice():
    """100 desirable, 100 undesirable, equal weights: ratio 1 -> fine. 300 vs 100: ratio 3 ->
    advise λ_D between 1·100/300 = 0.333 and 0.444."""
    loss = KTOLoss()
    assert loss.weight_advice(100, 100) is None
    advice = loss.weight_advice(300, 100)
    assert "= 3.000" in advice and "between 0.333 and 0.444" in advice
    assert "both classes" in loss.weight_advice(10, 0)
