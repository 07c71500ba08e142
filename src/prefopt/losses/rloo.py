"""RLOO, REINFORCE leave-one-out (Ahmadian et al., 2024), as TRL 1.16's `RLOOTrainer` computes it.

An on-policy RL objective for the online loop (`loop=online loss=rloo`). Per prompt, k samples
y_1..y_k are drawn from the policy as it is when the round is made (π_old). Each gets

    reward_i    = judge(x, y_i) − β · KL_i,   KL_i = Σ_t [log π_old(y_i,t) − log π_ref(y_i,t)]
    advantage_i = reward_i − 1/(k−1) · Σ_{j≠i} reward_j            (the leave-one-out baseline)

KL_i is the sequence-level k1 estimator: the per-token log-ratio summed over the completion's
tokens, computed when the round is made. Each token's term can be negative (its expectation,
the KL, cannot), so a single sequence's KL_i can be too. It sits in the reward, not in the
loss, so it carries no gradient of its own: the policy-gradient term does the work.

The loss of a batch of samples, with the sequence-level ratio ρ_i = π(y_i|x)/π_old(y_i|x),

    L = mean_i −min(ρ_i · A_i, clip(ρ_i, 1 − ε_low, 1 + ε_high) · A_i),

PPO's clipped surrogate on whole sequences. ρ = 1 on a round's first step (the gradient is then
REINFORCE's A·∇log π); it departs from 1 once earlier steps of the round have moved the policy,
and the clip stops a sample from pulling further than ε. `clip_fraction` is the share of samples
whose ρ lies outside the range on the side where the clip binds (ρ < 1 − ε with A < 0, ρ > 1 + ε
with A > 0), as TRL's `clip_ratio/region_mean`.

TRL's configuration this matches, with TRL's defaults: `beta` 0.05 (KL in the reward: TRL's
`beta`), `epsilon` 0.2 and `epsilon_high` = `epsilon`, `normalize_advantages` false (true: the
advantages of the round are standardised, (A − mean) / (std + 1e-4), with Bessel's correction),
`reward_clip_range` none, `mask_truncated_completions` false, one reward function of weight 1.
A sample the judge gave no finite score (NaN) enters no baseline, and its advantage is 0; a
prompt with a single scored sample gives that one advantage 0 too. TRL's `num_generations` is
`loop.samples_per_prompt`; its generation batch (`steps_per_generation` × batch) is a round.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from prefopt.errors import PrefoptError
from prefopt.losses.base import LossOutput, PreferenceLoss, SampleLogps

NORMALIZE_EPS = 1e-4
"""TRL's denominator term when advantages are normalised."""


@dataclass
class Advantages:
    """A round's rewards and advantages, shape [prompts, k] each."""

    rewards: Tensor
    """judge − β·KL; NaN where the judge gave no score."""
    advantages: Tensor
    """reward − leave-one-out baseline; 0 where there is none."""


def nanstd(values: Tensor, dim: int | None = None) -> Tensor:
    """Standard deviation ignoring NaNs, with Bessel's correction (NaN for fewer than 2), as
    TRL's `trainer.utils.nanstd`."""
    keep = dim is not None
    mean = torch.nanmean(values, dim=dim, keepdim=True) if keep else torch.nanmean(values)
    variance = torch.nanmean((values - mean) ** 2, dim=dim, keepdim=keep)
    count = (~torch.isnan(values)).sum(dim=dim, keepdim=keep) if keep else (~values.isnan()).sum()
    variance = variance * torch.where(count > 1, count / (count - 1), float("nan"))
    return variance.sqrt()


def rloo_advantages(scores: Tensor, kl: Tensor, beta: float, normalize: bool = False) -> Advantages:
    """`scores`, `kl`: [prompts, k], the judge's scores (NaN: none) and the samples' sequence
    KL (k1, summed over tokens). See the module docstring."""
    rewards = scores - beta * kl if beta != 0.0 else scores.clone()  # TRL skips KL at β = 0
    scored = (~torch.isnan(rewards)).sum(dim=1, keepdim=True)
    total = torch.nansum(rewards, dim=1, keepdim=True)
    baselines = (total - rewards) / (scored - 1)
    advantages = rewards - baselines
    if normalize:
        advantages = (advantages - torch.nanmean(advantages)) / (nanstd(advantages) + NORMALIZE_EPS)
    return Advantages(rewards=rewards, advantages=torch.nan_to_num(advantages, nan=0.0))


@dataclass
class RLOOLoss(PreferenceLoss):
    beta: float = 0.05
    """KL coefficient: a sample's reward is its judge score − β·KL(π_old‖π_ref), the sequence
    sum of the per-token log-ratios (TRL's `beta`)."""
    epsilon: float = 0.2
    """Lower clip of the sequence ratio π/π_old: 1 − ε (TRL's `epsilon`)."""
    epsilon_high: float | None = None
    """Upper clip: 1 + ε_high; null = `epsilon` (TRL's `epsilon_high`)."""
    normalize_advantages: bool = False
    """Standardise a round's advantages (TRL's `normalize_advantages`)."""

    name: ClassVar[str] = "rloo"
    needs_reference: ClassVar[bool] = False
    """π_ref enters through the reward, computed when the round is made; not at the step."""
    on_policy: ClassVar[bool] = True

    def __post_init__(self) -> None:
        if not self.beta >= 0:
            raise PrefoptError(f"loss.beta={self.beta} for loss 'rloo': it must be >= 0")
        for key in ("epsilon", "epsilon_high"):
            value = getattr(self, key)
            if value is not None and not value > 0:
                raise PrefoptError(f"loss.{key}={value} for loss 'rloo': it must be > 0")

    @property
    def clip_range(self) -> tuple[float, float]:
        high = self.epsilon if self.epsilon_high is None else self.epsilon_high
        return 1 - self.epsilon, 1 + high

    def advantages(self, scores: Tensor, kl: Tensor) -> Advantages:
        """A round's rewards and advantages (what the online round calls)."""
        return rloo_advantages(scores, kl, self.beta, self.normalize_advantages)

    def __call__(self, policy: SampleLogps, reference=None) -> LossOutput:
        low, high = self.clip_range
        log_ratio = policy.current.summed - policy.old
        advantages = policy.advantages
        ratio = torch.exp(log_ratio)
        clipped = torch.clamp(ratio, low, high)
        losses = -torch.min(ratio * advantages, clipped * advantages)
        low_clipped = (ratio < low) & (advantages < 0)
        high_clipped = (ratio > high) & (advantages > 0)
        metrics = {
            "clip_fraction": (low_clipped | high_clipped).float(),
            "clip_fraction/low": low_clipped.float(),
            "clip_fraction/high": high_clipped.float(),
            "ratio": ratio.detach(),
            "advantages": advantages.detach(),
            "logps": policy.current.summed.detach(),
        }
        return LossOutput(loss=losses.mean(), metrics=metrics)
