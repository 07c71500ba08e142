"""IPO (Azar et al., 2023): regress the log-ratio margin onto a fixed target 1/(2β).

    h = log π(y_w|x)/π_ref(y_w|x) − log π(y_l|x)/π_ref(y_l|x)
    L = (h − 1/(2β))²

Unlike DPO's sigmoid, the square keeps pulling the margin back once it passes the target, so
the policy cannot drift without bound on pairs it already ranks correctly.

By default the log-probs are LENGTH-NORMALISED (mean over completion tokens), as the IPO
authors and TRL use them; `length_normalize=false` gives the summed form. Rewards are
β times the (normalised) log-ratios.

Options, as TRL's DPOTrainer has them for `loss_type="ipo"` (`paired_options`; off by default):
`ld_alpha` (LD-DPO: the tokens past the pair's shorter completion weighted by α before the
normalisation, which still divides by the whole length, as TRL does) and `use_weighting` (WPO).
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
from prefopt.losses.paired_options import check_options, ld_logps, wpo_weights


@dataclass
class IPOLoss(PreferenceLoss):
    beta: float = 0.5
    """Regularisation τ of the paper: the target margin is 1/(2β). With length-normalised
    log-probs the margin is per token, so β = 0.5 asks for 1 nat per token (β = 0.1 for 5)."""
    length_normalize: bool = True
    """Use mean per-token log-probs (true) or sums (false, the summed form of the paper's derivation)."""
    ld_alpha: float | None = None
    """LD-DPO's α in [0, 1]: weight of the tokens past the shorter completion (null = off)."""
    use_weighting: bool = False
    """WPO: weight each pair by the policy's aligned probability of both completions."""

    name: ClassVar[str] = "ipo"
    recommended_beta: ClassVar[tuple[float, float]] = (0.01, 1.0)

    def __post_init__(self) -> None:
        check_positive(self.name, "beta", self.beta)
        check_options(self.name, self.ld_alpha)

    @property
    def needs_shared_prefix(self) -> bool:
        return self.ld_alpha is not None

    @property
    def needs_wpo(self) -> bool:
        return self.use_weighting

    def __call__(self, policy: PairLogps, reference: PairLogps | None) -> LossOutput:
        reference = self._require_reference(reference)

        def logps(side):
            if self.ld_alpha is None:  # the plain form, untouched
                return side.mean if self.length_normalize else side.summed
            weighted = ld_logps(side, self.ld_alpha)
            return weighted / side.token_counts.clamp(min=1) if self.length_normalize else weighted

        chosen_logratio = logps(policy.chosen) - logps(reference.chosen)
        rejected_logratio = logps(policy.rejected) - logps(reference.rejected)
        losses = (chosen_logratio - rejected_logratio - 1 / (2 * self.beta)) ** 2
        metrics = paired_metrics(policy, self.beta * chosen_logratio, self.beta * rejected_logratio)
        if self.use_weighting:
            weights = wpo_weights(policy)
            losses = losses * weights
            metrics["wpo_weight"] = weights
        return LossOutput(loss=losses.mean(), metrics=metrics)
