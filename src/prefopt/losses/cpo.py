"""CPO (Xu et al., 2024, *Contrastive Preference Optimization: Pushing the Boundaries of LLM
Performance in Machine Translation*): DPO's Bradley-Terry term with a uniform reference, plus NLL.

    L = L_prefer + cpo_alpha · L_NLL
    L_prefer = −(1 − ε) log σ(β h) − ε log σ(−β h),   h = log π(y_w|x) − log π(y_l|x)

log-probs SUMMED over the completion tokens (the paper's Eq. 3, ε = 0; ε > 0 is TRL's
conservative form). L_NLL is the NLL of the chosen completion per token
(`sft.chosen_nll`): the paper writes −log π(y_w|x) and its released code (ALMA-R) and TRL's
CPOTrainer take the mean cross-entropy over the chosen completion's tokens, which prefopt does
too. No reference model is loaded: the paper drops π_ref as a uniform prior.

TRL's CPO loss types (`loss_type`), each on the same h:
- `sigmoid`: the paper's loss above (default);
- `hinge`: max(0, 1 − β h) (SLiC);
- `ipo`: (h − 1/(2β))² with LENGTH-NORMALISED log-probs (mean per token);
- `simpo`: CPO-SimPO, −log σ(β h − γ) with length-normalised log-probs, γ = `simpo_gamma`
  (TRL computes β·(h − γ/β), the same number).
Rewards (logged) are β times the policy log-probs used in h. Defaults as in the paper and TRL:
β = 0.1, cpo_alpha = 1. TRL's AlphaPO reward shaping (`alpha`) is not included.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from prefopt.errors import PrefoptError
from prefopt.losses.base import (
    LossOutput,
    PairLogps,
    PreferenceLoss,
    check_label_smoothing,
    check_positive,
    paired_metrics,
    smoothed_sigmoid_loss,
)
from prefopt.losses.sft import chosen_nll

CPO_LOSS_TYPES = ("sigmoid", "hinge", "ipo", "simpo")


@dataclass
class CPOLoss(PreferenceLoss):
    beta: float = 0.1
    """Temperature of the preference term (the paper and TRL: 0.1)."""
    cpo_alpha: float = 1.0
    """Weight of the NLL of the chosen completion; 0 drops it (as CPO-SimPO without BC)."""
    loss_type: str = "sigmoid"
    """sigmoid (the paper), hinge, ipo or simpo: TRL's CPO loss types."""
    label_smoothing: float = 0.0
    """ε of the sigmoid and simpo types, the assumed share of flipped labels; 0 ≤ ε < 0.5."""
    simpo_gamma: float = 0.5
    """γ, the target reward margin of loss_type=simpo (TRL's default 0.5)."""

    name: ClassVar[str] = "cpo"
    needs_reference: ClassVar[bool] = False
    recommended_beta: ClassVar[tuple[float, float]] = (0.05, 0.5)

    def __post_init__(self) -> None:
        check_positive(self.name, "beta", self.beta)
        check_label_smoothing(self.label_smoothing)
        if self.loss_type not in CPO_LOSS_TYPES:
            raise PrefoptError(
                f"loss.loss_type={self.loss_type!r} for loss 'cpo': "
                f"choose one of {', '.join(CPO_LOSS_TYPES)}"
            )
        if self.cpo_alpha < 0:
            raise PrefoptError(f"loss.cpo_alpha={self.cpo_alpha}: it must be ≥ 0")

    def __call__(self, policy: PairLogps, reference: PairLogps | None = None) -> LossOutput:
        normalised = self.loss_type in ("ipo", "simpo")
        chosen = policy.chosen.mean if normalised else policy.chosen.summed
        rejected = policy.rejected.mean if normalised else policy.rejected.summed
        h = chosen - rejected
        if self.loss_type == "sigmoid":
            losses = smoothed_sigmoid_loss(self.beta * h, self.label_smoothing)
        elif self.loss_type == "simpo":
            losses = smoothed_sigmoid_loss(self.beta * h - self.simpo_gamma, self.label_smoothing)
        elif self.loss_type == "hinge":
            losses = (1 - self.beta * h).relu()
        else:
            losses = (h - 1 / (2 * self.beta)) ** 2
        nll = chosen_nll(policy)
        loss = losses.mean() + self.cpo_alpha * nll

        metrics = paired_metrics(policy, self.beta * chosen, self.beta * rejected)
        metrics["nll"] = nll.detach()
        return LossOutput(loss=loss, metrics=metrics)
