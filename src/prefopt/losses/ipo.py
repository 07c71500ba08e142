"""IPO (Azar et al., 2023): regress the log-ratio margin onto a fixed target 1/(2β).

    h = log π(y_w|x)/π_ref(y_w|x) − log π(y_l|x)/π_ref(y_l|x)
    L = (h − 1/(2β))²

Unlike DPO's sigmoid, the square keeps pulling the margin back once it passes the target, so
the policy cannot drift without bound on pairs it already ranks correctly.

By default the log-probs are LENGTH-NORMALISED (mean over completion tokens), as the IPO
authors and TRL use them; `length_normalize=false` gives the summed form. Rewards are
β times the (normalised) log-ratios.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from prefopt.losses.base import (
    LossOutput,
    PairLogps,
    PreferenceLoss,
    check_positive,
    paired_metrics,
)


@dataclass
class IPOLoss(PreferenceLoss):
    beta: float = 0.5
    """Regularisation τ of the paper: the target margin is 1/(2β). With length-normalised
    log-probs the margin is per token, so β = 0.5 asks for 1 nat per token (β = 0.1 for 5)."""
    length_normalize: bool = True
    """Use mean per-token log-probs (true) or sums (false, the summed form of the paper's derivation)."""

    name: ClassVar[str] = "ipo"
    recommended_beta: ClassVar[tuple[float, float]] = (0.01, 1.0)

    def __post_init__(self) -> None:
        check_positive(self.name, "beta", self.beta)

    def __call__(self, policy: PairLogps, reference: PairLogps | None) -> LossOutput:
        reference = self._require_reference(reference)

        def logps(side):
            return side.mean if self.length_normalize else side.summed

        chosen_logratio = logps(policy.chosen) - logps(reference.chosen)
        rejected_logratio = logps(policy.rejected) - logps(reference.rejected)
        losses = (chosen_logratio - rejected_logratio - 1 / (2 * self.beta)) ** 2
        metrics = paired_metrics(policy, self.beta * chosen_logratio, self.beta * rejected_logratio)
        return LossOutput(loss=losses.mean(), metrics=metrics)
