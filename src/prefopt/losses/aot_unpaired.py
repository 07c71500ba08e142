"""AOT, unpaired form (Melnyk et al., 2024, *Distributional Preference Alignment of LLMs via
Optimal Transport*, arXiv:2406.05882).

Stochastic dominance of the chosen completions' reward distribution over the rejected ones':
with the log-ratios a_i = log π(y_w,i|x_i)/π_ref(y_w,i|x_i) and b_i = log π(y_l,i|x_i)/π_ref(y_l,i|x_i)
(summed over tokens), each sorted ascending over the batch on its own:

    L = 1/n Σ_k [ −(1 − ε) log σ(β (a_(k) − b_(k))) − ε log σ(−β (a_(k) − b_(k))) ]

"Unpaired" is the paper's word for not using which chosen went with which rejected: the data is
still (prompt, chosen, rejected) pairs, so in prefopt it is a paired loss (it cannot train on
`data.format=unpaired` rows, which carry one completion each). TRL's
`loss_type="aot_unpaired"`; `aot` is the paired form. The sort runs over each device's batch.

Rewards are β·log π/π_ref per pair, unsorted, as for DPO.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from prefopt.losses.aot import sorted_sigmoid_output
from prefopt.losses.base import (
    LossOutput,
    PairLogps,
    PreferenceLoss,
    check_label_smoothing,
    check_positive,
    log_ratios,
)


@dataclass
class AOTUnpairedLoss(PreferenceLoss):
    # Fields of its own rather than inherited from AOTLoss: the configuration reference is
    # generated from each loss file's own dataclass.
    beta: float = 0.1
    """Scale of the sorted differences inside the sigmoid, as DPO's β."""
    label_smoothing: float = 0.0
    """ε, the assumed share of flipped labels; 0 ≤ ε < 0.5."""

    name: ClassVar[str] = "aot_unpaired"

    def __post_init__(self) -> None:
        check_positive(self.name, "beta", self.beta)
        check_label_smoothing(self.label_smoothing)

    def __call__(self, policy: PairLogps, reference: PairLogps | None) -> LossOutput:
        reference = self._require_reference(reference)
        chosen, rejected = log_ratios(policy, reference)
        return sorted_sigmoid_output(self, policy, reference, chosen, rejected)
