"""DPO's options as TRL has them: LD-DPO (`ld_alpha`), WPO (`use_weighting`) and f-DPO
(`f_divergence`): hand-worked values, gradients, and the log-prob sums they need."""

import math

import pytest
import torch

from prefopt.data.packing import pack_pairs
from prefopt.errors import PrefoptError
from prefopt.losses import CompletionLogps, DPOLoss, PairLogps
from prefopt.losses.paired_options import f_divergence_score
from prefopt.model.logprobs import completion_logps

from ..conftest import tiny_llama
from ..numerics import assert_close_f32


def side(summed, counts=None, shared=None, wpo=None):
    summed = torch.tensor(summed, dtype=torch.float64)
    counts = (
        torch.ones_like(summed) if counts is None else torch.tensor(counts, dtype=torch.float64)
    )
    shared = None if shared is None else torch.tensor(shared, dtype=torch.float64)
    wpo = None if wpo is None else torch.tensor(wpo, dtype=torch.float64)
    return CompletionLogps(summed, counts, shared_summed=shared, wpo_summed=wpo)


# --- LD-DPO -------------------------------------------------------------------------------------


def ld_pairs():
    """Chosen 4 tokens, rejected 2: the shared length is 2.
    policy:    chosen sum -6 (first 2 tokens -2), rejected -3 (all shared)
    reference: chosen sum -5 (first 2 tokens -2.5), rejected -3.5"""
    policy = PairLogps(side([-6.0], [4], [-2.0]), side([-3.0], [2], [-3.0]))
    reference = PairLogps(side([-5.0], [4], [-2.5]), side([-3.5], [2], [-3.5]))
    return policy, reference


def test_ld_alpha_by_hand():
    """α = 0.5, β = 1. log π̃ = shared + α·(sum − shared):
    policy chosen −2 + 0.5·(−4) = −4, reference chosen −2.5 + 0.5·(−2.5) = −3.75 → −0.25;
    rejected (no tail) −3 − (−3.5) = 0.5. h = −0.75, loss = log(1 + e^0.75) = 1.1368710.
    Rewards are β times the LD log-ratios: −0.25 and 0.5."""
    out = DPOLoss(beta=1.0, ld_alpha=0.5)(*ld_pairs())
    assert out.loss.item() == pytest.approx(1.1368710, abs=1e-6)
    assert out.metrics["rewards/chosen"].item() == pytest.approx(-0.25)
    assert out.metrics["rewards/rejected"].item() == pytest.approx(0.5)


def test_ld_alpha_limits_are_the_plain_sum_and_the_shared_part():
    """α = 1: h = (−6 + 5) − (−3 + 3.5) = −1.5, as plain DPO. α = 0: only the shared tokens,
    h = (−2 + 2.5) − 0.5 = 0, loss log 2."""
    policy, reference = ld_pairs()
    plain = DPOLoss(beta=1.0)(policy, reference).loss
    assert DPOLoss(beta=1.0, ld_alpha=1.0)(policy, reference).loss.item() == pytest.approx(
        plain.item()
    )
    assert plain.item() == pytest.approx(math.log1p(math.exp(1.5)))
    assert DPOLoss(beta=1.0, ld_alpha=0.0)(policy, reference).loss.item() == pytest.approx(
        math.log(2)
    )


def test_ld_alpha_gradient():
    """∂L/∂shared_w = −β σ(−βh)·(1 − α), ∂L/∂sum_w = −β σ(−βh)·α (policy chosen side)."""
    policy, reference = ld_pairs()
    policy.chosen.summed.requires_grad_(True)
    policy.chosen.shared_summed.requires_grad_(True)
    DPOLoss(beta=1.0, ld_alpha=0.5)(policy, reference).loss.backward()
    weight = torch.sigmoid(torch.tensor(0.75, dtype=torch.float64))
    torch.testing.assert_close(policy.chosen.summed.grad, -0.5 * weight.reshape(1))
    torch.testing.assert_close(policy.chosen.shared_summed.grad, -0.5 * weight.reshape(1))
    check = torch.autograd.gradcheck(
        lambda s, p: DPOLoss(beta=0.7, ld_alpha=0.3)(
            PairLogps(CompletionLogps(s[:2], torch.ones(2), p[:2]),
                      CompletionLogps(s[2:], torch.ones(2), p[2:])),
            PairLogps(side([-1.0, -2.0], [1, 1], [-0.5, -1.0]), side([-2.0, -1.0], [1, 1], [-1.0, -1.0])),
        ).loss,
        (torch.tensor([-1.0, -3.0, -2.0, -0.5], dtype=torch.float64, requires_grad=True),
         torch.tensor([-0.4, -1.0, -1.5, -0.2], dtype=torch.float64, requires_grad=True)),
    )  # fmt: skip
    assert check


