"""KTO (Ethayarajh et al., 2024): prospect-theoretic loss on unpaired, labelled completions.

With r = log π(y|x)/π_ref(y|x) (summed over completion tokens) and a reference point z_ref:

    desirable y:    λ_D · (1 − σ(β (r − z_ref)))
    undesirable y:  λ_U · (1 − σ(β (z_ref − r)))

and the loss is the mean over the batch's examples. z_ref estimates KL(π‖π_ref) from
MISMATCHED pairs (each prompt with another example's completion of the same batch):
z_ref = max(0, mean log π/π_ref), averaged across devices, DETACHED — it sets the reference
point but carries no gradient. The paper recommends λ_D·n_D / (λ_U·n_U) in [1, 4/3].

A batch of one example has no mismatched pair: its "mismatched" row is the example itself, and
its log-ratio is the implied reward r, not a KL sample (TRL refuses such batches). Such a rank
contributes no estimate: z_ref is the mean over the ranks whose batch holds two examples or
more, and 0 when none does (the KL's lower bound, where the clamp puts any estimate below it;
the loss is then KTO against the fixed point r = 0). `data.batch_size=1` is refused at start
(`config.checks`); this rule covers a last, partial batch of one.

Metrics: the per-class values (`rewards/*`, `logps/*`) are per-example vectors, NaN for the
examples of the other class, so they are averaged over the examples of their class (sums and
counts, across batches and ranks: `training.metrics`), never weighted by batch size; the margin
is the difference of the two class means, worked out there at log time.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from prefopt.losses.base import LossOutput, PreferenceLoss, UnpairedLogps, check_positive


@dataclass
class KTOLoss(PreferenceLoss):
    beta: float = 0.1
    """Scale of r − z_ref inside the sigmoid."""
    desirable_weight: float = 1.0
    """λ_D, weight of desirable examples."""
    undesirable_weight: float = 1.0
    """λ_U, weight of undesirable examples."""

    name: ClassVar[str] = "kto"
    paired: ClassVar[bool] = False
    recommended_beta: ClassVar[tuple[float, float]] = (0.01, 1.0)

    def __post_init__(self) -> None:
        check_positive(self.name, "beta", self.beta)
        check_positive(self.name, "desirable_weight", self.desirable_weight)
        check_positive(self.name, "undesirable_weight", self.undesirable_weight)

    def __call__(
        self,
        policy: UnpairedLogps,
        reference: UnpairedLogps | None,
        mean_across_devices: Callable[[Tensor], Tensor] = lambda t: t,
    ) -> LossOutput:
        reference = self._require_reference(reference)
        mismatched = (policy.mismatched.summed - reference.mismatched.summed).detach()
        # A batch of one pairs the example with itself: no KL sample (module docstring).
        has_estimate = mismatched.numel() > 1
        local = mismatched.mean() if has_estimate else mismatched.new_zeros(())
        kl, ranks = mean_across_devices(torch.stack([local, local.new_tensor(float(has_estimate))]))
        z_ref = (kl / ranks.clamp(min=1e-12)).clamp(min=0)  # no rank with an estimate: 0 / ε = 0

        logratio = policy.completions.summed - reference.completions.summed
        desirable = policy.desirable.bool()
        desirable_losses = self.desirable_weight * (1 - (self.beta * (logratio - z_ref)).sigmoid())
        undesirable_losses = self.undesirable_weight * (
            1 - (self.beta * (z_ref - logratio)).sigmoid()
        )
        losses = desirable_losses.where(desirable, undesirable_losses)

        rewards = (self.beta * logratio).detach()
        logps = policy.completions.summed.detach()
        # Per example, NaN for the other class; `rewards/margins` is derived when logged.
        metrics = {
            "rewards/chosen": of_class(rewards, desirable),
            "rewards/rejected": of_class(rewards, ~desirable),
            "logps/chosen": of_class(logps, desirable),
            "logps/rejected": of_class(logps, ~desirable),
            "kl": z_ref,
            "count/desirable": desirable.sum().float(),
            "count/undesirable": (~desirable).sum().float(),
        }
        return LossOutput(loss=losses.mean(), metrics=metrics)

    def check_data(self, stats: dict[str, int]) -> str | None:
        return self.weight_advice(stats["train_desirable"], stats["train_undesirable"])

    def weight_advice(self, n_desirable: int, n_undesirable: int) -> str | None:
        """A warning when λ_D·n_D / (λ_U·n_U) lies outside the paper's [1, 4/3], with a fix."""
        if n_desirable == 0 or n_undesirable == 0:
            return (
                f"KTO data has {n_desirable} desirable and {n_undesirable} undesirable examples: "
                "it needs both classes"
            )
        ratio = self.desirable_weight * n_desirable / (self.undesirable_weight * n_undesirable)
        if 1.0 <= ratio <= 4 / 3:
            return None
        low = self.undesirable_weight * n_undesirable / n_desirable
        return (
            f"KTO: λ_D·n_D / (λ_U·n_U) = {self.desirable_weight:g}·{n_desirable} / "
            f"({self.undesirable_weight:g}·{n_undesirable}) = {ratio:.3f}, outside the recommended "
            f"[1, 4/3]; set loss.desirable_weight between {low:.3g} and {low * 4 / 3:.3g} "
            f"(with loss.undesirable_weight={self.undesirable_weight:g})"
        )


def of_class(values: Tensor, members: Tensor) -> Tensor:
    """`values` of the class's examples, NaN for the others: the metrics count only the former
    (a single-class batch contributes nothing to the other class's mean)."""
    return values.where(members, values.new_tensor(float("nan")))
