"""PreferenceModule: the policy, its frozen reference, the loss, and the metrics they yield.

Paired batches (DPO, IPO, SimPO): one forward of the policy on chosen and rejected
concatenated (chosen rows first), one reference forward on the same batch when the loss needs
it, then the loss on the completion log-probs. Unpaired batches (KTO): the first half of the
rows are the examples, the second half each prompt with another example's completion; the
policy scores the second half without gradient, since KTO only uses it for a detached KL
estimate. Metrics are logged with the batch's pair count as weight, so epoch values
are true means over examples (and across devices, through `sync_dist`).
"""

from __future__ import annotations

import math

import lightning as L
import torch
from torch import Tensor, nn

from prefopt.config import OptimConfig
from prefopt.errors import PrefoptError
from prefopt.logprobs import DEFAULT_CHUNK_SIZE, completion_logps
from prefopt.losses.base import LossOutput, PairLogps, PreferenceLoss, UnpairedLogps
from prefopt.reference import CachedReference, FrozenReference


class PreferenceModule(L.LightningModule):
    def __init__(
        self,
        policy: nn.Module,
        loss: PreferenceLoss,
        optim: OptimConfig,
        reference: nn.Module | FrozenReference | CachedReference | None = None,
        chunk_size: int | None = DEFAULT_CHUNK_SIZE,
    ):
        super().__init__()
        if loss.needs_reference and reference is None:
            raise ValueError(f"loss '{loss.name}' needs a reference model, none was given")
        self.policy = policy.train()  # from_pretrained returns eval mode; Lightning keeps modes
        self.loss = loss
        self.optim = optim
        self.chunk_size = chunk_size
        if isinstance(reference, nn.Module):
            reference = FrozenReference(reference, chunk_size)
        self.reference = reference

    def compute_loss(self, batch: dict[str, Tensor], split: str = "train") -> LossOutput:
        n_examples = examples_in(batch)
        if self.loss.paired:
            policy = PairLogps(
                *completion_logps(self.policy, batch, self.chunk_size).split(n_examples)
            )
            reference = None
            if self.loss.needs_reference:
                reference = PairLogps(*self.reference.logps(batch, split).split(n_examples))
            return self.loss(policy, reference)

        own, mismatched = split_rows(batch, n_examples)
        with torch.no_grad():
            policy_mismatched = completion_logps(self.policy, mismatched, self.chunk_size)
        desirable = batch["desirable"]
        policy = UnpairedLogps(
            completion_logps(self.policy, own, self.chunk_size), policy_mismatched, desirable
        )
        reference = UnpairedLogps(*self.reference.logps(batch, split).split(n_examples), desirable)
        return self.loss(policy, reference, mean_across_devices=self._mean_across_devices)

    def _mean_across_devices(self, value: Tensor) -> Tensor:
        return self.all_gather(value).mean()

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        out = self.compute_loss(batch)
        self._log_metrics("train", out, batch)
        return out.loss

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        out = self.compute_loss(batch, "val")
        self._log_metrics("val", out, batch)

    def _log_metrics(self, stage: str, out: LossOutput, batch: dict[str, Tensor]) -> None:
        per_step = stage == "train"
        common = dict(
            batch_size=examples_in(batch),
            on_step=per_step,
            on_epoch=not per_step,
            sync_dist=not per_step,
        )
        self.log(f"{stage}/loss", out.loss.detach(), prog_bar=True, **common)
        for name, values in out.metrics.items():
            if values.isnan().all():
                continue  # e.g. KTO's undesirable reward in a batch of desirable examples only
            show = name == "rewards/accuracies"
            self.log(f"{stage}/{name}", values.float().nanmean(), prog_bar=show, **common)

    def configure_optimizers(self):
        params = [p for p in self.policy.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(
            params,
            lr=self.optim.lr,
            betas=tuple(self.optim.betas),
            weight_decay=self.optim.weight_decay,
        )
        total = max(1, int(self.trainer.estimated_stepping_batches))
        schedule = lr_schedule(self.optim.scheduler, total, int(self.optim.warmup_ratio * total))
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step"},
        }


def examples_in(batch: dict[str, Tensor]) -> int:
    """Pairs (paired batches) or labelled examples (unpaired): half the rows either way."""
    return batch["input_ids"].shape[0] // 2


def split_rows(
    batch: dict[str, Tensor], n_first: int
) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    keys = ("input_ids", "attention_mask", "completion_mask")
    first = {k: batch[k][:n_first] for k in keys}
    rest = {k: batch[k][n_first:] for k in keys}
    return first, rest


def lr_schedule(kind: str, total_steps: int, warmup_steps: int):
    """Multiplier of the peak lr at each step: linear warm-up, then constant/linear/cosine."""
    if kind not in ("constant", "linear", "cosine"):
        raise PrefoptError(f"optim.scheduler={kind!r}: choose constant, linear or cosine")

    def multiplier(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / (warmup_steps + 1)
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        if kind == "linear":
            return max(0.0, 1.0 - progress)
        if kind == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
        return 1.0

    return multiplier
