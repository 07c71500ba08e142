"""loss=mix: the weighted sum, its metrics per term, the reference only when a term needs it,
and one-line errors for every wrong term."""

import pytest
import torch

from prefopt.errors import PrefoptError
from prefopt.losses import LOSSES, CompletionLogps, MixLoss, PairLogps


def pair(chosen, rejected, requires_grad=False):
    def side(values):
        summed = torch.tensor(values, dtype=torch.float64, requires_grad=requires_grad)
        return CompletionLogps(summed, torch.ones_like(summed))

    return PairLogps(side(chosen), side(rejected))


def test_mix_value_and_metrics_by_hand():
    """Policy chosen −1, rejected −3 (one token each); reference −2 and −2.
    dpo (β = 0.5): −log σ(1) = 0.3132617; sft: NLL 1. Weights 1 and 0.2:
    L = 0.3132617 + 0.2·1 = 0.5132617. DPO's rewards (the first term) are also unprefixed."""
    mix = MixLoss(terms={"dpo": {"weight": 1.0, "beta": 0.5}, "sft": 0.2})
    out = mix(pair([-1.0], [-3.0]), pair([-2.0], [-2.0]))
    assert out.loss.item() == pytest.approx(0.5132617, abs=1e-6)
    assert out.metrics["dpo/loss"].item() == pytest.approx(0.3132617, abs=1e-6)
    assert out.metrics["sft/loss"].item() == pytest.approx(1.0)
    assert out.metrics["sft/nll"].item() == pytest.approx(1.0)
    assert out.metrics["dpo/rewards/chosen"].item() == pytest.approx(0.5)
    assert out.metrics["rewards/chosen"].item() == pytest.approx(0.5)
    assert out.metrics["sft/rewards/chosen"].item() == pytest.approx(-1.0)
    assert out.metrics["dpo/gradient_weight"].item() == pytest.approx(0.2689414, abs=1e-6)


def test_mix_gradient_is_the_weighted_sum_of_the_terms_gradients():
    """∂L/∂sum_w = 1·(−β σ(−1)) + 0.2·(−1) = −0.5·0.2689414 − 0.2 = −0.3344707."""
    policy = pair([-1.0], [-3.0], requires_grad=True)
    MixLoss(terms={"dpo": {"beta": 0.5}, "sft": 0.2})(policy, pair([-2.0], [-2.0])).loss.backward()
    assert policy.chosen.summed.grad.item() == pytest.approx(-0.3344707, abs=1e-6)
    reference = pair([-1.0, -2.0], [-2.0, -1.0])
    mix = MixLoss(terms={"dpo": 1.0, "orpo": 0.5, "cpo": {"weight": 0.3, "loss_type": "hinge"}})

    def value(chosen, rejected):
        ones = torch.ones(2, dtype=torch.float64)
        return mix(
            PairLogps(CompletionLogps(chosen, ones), CompletionLogps(rejected, ones)), reference
        ).loss

    chosen = torch.tensor([-1.5, -1.0], dtype=torch.float64, requires_grad=True)
    rejected = torch.tensor([-1.0, -2.5], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(value, (chosen, rejected))


def test_reference_and_extra_log_probs_only_when_a_term_needs_them():
    assert not MixLoss(terms={"sft": 1.0, "orpo": 1.0, "simpo": 1.0}).needs_reference
    assert MixLoss(terms={"sft": 1.0, "dpo": 1.0}).needs_reference
    assert not MixLoss(terms={"sft": 1.0, "dpo": 1.0}).needs_shared_prefix
    assert MixLoss(terms={"sft": 1.0, "dpo": {"ld_alpha": 0.5}}).needs_shared_prefix
    assert MixLoss(terms={"dpo": {"use_weighting": True}}).needs_wpo
    # a reference-free term is handed no reference log-probs
    out = MixLoss(terms={"simpo": 1.0})(pair([-1.0], [-3.0]), None)
    assert torch.isfinite(out.loss)


@pytest.mark.parametrize(
    "terms, message",
    [
        ({"dpoo": 1.0}, "loss.terms.dpoo: there is no such loss; choose from: aot, aot_unpaired, "),
        ({"mix": 1.0}, "loss.terms.mix: a mix cannot contain a mix"),
        (
            {"dpo": 1.0, "kto": 1.0},
            "loss.terms.kto: kto trains on unpaired (prompt, completion, label) examples, a mix on pairs (dpo); the two data shapes cannot be mixed",
        ),
        ({"kto": 1.0}, "loss.terms.kto: kto trains on unpaired"),
        (
            {"dpo": {"gamma": 1.0}},
            "loss.terms.dpo.gamma: loss dpo has no such field; its fields: weight, beta, ",
        ),
        ({"dpo": {"beta": -1.0}}, "loss.terms.dpo.beta=-1.0 for loss 'dpo': it must be > 0"),
        ({"sft": -0.5}, "loss.terms.sft: weight -0.5: give a number ≥ 0"),
        ({"sft": "a lot"}, "loss.terms.sft: weight 'a lot'"),
        ({}, "loss.terms is empty"),
    ],
)
def test_wrong_terms_are_one_line_errors(terms, message):
    with pytest.raises(PrefoptError) as error:
        MixLoss(terms=terms)
    assert str(error.value).startswith(message), str(error.value)
    assert "\n" not in str(error.value)


def test_every_loss_but_mix_and_kto_can_be_a_term():
    names = [
        name for name, cls in LOSSES.items() if name != "mix" and cls.paired and not cls.on_policy
    ]
    mix = MixLoss(terms={name: 1.0 for name in names})
    out = mix(pair([-1.0, -2.0], [-3.0, -1.0]), pair([-2.0, -2.0], [-2.0, -2.0]))
    assert torch.isfinite(out.loss)
    assert {f"{name}/loss" for name in names} <= set(out.metrics)
    assert mix.describe().startswith("mix 1·dpo β=0.1 + 1·ipo β=0.5")


@pytest.mark.parametrize(
    "override, message",
    [
        ("+loss.terms.dpoo=1.0", "loss.terms.dpoo: there is no such loss; choose from: "),
        ("+loss.terms.kto=1.0", "loss.terms.kto: kto trains on unpaired"),
    ],
)
def test_a_wrong_term_on_the_command_line_stops_the_run_in_one_line(
    compose_config, override, message
):
    """Through Hydra's composition and the checks every run passes before it starts."""
    from prefopt.config.checks import check_loss

    with pytest.raises(PrefoptError) as error:
        check_loss(compose_config("loss=mix", override).loss)
    assert str(error.value).startswith(message) and "\n" not in str(error.value)
