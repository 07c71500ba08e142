"""The interface every preference loss implements.

A loss sees log-probabilities and token counts, never models or tokenizers: the module computes
`CompletionLogps` for the policy (and the reference, when the loss declares it needs one) and
hands them over. That keeps each loss a few lines of maths, testable with hand-made tensors.

A loss is a dataclass: its fields are its hyperparameters, which Hydra fills from
`conf/loss/<name>.yaml` (the schema is derived from the dataclass, see `prefopt.config`).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import ClassVar

import torch.nn.functional as F
from torch import Tensor

from prefopt.errors import PrefoptError


@dataclass
class CompletionLogps:
    """Log-probabilities of completion tokens, one entry per sequence."""

    summed: Tensor
    """Sum of log π(token) over the completion tokens, shape [N]."""
    token_counts: Tensor
    """Number of completion tokens per sequence, shape [N]."""
    shared_summed: Tensor | None = None
    """Sum over each sequence's first min(len_chosen, len_rejected) tokens, its pair's shared
    length (LD-DPO's `ld_alpha`); computed only when a loss asks for it, else None."""
    wpo_summed: Tensor | None = None
    """Σ_t [log π(y_t) − log Σ_v π(v)²] over the completion tokens, detached (WPO's weights);
    computed only when a loss asks for it, else None."""

    @property
    def mean(self) -> Tensor:
        """Average per-token log-probability (the length-normalised form)."""
        return self.summed / self.token_counts.clamp(min=1)

    def split(self, n_first: int) -> tuple[CompletionLogps, CompletionLogps]:
        """Split a concatenated batch (chosen rows first) into two halves."""
        first = {name: None if t is None else t[:n_first] for name, t in self._tensors().items()}
        rest = {name: None if t is None else t[n_first:] for name, t in self._tensors().items()}
        return CompletionLogps(**first), CompletionLogps(**rest)

    def clone(self) -> CompletionLogps:
        """A copy whose tensors own their memory (out of `inference_mode`, say)."""
        return CompletionLogps(
            **{name: None if t is None else t.clone() for name, t in self._tensors().items()}
        )

    def _tensors(self) -> dict[str, Tensor | None]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass
class PairLogps:
    chosen: CompletionLogps
    rejected: CompletionLogps


@dataclass
class UnpairedLogps:
    """Log-probs for unpaired (prompt, completion, label) batches, as KTO uses them."""

    completions: CompletionLogps
    """Each example's own completion."""
    mismatched: CompletionLogps
    """Each prompt with another example's completion from the same batch (for the KL estimate)."""
    desirable: Tensor
    """Bool label per example, shape [N]."""


@dataclass
class SampleLogps:
    """An on-policy loss's batch (RLOO): samples of the policy with what was known when they
    were drawn."""

    current: CompletionLogps
    """The policy's log-probs of each sample now (with gradient)."""
    old: Tensor
    """Summed log π_old(y|x), the policy's when the sample was drawn, shape [N]."""
    advantages: Tensor
    """Each sample's advantage, shape [N]."""


@dataclass
class LossOutput:
    loss: Tensor
    """Scalar to minimise (mean over the batch)."""
    metrics: dict[str, Tensor]
    """Detached diagnostics: per-example values [N] or batch scalars; the module logs means."""


@dataclass
class PreferenceLoss:
    """Base class: subclasses add hyperparameter fields and implement `__call__`."""

    name: ClassVar[str]
    needs_reference: ClassVar[bool] = True
    """False: the module never loads or runs a reference model."""
    paired: ClassVar[bool] = True
    """True: trains on (prompt, chosen, rejected); False: on (prompt, completion, label)."""
    recommended_beta: ClassVar[tuple[float, float] | None] = None
    """The β range the loss's authors recommend (used for an info line at start)."""
    on_policy: ClassVar[bool] = False
    """True: trains on the online loop's own samples with their advantages (`SampleLogps`,
    RLOO), never on offline pairs: `loop=online` only."""
    keeps_state: ClassVar[bool] = False
    """True: the loss keeps running statistics across steps (BCO's reward baseline). The module
    then calls it with `training` (update them or not) and `mean_across_devices`, and saves
    `state_dict()` in checkpoints so that a resumed run continues with them."""

    @property
    def needs_shared_prefix(self) -> bool:
        """True: the policy's and the reference's `CompletionLogps.shared_summed` are computed."""
        return False

    @property
    def needs_wpo(self) -> bool:
        """True: the policy's `CompletionLogps.wpo_summed` is computed."""
        return False

    def __call__(self, policy, reference, **kwargs) -> LossOutput:
        """Paired losses take `PairLogps`; unpaired ones `UnpairedLogps` (see `paired`)."""
        raise NotImplementedError

    def state_dict(self) -> dict[str, Tensor]:
        """The running statistics to checkpoint; none unless `keeps_state`."""
        return {}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        """Restore what `state_dict` returned (from a checkpoint)."""

    def check_data(self, stats: dict[str, int]) -> str | None:
        """A warning about the training data for this loss (the data module's `stats`), or None."""
        return None

    def describe(self) -> str:
        """Short label with the key hyperparameters, used in MLflow run names."""
        parts = [self.name]
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "beta":
                parts.append(f"β={value:g}")
            elif value != f.default:
                parts.append(
                    f"{f.name}={value:g}" if isinstance(value, float) else f"{f.name}={value}"
                )
        return " ".join(parts)

    def _require_reference(self, reference):
        if reference is None:
            raise ValueError(f"loss '{self.name}' needs reference log-probs, got none")
        return reference


def log_ratios(policy: PairLogps, reference: PairLogps) -> tuple[Tensor, Tensor]:
    """log π(y|x)/π_ref(y|x) of the chosen and of the rejected completions, summed over tokens."""
    return (
        policy.chosen.summed - reference.chosen.summed,
        policy.rejected.summed - reference.rejected.summed,
    )


def paired_metrics(
    policy: PairLogps, chosen_rewards: Tensor, rejected_rewards: Tensor
) -> dict[str, Tensor]:
    """The diagnostics every paired loss reports, from its own notion of reward."""
    return {
        "rewards/chosen": chosen_rewards.detach(),
        "rewards/rejected": rejected_rewards.detach(),
        "rewards/margins": (chosen_rewards - rejected_rewards).detach(),
        "rewards/accuracies": (chosen_rewards > rejected_rewards).float().detach(),
        "logps/chosen": policy.chosen.summed.detach(),
        "logps/rejected": policy.rejected.summed.detach(),
    }


def smoothed_sigmoid_loss(logits: Tensor, label_smoothing: float) -> Tensor:
    """−(1 − ε)·log σ(z) − ε·log σ(−z): the Bradley-Terry loss with labels flipped w.p. ε."""
    return -(1 - label_smoothing) * F.logsigmoid(logits) - label_smoothing * F.logsigmoid(-logits)


def check_label_smoothing(value: float) -> None:
    if not 0.0 <= value < 0.5:
        raise PrefoptError(
            f"loss.label_smoothing={value}: it must be in [0, 0.5) "
            "(0.5 would make the labels pure noise)"
        )


def check_positive(loss_name: str, key: str, value: float) -> None:
    if not value > 0:
        raise PrefoptError(f"loss.{key}={value} for loss '{loss_name}': it must be > 0")


class LogRatioLoss(PreferenceLoss):
    """A paired loss that is a function of the two summed log-ratios alone, with β·log π/π_ref
    as its rewards (as DPO's). A subclass declares `beta` (its dataclass field, with its own
    docstring) and writes `pair_losses`; more checks go in its `__post_init__` after super's."""

    beta: float

    def __post_init__(self) -> None:
        check_positive(self.name, "beta", self.beta)

    def pair_losses(self, chosen: Tensor, rejected: Tensor) -> Tensor:
        """The per-pair losses from log π/π_ref of the chosen and of the rejected completions."""
        raise NotImplementedError

    def __call__(self, policy: PairLogps, reference: PairLogps | None) -> LossOutput:
        chosen, rejected = log_ratios(policy, self._require_reference(reference))
        losses = self.pair_losses(chosen, rejected)
        metrics = paired_metrics(policy, self.beta * chosen, self.beta * rejected)
        return LossOutput(loss=losses.mean(), metrics=metrics)


__all__ = [
    "CompletionLogps",
    "LogRatioLoss",
    "LossOutput",
    "PairLogps",
    "PreferenceLoss",
    "SampleLogps",
    "UnpairedLogps",
    "check_label_smoothing",
    "check_positive",
    "log_ratios",
    "paired_metrics",
    "smoothed_sigmoid_loss",
]
