"""Metrics as means over examples across ranks, with torchmetrics.

A loss returns named per-example (or per-batch) values. A batch contributes each name's mean
with its number of examples: for a per-example vector, the entries that are not NaN (KTO's
per-class rewards are NaN for the other class's examples, so a batch of one desirable example
counts once, and one of seven counts seven times: their mean is the mean over the eight
examples); for a batch value, the batch's examples, or none if it is NaN. Means weigh every
rank's examples, so uneven shards count for what they hold, and each reduction is one sync of
one stacked state. A loss that leaves `…rewards/margins` out while giving `…rewards/chosen` and
`…rewards/rejected` (KTO: its classes are different examples) gets it derived from those two
means at log time.

- `StepMeans`: the training step's means over every rank (gathered, each rank's mean weighted
  by its share of the examples; on one process that share is exactly 1, so a step logs its own
  value bit for bit).
- `EpochMeans`: validation's means, summed over the epoch's batches and over the ranks.
- `mean_across_ranks`: a per-rank value's plain mean over ranks, element by element (KTO's
  z_ref).
"""

from __future__ import annotations

import warnings

import torch
from torch import Tensor
from torchmetrics import Metric

# PreferenceModule logs values these metrics have reduced across ranks already; Lightning's
# `sync_dist` would average them a second time.
warnings.filterwarnings("ignore", message=r"It is recommended to use `self\.log\('(val|train)/")


def batch_means(
    metrics: dict[str, Tensor], examples: int, keep_nan: tuple[str, ...] = ()
) -> tuple[list[str], Tensor]:
    """The names and a `[names, 2]` tensor of (batch mean, examples); a per-example vector (one
    entry per example) counts its entries that are not NaN; a mean that is NaN counts no
    examples and is stored as 0, unless its name is in `keep_nan` (a NaN loss stays NaN)."""
    rows = []
    for name, values in metrics.items():
        values = values.detach().float()
        value = values.nanmean()
        if name in keep_nan or not value.isnan():
            per_example = values.numel() == examples
            count = (~values.isnan()).sum().float() if per_example else float(examples)
        else:
            value, count = value.nan_to_num(), 0.0
        rows.append(torch.stack([value, torch.as_tensor(count, device=value.device)]))
    return list(metrics), torch.stack(rows)


def with_margins(means: dict[str, tuple[Tensor, Tensor]]) -> dict[str, tuple[Tensor, Tensor]]:
    """`<prefix>rewards/margins` = chosen mean − rejected mean, where a loss left it out (KTO's
    classes are different examples: the margin is a difference of means, not a mean)."""
    for name in list(means):
        if not name.endswith("rewards/chosen"):
            continue
        prefix = name.removesuffix("chosen")
        if prefix + "rejected" in means and prefix + "margins" not in means:
            (chosen, n_chosen), (rejected, n_rejected) = means[name], means[prefix + "rejected"]
            means[prefix + "margins"] = (chosen - rejected, n_chosen + n_rejected)
    return means


class StepMeans(Metric):
    """One training step's metric means over every rank's examples: update once, then compute.

    `compute` returns {name: (mean, examples)} for the names with any example. A NaN loss is
    kept (it is what happened); other names that are NaN everywhere are left out.
    """

    full_state_update = False

    def __init__(self) -> None:
        super().__init__()
        self.names: list[str] = []
        # Each rank's (mean, examples) per name, gathered as they are: one all-gather per step.
        self.add_state("per_rank", default=torch.zeros(0, 2), dist_reduce_fx="cat")

    def update(self, metrics: dict[str, Tensor], examples: int) -> None:
        self.names, self.per_rank = batch_means(metrics, examples, keep_nan=("loss",))

    def compute(self) -> dict[str, tuple[Tensor, Tensor]]:
        per_rank = self.per_rank.reshape(-1, len(self.names), 2)
        means, counts = per_rank[..., 0], per_rank[..., 1]
        total = counts.sum(0)
        # Σ_rank mean × (examples / total): weights of exactly 1 on one process.
        combined = (means * (counts / total.clamp(min=1))).sum(0)
        return with_margins(
            {n: (combined[i], total[i]) for i, n in enumerate(self.names) if total[i] > 0}
        )


class EpochMeans(Metric):
    """Validation's metric means over every batch and every rank's examples.

    Each batch adds `mean × examples` and `examples` per name; `compute` sums those over the
    ranks (one sync of a `[names, 2]` tensor) and returns {name: (mean, examples)} for the names
    with any example. Every rank must update with the same names (a loss always returns the same
    set).
    """

    full_state_update = False

    def __init__(self) -> None:
        super().__init__()
        self.names: list[str] = []
        self.add_state("sums", default=torch.zeros(0, 2), dist_reduce_fx="sum")

    def update(self, metrics: dict[str, Tensor], examples: int) -> None:
        names, means = batch_means(metrics, examples)
        weighted = torch.stack([means[:, 0] * means[:, 1], means[:, 1]], dim=1)
        if self.sums.numel() == 0:
            self.names, self.sums = names, weighted
        else:
            self.sums = self.sums + weighted

    def compute(self) -> dict[str, tuple[Tensor, Tensor]]:
        return with_margins(
            {
                name: (total / examples, examples)
                for name, (total, examples) in zip(self.names, self.sums)
                if examples > 0
            }
        )


class _RankMean(Metric):
    """Each rank's value (any shape, the same on every rank) summed over the ranks, and the ranks."""

    full_state_update = False

    def __init__(self) -> None:
        super().__init__()
        self.add_state("total", default=torch.zeros(0), dist_reduce_fx="sum")
        self.add_state("ranks", default=torch.zeros(()), dist_reduce_fx="sum")

    def update(self, value: Tensor) -> None:
        self.total, self.ranks = value, self.ranks + 1

    def compute(self) -> Tensor:
        return self.total / self.ranks


def mean_across_ranks(value: Tensor) -> Tensor:
    """The mean over ranks of a per-rank value, element by element (every rank gets the same);
    itself on one process."""
    mean = _RankMean().to(value.device)
    mean.update(value.detach().float())
    return mean.compute()
