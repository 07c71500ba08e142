"""SimPO (Meng et al., 2024): a reference-free margin loss on average log-probs.

    L = −log σ(β·(avg log π(y_w|x) − avg log π(y_l|x)) − γ),   γ = gamma_beta_ratio · β

"avg" is the mean log-probability over completion tokens (LENGTH-NORMALISED), which is the
implicit reward β·avg log π and removes DPO's bias towards long answers. No reference model is
loaded or run. Optional label smoothing as in cDPO. The authors tune β in about [2, 10] and
γ/β in about [0.3, 1]; defaults β = 2.0, γ/β = 0.5.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from prefopt.errors import PrefoptError
from prefopt.losses.base import (
    LossOutput,
    PairLogps,
    PreferenceLoss,
    check_label_smoothing,
    check_positive,
    paired_metrics,
    smoothed_sigmoid_loss,
)


@dataclass
class SimPOLoss(PreferenceLoss):
    beta: float = 2.0
    """Scale of the reward β·avg log π."""
    gamma_beta_ratio: float = 0.5
    """Target reward margin γ expressed as γ/β."""
    label_smoothing: float = 0.0
    """ε, the assumed share of flipped labels; 0 ≤ ε < 0.5."""

    name: ClassVar[str] = "simpo"
    needs_reference: ClassVar[bool] = False
    recommended_beta: ClassVar[tuple[float, float]] = (2.0, 10.0)

    def __post_init__(self) -> None:
        check_positive(self.name, "beta", self.beta)
        if self.gamma_beta_ratio < 0:
            raise PrefoptError(f"loss.gamma_beta_ratio={self.gamma_beta_ratio}: it must be ≥ 0")
        check_label_smoothing(self.label_smoothing)

    def __call__(self, policy: PairLogps, reference: PairLogps | None = None) -> LossOutput:
        chosen_rewards = self.beta * policy.chosen.mean
        rejected_rewards = self.beta * policy.rejected.mean
        logits = chosen_rewards - rejected_rewards - self.gamma_beta_ratio * self.beta
        losses = smoothed_sigmoid_loss(logits, self.label_smoothing)
        metrics = paired_metrics(policy, chosen_rewards, rejected_rewards)
        return LossOutput(loss=losses.mean(), metrics=metrics)
