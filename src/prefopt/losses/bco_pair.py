"""BCO on pairs (Jung et al., 2024, *Binary Classifier Optimization for Large Language Model
Alignment*, arXiv:2404.04656): each completion is classified on its own, the chosen one as good,
the rejected one as bad, around a running reward baseline δ.

With the rewards r_w = β log π(y_w|x)/π_ref(y_w|x), r_l likewise (summed over tokens):

    L = −log σ(r_w − δ) − log σ(−(r_l − δ))

δ, the reward shift of the paper, is the running mean of the training batches' mean reward
(r_w and r_l together): each training step first adds its batch's mean reward, averaged across
devices, then uses the updated mean. It is detached, it does not move in validation, and it
is saved in checkpoints, so a resumed run continues with the same δ. This is the paper's loss
and TRL's `bco_pair` before TRL 1.0; TRL 1.16's `bco_pair` drops δ (δ = 0 always), which
`running_baseline=false` reproduces.

Rewards are β·log π/π_ref, as for DPO; δ is logged as `reward_baseline`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from prefopt.losses.base import (
    LossOutput,
    PairLogps,
    PreferenceLoss,
    check_positive,
    log_ratios,
    paired_metrics,
)


@dataclass
class BCOPairLoss(PreferenceLoss):
    beta: float = 0.1
    """Scale of the rewards β·log π/π_ref."""
    running_baseline: bool = True
    """Shift the rewards by their running mean δ (the paper); false: δ = 0, as TRL 1.16."""

    name: ClassVar[str] = "bco_pair"
    keeps_state: ClassVar[bool] = True

    def __post_init__(self) -> None:
        check_positive(self.name, "beta", self.beta)
        # δ: the mean of the `baseline_count` training batch means seen so far (state, not a
        # hyperparameter, so not a field: the config schema never sees it).
        self.baseline = torch.zeros(())
        self.baseline_count = 0

    def __call__(
        self,
        policy: PairLogps,
        reference: PairLogps | None,
        training: bool = True,
        mean_across_devices: Callable[[Tensor], Tensor] = lambda t: t,
    ) -> LossOutput:
        chosen, rejected = log_ratios(policy, self._require_reference(reference))
        chosen_rewards, rejected_rewards = self.beta * chosen, self.beta * rejected
        if self.running_baseline and training:
            batch_mean = mean_across_devices(
                torch.cat([chosen_rewards, rejected_rewards]).mean().detach()
            )
            self.baseline_count += 1
            baseline = self.baseline.to(batch_mean)
            self.baseline = baseline + (batch_mean.detach() - baseline) / self.baseline_count
        delta = (
            self.baseline.to(chosen_rewards) if self.running_baseline else chosen.new_zeros(())
        ).detach()
        losses = -F.logsigmoid(chosen_rewards - delta) - F.logsigmoid(-(rejected_rewards - delta))
        metrics = paired_metrics(policy, chosen_rewards, rejected_rewards)
        metrics["reward_baseline"] = delta
        return LossOutput(loss=losses.mean(), metrics=metrics)

    def state_dict(self) -> dict[str, Tensor]:
        return {
            "baseline": self.baseline.detach().cpu(),
            "baseline_count": torch.tensor(self.baseline_count),
        }

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        self.baseline = state["baseline"].float()
        self.baseline_count = int(state["baseline_count"])
