"""Hinge loss on the reference-normalised likelihood: SLiC's calibration loss as RSO states it.

With h = log π(y_w|x)/π_ref(y_w|x) − log π(y_l|x)/π_ref(y_l|x) (summed over completion tokens):

    L = max(0, 1 − β h)

SLiC-HF (Zhao et al., 2023, arXiv:2305.10425) calibrates max(0, δ − log π(y_w|x) + log π(y_l|x))
on the policy alone; RSO (Liu et al., 2023, *Statistical Rejection Sampling Improves Preference
Optimization*, arXiv:2309.06657) normalises both log-probs by the reference, which is the form
here and TRL's `loss_type="hinge"`: 1/β plays SLiC's margin δ (L = β·max(0, 1/β − h)). Pairs
whose margin exceeds 1/β give no gradient at all, unlike DPO's ever-shrinking one. SLiC-HF's
second term (NLL on reference targets) is a separate loss to add in a mix.

Rewards are β·log π/π_ref, as for DPO.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from prefopt.losses.base import LogRatioLoss


@dataclass
class HingeLoss(LogRatioLoss):
    beta: float = 0.1
    """Inverse margin: the loss is zero once h ≥ 1/β (TRL's default)."""

    name: ClassVar[str] = "hinge"

    def pair_losses(self, chosen: Tensor, rejected: Tensor) -> Tensor:
        return torch.relu(1 - self.beta * (chosen - rejected))
