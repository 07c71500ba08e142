"""SPPO with hard labels (Wu et al., 2024, *Self-Play Preference Optimization for Language
Model Alignment*, arXiv:2405.00675).

SPPO regresses each completion's log-ratio onto η (P̂(y ≻ π) − ½), P̂ the estimated
probability that y beats the current policy. With hard labels (P̂ = 1 for the chosen, 0 for the
rejected) and η = 1/β, on log-ratios summed over completion tokens:

    L = (log π(y_w|x)/π_ref(y_w|x) − 1/(2β))² + (log π(y_l|x)/π_ref(y_l|x) + 1/(2β))²

The chosen log-ratio is pulled to +1/(2β), the rejected to −1/(2β), each on its own (IPO
squares only their difference). π_ref is the policy of the previous self-play iteration; here
it is the run's reference. TRL's `loss_type="sppo_hard"`. The paper's soft-probability form
needs P̂ from a preference model and is not this loss.

Rewards are β·log π/π_ref, as for DPO.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from torch import Tensor

from prefopt.losses.base import LogRatioLoss


@dataclass
class SPPOHardLoss(LogRatioLoss):
    beta: float = 0.1
    """1/η: the log-ratio targets are ±1/(2β) (±5 nats at the default, as in TRL)."""

    name: ClassVar[str] = "sppo_hard"

    def pair_losses(self, chosen: Tensor, rejected: Tensor) -> Tensor:
        target = 0.5 / self.beta
        return (chosen - target) ** 2 + (rejected + target) ** 2
