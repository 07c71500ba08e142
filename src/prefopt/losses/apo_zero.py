"""APO-zero (D'Oosterlinck et al., 2024, *Anchored Preference Optimization and Contrastive
Revisions*, arXiv:2408.06266, Eq. 7).

With the rewards r_w = β log π(y_w|x)/π_ref(y_w|x), r_l likewise (summed over tokens):

    L = (1 − σ(r_w)) + σ(r_l)

An ANCHORED loss: it says in which direction each likelihood must move, not only their margin.
Chosen likelihoods go up and rejected ones down: use it when the chosen completions are better
than what the model produces now (e.g. from a stronger model). The paper writes the loss as
−σ(r_w) + σ(r_l); the constant 1 here (as in TRL's `loss_type="apo_zero"`) keeps the logged loss
in [0, 2] and changes no gradient.

Rewards are β·log π/π_ref, as for DPO.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from torch import Tensor

from prefopt.losses.base import LogRatioLoss


@dataclass
class APOZeroLoss(LogRatioLoss):
    beta: float = 0.1
    """Scale of the rewards β·log π/π_ref inside the sigmoids."""

    name: ClassVar[str] = "apo_zero"

    def pair_losses(self, chosen: Tensor, rejected: Tensor) -> Tensor:
        r_w, r_l = self.beta * chosen, self.beta * rejected
        return (1 - r_w.sigmoid()) + r_l.sigmoid()