def per_token(model, batch):
    """log p of every completion token, row by row, from the full logits in float64."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    logps = logits.double().log_softmax(-1)
    rows = []
    for row in range(batch["input_ids"].shape[0]):
        tokens = [
            t for t in range(1, batch["input_ids"].shape[1]) if batch["completion_mask"][row, t]
        ]
        rows.append(
            [(logps[row, t - 1, batch["input_ids"][row, t]], logps[row, t - 1]) for t in tokens]
        )
    return rows


@pytest.mark.numerics
@pytest.mark.parametrize("layout", ["standard", "chunked", "packed"])
def test_shared_prefix_sums_cover_the_first_min_length_tokens(batch, layout):
    """hand_batch: pair 0 has 3 and 2 completion tokens (shared 2), pair 1 has 3 and 5 (3).
    Expected: the first 2, 3, 2, 3 tokens of the four sequences, summed by hand."""
    model = tiny_llama().eval()
    expected = [
        sum(lp.item() for lp, _ in tokens[:k])
        for tokens, k in zip(per_token(model, batch), [2, 3, 2, 3], strict=True)
    ]
    scored = pack_pairs(batch, shared_prefix=True) if layout == "packed" else batch
    got = completion_logps(model, scored, None if layout == "standard" else 2, shared_prefix=True)
    assert_close_f32(got.shared_summed, expected, tokens=3)  # at most 3 shared tokens
    plain = completion_logps(model, batch)
    assert plain.shared_summed is None and plain.wpo_summed is None  # only when asked
    assert_close_f32(got.summed, plain.summed, tokens=plain.token_counts)


@pytest.mark.numerics
def test_shared_prefix_matches_trls_mask_computation(batch):
    """TRL's DPOTrainer (`_compute_loss`, ld_alpha branch): positions counted with a cumsum over
    the shifted completion mask, shared = 1 ≤ position ≤ min(len_w, len_l)."""
    model = tiny_llama().eval()
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    labels = batch["input_ids"][:, 1:]
    per_token_logps = (
        logits[:, :-1].float().log_softmax(-1).gather(-1, labels.unsqueeze(-1)).squeeze(-1)
    )
    mask = batch["completion_mask"][:, 1:].long()
    per_token_logps = per_token_logps * mask
    comp_pos = mask.cumsum(dim=1)
    chosen_lens, rejected_lens = mask.sum(dim=1).chunk(2, dim=0)
    shared_lens = torch.minimum(chosen_lens, rejected_lens).repeat(2)
    shared_mask = (comp_pos > 0) & (comp_pos <= shared_lens.unsqueeze(1))
    tail_mask = comp_pos > shared_lens.unsqueeze(1)
    trl = (per_token_logps * shared_mask).sum(1) + 0.3 * (per_token_logps * tail_mask).sum(1)

    from prefopt.losses.paired_options import ld_logps

    ours = ld_logps(completion_logps(model, batch, shared_prefix=True), 0.3)
    assert_close_f32(ours, trl, tokens=5)  # hand_batch: at most 5 completion tokens


# --- WPO ------------------------------------------------------------------------------------------


@pytest.mark.numerics
def test_wpo_sums_are_the_aligned_per_token_log_probs(batch):
    """Σ_t [log p(y_t) − log Σ_v p(v)²] per sequence, by hand from the full distribution; the
    chunked and full-logits paths agree, and no gradient flows through them."""
    model = tiny_llama()
    expected = [
        sum((lp - probs.exp().pow(2).sum().log()).item() for lp, probs in tokens)
        for tokens in per_token(model, batch)
    ]
    for chunk_size in (None, 2):
        got = completion_logps(model, batch, chunk_size, wpo=True)
        assert_close_f32(got.wpo_summed, expected, tokens=got.token_counts)
        assert not got.wpo_summed.requires_grad and got.summed.requires_grad


def test_wpo_weighting_by_hand():
    """Policy chosen −1, rejected −3, reference −2 and −2, β = 0.5: DPO loss log(1 + e^−1).
    WPO sums: chosen −0.6 over 3 tokens → w = e^−0.2; rejected −1.0 over 2 → e^−0.5; the pair's
    weight e^−0.7 = 0.4965853; loss 0.4965853 · 0.3132617 = 0.1555612."""
    policy = PairLogps(side([-1.0], [3], wpo=[-0.6]), side([-3.0], [2], wpo=[-1.0]))
    reference = PairLogps(side([-2.0], [3]), side([-2.0], [2]))
    out = DPOLoss(beta=0.5, use_weighting=True)(policy, reference)
    assert out.loss.item() == pytest.approx(0.1555612, abs=1e-6)
    assert out.metrics["wpo_weight"].item() == pytest.approx(0.4965853, abs=1e-6)


def test_wpo_gradient_is_the_dpo_gradient_times_the_detached_weight():
    policy = PairLogps(
        side([-1.0, -2.0], [3, 1], wpo=[-0.6, -0.1]), side([-3.0, -1.0], [2, 1], wpo=[-1.0, -0.3])
    )
    reference = PairLogps(side([-2.0, -2.0]), side([-2.0, -1.5]))
    for s in (policy.chosen, policy.rejected):
        s.summed.requires_grad_(True)
        s.wpo_summed.requires_grad_(True)
    DPOLoss(beta=0.5, use_weighting=True)(policy, reference).loss.backward()
    weights = torch.exp(torch.tensor([-0.2 - 0.5, -0.1 - 0.3], dtype=torch.float64))
    logits = 0.5 * (
        (policy.chosen.summed - reference.chosen.summed)
        - (policy.rejected.summed - reference.rejected.summed)
    )
    expected = -0.5 * torch.sigmoid(-logits).detach() * weights / 2
    torch.testing.assert_close(policy.chosen.summed.grad, expected)
    torch.testing.assert_close(policy.rejected.summed.grad, -expected)
    assert policy.chosen.wpo_summed.grad is None  # the weights carry no gradient


# --- f-DPO ----------------------------------------------------------------------------------------


def f_pairs():
    """u_w = π/π_ref = 2 (log-ratio log 2), u_l = 1/2 (log-ratio −log 2)."""
    policy = PairLogps(side([math.log(2)]), side([-math.log(2)]))
    reference = PairLogps(side([0.0]), side([0.0]))
    return policy, reference


@pytest.mark.parametrize(
    "kind, f_alpha, expected",
    [
        # f'(u) = log u: h = 2 log 2, loss log(1 + e^{−2 log 2}) = log(1 + 1/4) = log 1.25
        ("reverse_kl", 0.5, math.log(1.25)),
        # f'(u) = 1 − 1/u: 0.5 − (−1) = 1.5, loss log(1 + e^−1.5) = 0.2014133
        ("forward_kl", 0.5, 0.2014133),
        # f'(u) = log(2u/(1+u)): log(4/3) − log(2/3) = log 2, loss log(1 + 1/2) = log 1.5
        ("js", 0.5, math.log(1.5)),
        # f'(u) = (1 − u^−α)/α, α = 0.5: 2(1 − 1/√2) − 2(1 − √2) = √2, loss log(1 + e^−√2)
        ("alpha", 0.5, 0.2176217),
    ],
)
def test_f_divergence_by_hand(kind, f_alpha, expected):
    out = DPOLoss(beta=1.0, f_divergence=kind, f_alpha=f_alpha)(*f_pairs())
    assert out.loss.item() == pytest.approx(expected, abs=1e-6)
    # the rewards stay β·log-ratio whatever the divergence, as in TRL
    assert out.metrics["rewards/chosen"].item() == pytest.approx(math.log(2))


def test_alpha_divergence_follows_the_paper_and_is_trls_for_one_minus_alpha():
    """The f-DPO paper: f'(u) = (1 − u^−α)/α, α → 0 reverse KL, α = 1 forward KL. TRL writes
    (t^(a−1) − 1)/(a − 1) (`f_alpha_divergence_coef` a): the same function for a = 1 − α."""
    logratio = torch.tensor([-2.0, -0.3, 0.0, 0.7, 3.0], dtype=torch.float64)
    for alpha in (0.2, 0.5, 0.8):
        a = 1 - alpha
        trl = (torch.exp((a - 1.0) * logratio) - 1.0) / (a - 1.0)
        torch.testing.assert_close(f_divergence_score(logratio, "alpha", alpha), trl)
        trl_same_number = (torch.exp((alpha - 1.0) * logratio) - 1.0) / (alpha - 1.0)
        if alpha != 0.5:  # TRL's reading with the same number is another divergence
            assert not torch.allclose(f_divergence_score(logratio, "alpha", alpha), trl_same_number)
    torch.testing.assert_close(
        f_divergence_score(logratio, "alpha", 1.0), f_divergence_score(logratio, "forward_kl")
    )
    torch.testing.assert_close(
        f_divergence_score(logratio, "alpha", 1e-7), logratio, atol=1e-5, rtol=0
    )


@pytest.mark.parametrize("kind", ["reverse_kl", "forward_kl", "js", "alpha"])
def test_f_divergence_gradients(kind):
    """Autograd against finite differences, and the sign: raising the chosen log-prob lowers
    the loss."""
    reference = PairLogps(side([-1.0, -2.0]), side([-2.0, -1.0]))
    loss = DPOLoss(beta=0.5, f_divergence=kind, f_alpha=0.3)

    def value(chosen, rejected):
        return loss(
            PairLogps(
                CompletionLogps(chosen, torch.ones(2)), CompletionLogps(rejected, torch.ones(2))
            ),
            reference,
        ).loss

    chosen = torch.tensor([-1.5, -1.0], dtype=torch.float64, requires_grad=True)
    rejected = torch.tensor([-1.0, -2.5], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(value, (chosen, rejected))
    value(chosen, rejected).backward()
    assert (chosen.grad < 0).all() and (rejected.grad > 0).all()


def test_option_values_are_checked_in_one_line():
    with pytest.raises(PrefoptError, match=r"loss.ld_alpha=1.5 .* \[0, 1\]"):
        DPOLoss(ld_alpha=1.5)
    with pytest.raises(
        PrefoptError, match=r"loss.f_divergence='kl'.*reverse_kl, forward_kl, js, alpha"
    ):
        DPOLoss(f_divergence="kl")
    with pytest.raises(PrefoptError, match=r"loss.f_alpha=1.0"):
        DPOLoss(f_divergence="alpha", f_alpha=1.0)


def test_options_off_ask_for_no_extra_log_probs():
    assert not DPOLoss().needs_shared_prefix and not DPOLoss().needs_wpo
    assert DPOLoss(ld_alpha=0.5).needs_shared_prefix and DPOLoss(use_weighting=True).needs_wpo


# --- the same options on IPO, as TRL's loss_type="ipo" has them ---------------------------------


def test_ipo_ld_alpha_by_hand():
    """ld_pairs, α = 0.25, β = 0.5, length-normalised by the whole length (as TRL):
    policy chosen −2 + 0.25·(−4) = −3, reference −2.5 + 0.25·(−2.5) = −3.125 → 0.125/4 = 0.03125;
    rejected (−3 + 3.5)/2 = 0.25. h = −0.21875; L = (h − 1)² = 1.4853515625.
    ∂L/∂sum_w = 2(h − 1)·α/4 = −0.15234375; ∂L/∂shared_w = 2(h − 1)·(1 − α)/4 = −0.45703125."""
    from prefopt.losses import IPOLoss

    policy, reference = ld_pairs()
    policy.chosen.summed.requires_grad_(True)
    policy.chosen.shared_summed.requires_grad_(True)
    out = IPOLoss(beta=0.5, ld_alpha=0.25)(policy, reference)
    assert out.loss.item() == pytest.approx(1.4853515625)
    out.loss.backward()
    assert policy.chosen.summed.grad.item() == pytest.approx(-0.15234375)
    assert policy.chosen.shared_summed.grad.item() == pytest.approx(-0.45703125)
    # off: (−0.25 − 0.25 − 1)² = 2.25, the plain IPO
    assert IPOLoss(beta=0.5)(*ld_pairs()).loss.item() == pytest.approx(2.25)


def test_ipo_wpo_weighting_by_hand():
    """Chosen (−1 + 2)/3 = 1/3, rejected (−3 + 2)/2 = −0.5: h = 5/6, β = 0.5:
    (5/6 − 1)² = 1/36 = 0.0277778, times the pair's weight e^−0.7: 0.0137941."""
    from prefopt.losses import IPOLoss

    policy = PairLogps(side([-1.0], [3], wpo=[-0.6]), side([-3.0], [2], wpo=[-1.0]))
    reference = PairLogps(side([-2.0], [3]), side([-2.0], [2]))
    out = IPOLoss(beta=0.5, use_weighting=True)(policy, reference)
    assert out.loss.item() == pytest.approx(0.0137941, abs=1e-6)
    assert IPOLoss(ld_alpha=0.5).needs_shared_prefix and IPOLoss(use_weighting=True).needs_wpo
