"""DPO (Rafailov et al., 2023), with conservative label smoothing (cDPO).

With h = log π(y_w|x)/π_ref(y_w|x) − log π(y_l|x)/π_ref(y_l|x) (summed over completion tokens):

    L = −(1 − ε) log σ(β h) − ε log σ(−β h)

ε = 0 is the paper's loss. ε > 0 assumes each label is flipped with probability ε, which bounds
the loss from below and stops the margin from growing without end. The implicit rewards are
r̂ = β log π/π_ref; σ(r̂_l − r̂_w) is the per-pair gradient weight of the paper's analysis:
large when the pair is ranked wrongly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

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
class DPOLoss(PreferenceLoss):
    beta: float = 0.1
    """KL strength: small β lets the policy move far from the reference, large β keeps it close."""
    label_smoothing: float = 0.0
    """ε, the assumed share of flipped labels (cDPO); 0 ≤ ε < 0.5."""

    name: ClassVar[str] = "dpo"
    recommended_beta: ClassVar[tuple[float, float]] = (0.05, 0.5)

    def __post_init__(self) -> None:
        check_positive(self.name, "beta", self.beta)
        check_label_smoothing(self.label_smoothing)

    def __call__(self, policy: PairLogps, reference: PairLogps | None) -> LossOutput:
        reference = self._require_reference(reference)
        chosen_logratio = policy.chosen.summed - reference.chosen.summed
        rejected_logratio = policy.rejected.summed - reference.rejected.summed
        logits = self.beta * (chosen_logratio - rejected_logratio)
        losses = smoothed_sigmoid_loss(logits, self.label_smoothing)

        metrics = paired_metrics(policy, self.beta * chosen_logratio, self.beta * rejected_logratio)
        metrics["gradient_weight"] = (-logits).sigmoid().detach()
        return LossOutput(loss=losses.mean(), metrics=metrics)
