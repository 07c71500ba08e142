"""Length-normalised DPO: DPO on the mean per-token log-ratios (TRL's `loss_type="sigmoid_norm"`;
the DPO variant Tülu 3 trains with, Lambert et al., 2024, *Tülu 3: Pushing Frontiers in Open
Language Model Post-Training*, arXiv:2411.15124).

With |y| the completion's token count and avg log π(y|x) = log π(y|x)/|y|:

    h̄ = (avg log π(y_w|x) − avg log π_ref(y_w|x)) − (avg log π(y_l|x) − avg log π_ref(y_l|x))
    L = −log σ(β h̄)

Summed DPO (`loss=dpo`) favours long completions, whose log-ratios add up over more tokens; the
mean removes that bias (as SimPO's reward does, but here against π_ref). Because h̄ is per
token, β is much larger than DPO's: Tülu 3 uses β = 5.

Rewards are β·log π/π_ref SUMMED over tokens (as TRL logs them for every loss type), so they
compare with DPO's; the loss itself uses the means.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch.nn.functional as F

from prefopt.losses.base import (
    LossOutput,
    PairLogps,
    PreferenceLoss,
    check_positive,
    log_ratios,
    paired_metrics,
)


@dataclass
class SigmoidNormLoss(PreferenceLoss):
    beta: float = 5.0
    """KL strength on the per-token margin h̄ (Tülu 3's value)."""

    name: ClassVar[str] = "sigmoid_norm"

    def __post_init__(self) -> None:
        check_positive(self.name, "beta", self.beta)

    def __call__(self, policy: PairLogps, reference: PairLogps | None) -> LossOutput:
        reference = self._require_reference(reference)
        chosen_mean = policy.chosen.mean - reference.chosen.mean
        rejected_mean = policy.rejected.mean - reference.rejected.mean
        losses = -F.logsigmoid(self.beta * (chosen_mean - rejected_mean))
        chosen, rejected = log_ratios(policy, reference)
        metrics = paired_metrics(policy, self.beta * chosen, self.beta * rejected)
        return LossOutput(loss=losses.mean(), metrics=metrics)
