"""DPO (Rafailov et al., 2023), with conservative label smoothing (cDPO).

With h = log π(y_w|x)/π_ref(y_w|x) − log π(y_l|x)/π_ref(y_l|x) (summed over completion tokens):

    L = −(1 − ε) log σ(β h) − ε log σ(−β h)

ε = 0 is the paper's loss. ε > 0 assumes each label is flipped with probability ε, which bounds
the loss from below and stops the margin from growing without end. The implicit rewards are
r̂ = β log π/π_ref; σ(r̂_l − r̂_w) is the per-pair gradient weight of the paper's analysis:
large when the pair is ranked wrongly.

Options, as TRL's DPOTrainer has them (`paired_options`; off by default, which leaves the loss
above untouched): `ld_alpha` (LD-DPO: log-probs with the tokens past the shorter completion
weighted by α, policy and reference alike), `use_weighting` (WPO: each pair's loss times
w(y_w)·w(y_l), the policy's aligned per-token probabilities, detached) and `f_divergence`
(f-DPO: h = f'(u_w) − f'(u_l), u = π/π_ref; `f_alpha` is the paper's α, which is 1 minus TRL's
`f_alpha_divergence_coef`). The rewards stay β times the (LD-weighted) log-ratios, as in TRL.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from prefopt.losses.base import (
    LossOutput,
    PairLogps,
    PreferenceLoss,
    check_label_smoothing,
    check_positive,
    paired_metrics,
    smoothed_sigmoid_loss,
)
from prefopt.losses.paired_options import check_options, f_divergence_score, ld_logps, wpo_weights


@dataclass
class DPOLoss(PreferenceLoss):
    beta: float = 0.1
    """KL strength: small β lets the policy move far from the reference, large β keeps it close."""
    label_smoothing: float = 0.0
    """ε, the assumed share of flipped labels (cDPO); 0 ≤ ε < 0.5."""
    ld_alpha: float | None = None
    """LD-DPO's α in [0, 1]: weight of the tokens past the shorter completion of the pair
    (null = off; the paper uses about 0.3-0.8 depending on the model)."""
    use_weighting: bool = False
    """WPO: weight each pair by the policy's aligned probability of both completions."""
    f_divergence: str = "reverse_kl"
    """The divergence regularising the policy (f-DPO): reverse_kl (DPO), forward_kl, js, alpha."""
    f_alpha: float = 0.5
    """α of f_divergence=alpha, in (0, 1), as the f-DPO paper writes it (TRL's coef is 1 − α)."""

    name: ClassVar[str] = "dpo"
    recommended_beta: ClassVar[tuple[float, float]] = (0.05, 0.5)

    def __post_init__(self) -> None:
        check_positive(self.name, "beta", self.beta)
        check_label_smoothing(self.label_smoothing)
        check_options(self.name, self.ld_alpha, self.f_divergence, self.f_alpha)

    @property
    def needs_shared_prefix(self) -> bool:
        return self.ld_alpha is not None

    @property
    def needs_wpo(self) -> bool:
        return self.use_weighting

    def __call__(self, policy: PairLogps, reference: PairLogps | None) -> LossOutput:
        reference = self._require_reference(reference)
        alpha = self.ld_alpha
        chosen_logratio = ld_logps(policy.chosen, alpha) - ld_logps(reference.chosen, alpha)
        rejected_logratio = ld_logps(policy.rejected, alpha) - ld_logps(reference.rejected, alpha)
        chosen_score = f_divergence_score(chosen_logratio, self.f_divergence, self.f_alpha)
        rejected_score = f_divergence_score(rejected_logratio, self.f_divergence, self.f_alpha)
        logits = self.beta * (chosen_score - rejected_score)
        losses = smoothed_sigmoid_loss(logits, self.label_smoothing)

        metrics = paired_metrics(policy, self.beta * chosen_logratio, self.beta * rejected_logratio)
        metrics["gradient_weight"] = (-logits).sigmoid().detach()
        if self.use_weighting:
            weights = wpo_weights(policy)
            losses = losses * weights
            metrics["wpo_weight"] = weights
        return LossOutput(loss=losses.mean(), metrics=metrics)
