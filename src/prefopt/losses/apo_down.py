"""APO-down (D'Oosterlinck et al., 2024, *Anchored Preference Optimization and Contrastive
Revisions*, arXiv:2408.06266, Eq. 8).

With the rewards r_w = β log π(y_w|x)/π_ref(y_w|x), r_l likewise (summed over tokens):

    L = σ(r_w) + (1 − σ(r_w − r_l))

An ANCHORED loss: both likelihoods go down, the rejected one more. Use it when even the chosen
completions are worse than what the model produces now (the model should learn the contrast,
not imitate the chosen answers). The paper writes the loss as σ(r_w) − σ(r_w − r_l); the
constant 1 here (as in TRL's `loss_type="apo_down"`) keeps the logged loss in [0, 2] and changes
no gradient.

Rewards are β·log π/π_ref, as for DPO.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from torch import Tensor

from prefopt.losses.base import LogRatioLoss


@dataclass
class APODownLoss(LogRatioLoss):
    beta: float = 0.1
    """Scale of the rewards β·log π/π_ref inside the sigmoids."""

    name: ClassVar[str] = "apo_down"

    def pair_losses(self, chosen: Tensor, rejected: Tensor) -> Tensor:
        r_w, r_l = self.beta * chosen, self.beta * rejected
        return r_w.sigmoid() + (1 - (r_w - r_l).sigmoid())
