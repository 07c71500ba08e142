"""The Bradley–Terry loss of a reward model and what it logs.

Under the Bradley–Terry model the probability that the chosen completion is preferred is
σ(r_c − r_r), so the maximum-likelihood loss on a pair is −log σ(r_c − r_r) (the DPO paper's
eq. 2). Two options, as TRL's `RewardTrainer` has them:

- a margin m: −log σ(r_c − r_r − m), which asks the chosen to lead by m (Llama 2's reward
  models take m from the strength of the annotators' preference); TRL reads it from a `margin`
  data column only, prefopt also takes one value for every pair (`task.margin`);
- reward centering: + c·mean((r_c + r_r)²) (`task.center_rewards_coefficient`), which pins the
  rewards' mean near 0 (the Bradley–Terry loss sees differences only, so it leaves the offset
  free to drift).

A pair whose two sides score alike gives −log σ(0) = ln 2 and a gradient that pushes them apart
only where their inputs differ: two identical sequences (after truncation) give ln 2 forever.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor


@dataclass
class RewardLossOutput:
    loss: Tensor
    """The batch's mean loss (with the centering term)."""
    metrics: dict[str, Tensor]
    """Per-pair values: `accuracy` (1 where r_c > r_r, ties count 0 as in TRL), `margin`
    (r_c − r_r), `chosen` and `rejected` rewards."""


def bradley_terry_loss(
    chosen: Tensor,
    rejected: Tensor,
    margin: Tensor | float = 0.0,
    center_rewards_coefficient: float = 0.0,
) -> RewardLossOutput:
    """−mean log σ(r_c − r_r − m) + c·mean((r_c + r_r)²) over a batch of pairs."""
    difference = chosen - rejected
    loss = -F.logsigmoid(difference - margin).mean()
    if center_rewards_coefficient:
        loss = loss + center_rewards_coefficient * ((chosen + rejected) ** 2).mean()
    with torch.no_grad():
        metrics = {
            "accuracy": (difference > 0).float(),
            "margin": difference.detach(),
            "chosen": chosen.detach(),
            "rejected": rejected.detach(),
        }
    return RewardLossOutput(loss, metrics)
