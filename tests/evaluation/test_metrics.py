"""Win rate, KL and the diagnostics' rules on hand-made inputs (values worked out by hand)."""

import pytest
import torch

from prefopt.evaluation.callback import select_prompts
from prefopt.evaluation.diagnostics import beta_advice, low_logp_share, margin_stalled
from prefopt.evaluation.metrics import sequence_kl, win_rate
from prefopt.losses import DPOLoss, IPOLoss, SimPOLoss


def test_win_rate_counts_ties_half():
    """policy [3, 1, 2, 0] vs reference [1, 1, 5, -1]: win, tie, loss, win
    -> (1 + 0.5 + 0 + 1) / 4 = 0.625."""
    assert win_rate([3, 1, 2, 0], [1, 1, 5, -1]) == 0.625


def test_win_rate_of_identical_rewards_is_one_half():
    """All ties: 3 × 0.5 / 3 = 0.5, the no-better-than-the-reference point."""
    assert win_rate([2.0, -1.0, 0.0], [2.0, -1.0, 0.0]) == 0.5


def test_win_rate_needs_paired_samples():
    with pytest.raises(ValueError, match="pair up prompt by prompt"):
        win_rate([1.0, 2.0], [1.0])
    with pytest.raises(ValueError, match="no samples"):
        win_rate([], [])


def test_sequence_kl_is_the_mean_log_ratio():
    """log π − log π_ref per sample: (−2 − −3, −3 − −3, −1 − −4) = (1, 0, 3); mean 4/3."""
    policy = torch.tensor([-2.0, -3.0, -1.0])
    reference = torch.tensor([-3.0, -3.0, -4.0])
    assert sequence_kl(policy, reference) == pytest.approx(4 / 3)


def test_sequence_kl_single_sample_can_be_negative():
    """One sample with log π = −5, log π_ref = −4: −1 (only the expectation is ≥ 0)."""
    assert sequence_kl(torch.tensor([-5.0]), torch.tensor([-4.0])) == -1.0
    with pytest.raises(ValueError, match="differ"):
        sequence_kl(torch.zeros(2), torch.zeros(3))


def test_low_logp_share_uses_the_per_token_mean():
    """Summed [−12, −2, −30, −1] over [2, 2, 5, 1] tokens -> per token [−6, −1, −6, −1];
    below −5: rows 0 and 2 -> 2/4 = 0.5. Below −6.5: none -> 0."""
    summed = torch.tensor([-12.0, -2.0, -30.0, -1.0])
    counts = torch.tensor([2, 2, 5, 1])
    assert low_logp_share(summed, counts, -5.0) == 0.5
    assert low_logp_share(summed, counts, -6.5) == 0.0


def test_margin_stalled_compares_the_window_ends():
    """Window K=3, minimum increase 0.01:
    [0.1, 0.2, 0.3]            -> 0.3 − 0.1 = 0.2 > 0.01: rising;
    [0.1, 0.3, 0.25, 0.305]    -> window [0.3, 0.25, 0.305]: 0.005 ≤ 0.01: stalled;
    [0.5, 0.4, 0.3]            -> −0.2: stalled (falling);
    [0.1, 0.2]                 -> fewer than K values: no verdict (None)."""
    assert margin_stalled([0.1, 0.2, 0.3], 3, 0.01) is False
    assert margin_stalled([0.1, 0.3, 0.25, 0.305], 3, 0.01) is True
    assert margin_stalled([0.5, 0.4, 0.3], 3, 0.01) is True
    assert margin_stalled([0.1, 0.2], 3, 0.01) is None


def test_beta_advice_only_outside_the_authors_range():
    assert beta_advice(DPOLoss(beta=0.1)) is None
    assert beta_advice(DPOLoss(beta=0.05)) is None  # the range is inclusive
    high = beta_advice(DPOLoss(beta=1.0))
    assert "loss.beta=1 is outside [0.05, 0.5]" in high and "DPO" in high
    assert "barely move" in high
    low = beta_advice(IPOLoss(beta=0.001))
    assert "[0.01, 1]" in low and "drift far" in low
    assert beta_advice(SimPOLoss(beta=2.0)) is None  # SimPO's own range is [2, 10]
    assert "[2, 10]" in beta_advice(SimPOLoss(beta=0.1))


def test_select_prompts_is_seeded_distinct_and_in_data_order():
    examples = [{"prompt_input_ids": [1, i % 5]} for i in range(10)]  # 5 distinct prompts
    assert select_prompts(examples, 10, seed=0) == [[1, i] for i in range(5)]
    three = select_prompts(examples, 3, seed=0)
    assert len(three) == 3 and len({tuple(p) for p in three}) == 3
    assert three == sorted(three)
    assert three == select_prompts(examples, 3, seed=0)
    assert select_prompts(examples, 0, seed=0) == []
