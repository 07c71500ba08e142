"""NCA on pairs (Chen et al., 2024, *Noise Contrastive Alignment of Language Models with
Explicit Rewards*, arXiv:2402.05369), the K = 2 case of its preference form.

With the rewards r_w = β log π(y_w|x)/π_ref(y_w|x), r_l likewise (summed over tokens):

    L = −log σ(r_w) − ½ log σ(−r_w) − ½ log σ(−r_l)

Unlike DPO, which only moves the margin r_w − r_l, NCA scores each completion against the
reference on its own: the first term raises the chosen reward, the other two keep both rewards
from growing, so the chosen likelihood does not fall along with the rejected one. TRL's
`loss_type="nca_pair"`.

Rewards are β·log π/π_ref, as for DPO.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch.nn.functional as F
from torch import Tensor

from prefopt.losses.base import LogRatioLoss


@dataclass
class NCAPairLoss(LogRatioLoss):
    beta: float = 0.1
    """Scale of the rewards β·log π/π_ref."""

    name: ClassVar[str] = "nca_pair"

    def pair_losses(self, chosen: Tensor, rejected: Tensor) -> Tensor:
        r_w, r_l = self.beta * chosen, self.beta * rejected
        return -F.logsigmoid(r_w) - 0.5 * F.logsigmoid(-r_w) - 0.5 * F.logsigmoid(-r_l)
