"""SFT: the negative log-likelihood of the chosen completions, the supervised term of mixes.

    L = − Σ_pairs log π(y_w|x) / Σ_pairs |y_w|

the mean NLL per completion token over the batch (each token counts once, so a long chosen
completion weighs more than a short one), as TRL's `loss_type="sft"` and a causal LM's
cross-entropy over completion tokens compute it. The rejected completion is not used, and no
reference model is loaded. Alone it is plain supervised fine-tuning on the chosen answers;
in `loss=mix` it is the `pref_ftx` / RPO-style term that keeps the chosen answers likely.

Its "rewards" are the mean per-token log-probs (β = 1), so that `rewards/accuracies` (the share
of pairs whose chosen completion the policy finds more likely per token) is logged as for the
other losses.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from torch import Tensor

from prefopt.losses.base import LossOutput, PairLogps, PreferenceLoss, paired_metrics


def chosen_nll(policy: PairLogps) -> Tensor:
    """Mean NLL per chosen completion token over the batch: −Σ log π(y_w|x) / Σ |y_w|."""
    return -policy.chosen.summed.sum() / policy.chosen.token_counts.sum().clamp(min=1)


@dataclass
class SFTLoss(PreferenceLoss):
    name: ClassVar[str] = "sft"
    needs_reference: ClassVar[bool] = False

    def __call__(self, policy: PairLogps, reference: PairLogps | None = None) -> LossOutput:
        nll = chosen_nll(policy)
        metrics = paired_metrics(policy, policy.chosen.mean, policy.rejected.mean)
        metrics["nll"] = nll.detach()
        return LossOutput(loss=nll, metrics=metrics)
