"""DiscoPOP, the log-ratio modulated loss (Lu et al., 2024, *Discovering Preference
Optimization Algorithms with and for Large Language Models*, arXiv:2406.08414, Eq. 5).

With ρ = β h, h the DPO log-ratio margin (summed over completion tokens), and the mixing weight
m = σ(ρ/τ):

    L = (1 − m) · (−log σ(ρ)) + m · exp(−ρ)

A blend, discovered by an LLM-driven search, of DPO's logistic loss (for pairs ranked wrongly,
ρ ≪ 0, where m → 0) and an exponential loss (for pairs ranked right, ρ ≫ 0, where m → 1); τ sets
how sharply it switches around ρ = 0. TRL's `loss_type="discopop"` with `discopop_tau=τ`.

Rewards are β·log π/π_ref, as for DPO.

Computed in log space: m·exp(−ρ) = exp(log σ(ρ/τ) − ρ) and 1 − m = σ(−ρ/τ). The literal form
overflows for ρ < −88.7 in float32 (exp(−ρ) = inf while m = 0, and 0·inf is NaN); this one is
finite, loss and gradient, at any ρ.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch.nn.functional as F
from torch import Tensor

from prefopt.losses.base import LogRatioLoss, check_positive


@dataclass
class DiscoPOPLoss(LogRatioLoss):
    beta: float = 0.1
    """KL strength, as for DPO."""
    discopop_tau: float = 0.05
    """τ, the temperature of the mixing weight σ(ρ/τ) (the paper's value; TRL's name)."""

    name: ClassVar[str] = "discopop"

    def __post_init__(self) -> None:
        super().__post_init__()
        check_positive(self.name, "discopop_tau", self.discopop_tau)

    def pair_losses(self, chosen: Tensor, rejected: Tensor) -> Tensor:
        logits = self.beta * (chosen - rejected)
        scaled = logits / self.discopop_tau
        logistic = (-scaled).sigmoid() * -F.logsigmoid(logits)  # (1 − m)·(−log σ(ρ))
        exponential = (F.logsigmoid(scaled) - logits).exp()  # m·exp(−ρ), never inf·0
        return logistic + exponential
