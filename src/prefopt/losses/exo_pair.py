"""EXO on pairs (Ji et al., 2024, *Towards Efficient Exact Optimization of Language Model
Alignment*, arXiv:2402.00856, EXO-pref with K = 2).

EXO minimises the REVERSE KL from the policy's preference distribution to the labels', where DPO
minimises the forward one. Over the two completions, the policy's distribution is
q = softmax(β log π/π_ref) = (σ(β h), σ(−β h)), h the DPO log-ratio margin (summed over tokens),
and the labels' is p = (1 − ε, ε). The loss is KL(q ‖ p):

    L = σ(βh) (log σ(βh) − log(1 − ε)) + σ(−βh) (log σ(−βh) − log ε)

It is minimal (0) at σ(βh) = 1 − ε, so ε > 0 is required: it sets the target margin
log((1 − ε)/ε)/β. The paper's two temperatures, β_π (policy) and β_r (reward), are one β here,
as in TRL's `loss_type="exo_pair"`, with ε = `label_smoothing` (1e-3, the value TRL's docs give
as the paper's recommendation).

Rewards are β·log π/π_ref, as for DPO.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch.nn.functional as F
from torch import Tensor

from prefopt.errors import PrefoptError
from prefopt.losses.base import LogRatioLoss


@dataclass
class ExoPairLoss(LogRatioLoss):
    beta: float = 0.1
    """Temperature of the policy's preference distribution softmax(β log π/π_ref)."""
    label_smoothing: float = 1e-3
    """ε, the probability the label distribution gives the rejected completion; 0 < ε < 0.5."""

    name: ClassVar[str] = "exo_pair"

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0.0 < self.label_smoothing < 0.5:
            raise PrefoptError(
                f"loss.label_smoothing={self.label_smoothing} for loss 'exo_pair': it must be in "
                "(0, 0.5) (the paper recommends 1e-3; 0 makes the target margin infinite)"
            )

    def pair_losses(self, chosen: Tensor, rejected: Tensor) -> Tensor:
        logits = self.beta * (chosen - rejected)
        eps = self.label_smoothing
        return logits.sigmoid() * (F.logsigmoid(logits) - math.log1p(-eps)) + (
            -logits
        ).sigmoid() * (F.logsigmoid(-logits) - math.log(eps))
