"""AOT, paired form (Melnyk et al., 2024, *Distributional Preference Alignment of LLMs via
Optimal Transport*, arXiv:2406.05882).

AOT asks for first-order stochastic dominance of the policy's reward DISTRIBUTION over the
reference's rather than a margin per pair. Over a batch of n pairs, with the policy's and the
reference's chosen-minus-rejected log-prob differences (summed over tokens)

    u_i = log π(y_w,i|x_i) − log π(y_l,i|x_i),   v_i = log π_ref(y_w,i|x_i) − log π_ref(y_l,i|x_i)

each sorted ascending on its own (u_(1) ≤ … ≤ u_(n), likewise v), the one-dimensional optimal
transport plan matches the k-th smallest with the k-th smallest:

    L = 1/n Σ_k [ −(1 − ε) log σ(β (u_(k) − v_(k))) − ε log σ(−β (u_(k) − v_(k))) ]

The sort runs over the batch on each device (as TRL's `loss_type="aot"` does), so the loss of a
pair depends on the rest of its batch; the gradient flows through the sort to the pair in each
rank. ε is optional label smoothing, as in cDPO. `aot_unpaired` is the variant that sorts the
chosen and the rejected log-ratios separately.

Rewards are β·log π/π_ref per pair, unsorted, as for DPO.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from prefopt.losses.base import (
    LossOutput,
    PairLogps,
    PreferenceLoss,
    check_label_smoothing,
    check_positive,
    log_ratios,
    paired_metrics,
    smoothed_sigmoid_loss,
)


@dataclass
class AOTLoss(PreferenceLoss):
    beta: float = 0.1
    """Scale of the sorted differences inside the sigmoid, as DPO's β."""
    label_smoothing: float = 0.0
    """ε, the assumed share of flipped labels; 0 ≤ ε < 0.5."""

    name: ClassVar[str] = "aot"

    def __post_init__(self) -> None:
        check_positive(self.name, "beta", self.beta)
        check_label_smoothing(self.label_smoothing)

    def __call__(self, policy: PairLogps, reference: PairLogps | None) -> LossOutput:
        reference = self._require_reference(reference)
        policy_margins = policy.chosen.summed - policy.rejected.summed
        reference_margins = reference.chosen.summed - reference.rejected.summed
        return sorted_sigmoid_output(self, policy, reference, policy_margins, reference_margins)


def sorted_sigmoid_output(
    loss: PreferenceLoss, policy: PairLogps, reference: PairLogps, first: Tensor, second: Tensor
) -> LossOutput:
    """The AOT loss on two quantities over the batch, each sorted on its own: the k-th smallest
    `first` against the k-th smallest `second` (`loss` gives β and ε); rewards as DPO's."""
    delta = torch.sort(first, dim=0).values - torch.sort(second, dim=0).values
    losses = smoothed_sigmoid_loss(loss.beta * delta, loss.label_smoothing)
    chosen, rejected = log_ratios(policy, reference)
    metrics = paired_metrics(policy, loss.beta * chosen, loss.beta * rejected)
    return LossOutput(loss=losses.mean(), metrics=metrics)
