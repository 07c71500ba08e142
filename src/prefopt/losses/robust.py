"""Robust DPO (Chowdhury, Kini and Natarajan, 2024, *Provably Robust DPO: Aligning Language
Models with Noisy Feedback*, arXiv:2403.00409).

With h the DPO log-ratio margin (summed over completion tokens) and ε the rate at which labels
are flipped:

    L = [ −(1 − ε) log σ(β h) + ε log σ(−β h) ] / (1 − 2ε)

An unbiased estimate of the clean-label DPO loss under labels flipped with probability ε: the
flipped-pair term is SUBTRACTED (cDPO adds it), and the division by 1 − 2ε undoes the shrinkage.
ε = 0 is DPO. The loss can go negative; only its gradient means something. TRL's
`loss_type="robust"` with `label_smoothing=ε`.

Rewards are β·log π/π_ref, as for DPO.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch.nn.functional as F
from torch import Tensor

from prefopt.losses.base import LogRatioLoss, check_label_smoothing


@dataclass
class RobustLoss(LogRatioLoss):
    beta: float = 0.1
    """KL strength, as for DPO."""
    label_smoothing: float = 0.1
    """ε, the assumed rate of flipped labels; 0 ≤ ε < 0.5. The default assumes one label in ten
    is wrong: set it to your estimate of the noise (TRL's default 0 makes the loss plain DPO)."""

    name: ClassVar[str] = "robust"

    def __post_init__(self) -> None:
        super().__post_init__()
        check_label_smoothing(self.label_smoothing)

    def pair_losses(self, chosen: Tensor, rejected: Tensor) -> Tensor:
        logits = self.beta * (chosen - rejected)
        eps = self.label_smoothing
        return (-(1 - eps) * F.logsigmoid(logits) + eps * F.logsigmoid(-logits)) / (1 - 2 * eps)
