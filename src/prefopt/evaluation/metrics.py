"""The numbers that say whether alignment happened: win rate against the reference and KL.

Both are plain functions of per-sample values, so they are tested on hand-made inputs.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


def win_rate(policy_rewards: Sequence[float], reference_rewards: Sequence[float]) -> float:
    """Share of prompts where the policy's completion beats the reference's; a tie counts half.

    Sample i of each list answers the same prompt. This is the DPO paper's headline number:
    0.5 means no better than the reference.
    """
    if len(policy_rewards) != len(reference_rewards):
        raise ValueError(
            f"win_rate: {len(policy_rewards)} policy rewards but "
            f"{len(reference_rewards)} reference rewards; they must pair up prompt by prompt"
        )
    if not policy_rewards:
        raise ValueError("win_rate: no samples")
    points = [
        1.0 if p > r else 0.5 if p == r else 0.0 for p, r in zip(policy_rewards, reference_rewards)
    ]
    return sum(points) / len(points)


def sequence_kl(policy_logps: Tensor, reference_logps: Tensor) -> float:
    """Monte-Carlo estimate of KL(π ‖ π_ref) per prompt: the mean of log π(y|x) − log π_ref(y|x)
    over completions y sampled from π (summed over each completion's tokens, EOS included).

    It is unbiased only for samples drawn from π itself (temperature 1, no top-k/top-p); a
    single sample can be negative, the mean tends to a non-negative value.
    """
    if policy_logps.shape != reference_logps.shape:
        raise ValueError(
            f"sequence_kl: shapes {tuple(policy_logps.shape)} and "
            f"{tuple(reference_logps.shape)} differ"
        )
    return (policy_logps.double() - reference_logps.double()).mean().item()


def mean(values: Sequence[float]) -> float:
    return float(torch.tensor(values, dtype=torch.float64).mean()) if values else float("nan")
