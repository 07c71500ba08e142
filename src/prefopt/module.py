"""PreferenceModule: the policy, its frozen reference, the loss, and the metrics they yield.

One step = one forward of the policy on chosen and rejected concatenated (chosen rows first),
one reference forward on the same batch when the loss needs it, then the loss on the summed
completion log-probs. Metrics are logged with the batch's pair count as weight, so epoch values
are true means over examples (and across devices, through `sync_dist`).
"""

from __future__ import annotations

import math

import lightning as L
import torch
from torch import Tensor, nn

from prefopt.config import OptimConfig
from prefopt.logprobs import completion_logps
from prefopt.losses.base import LossOutput, PairLogps, PreferenceLoss
from prefopt.reference import FrozenReference


class PreferenceModule(L.LightningModule):
    def __init__(
        self,
        policy: nn.Module,
        loss: PreferenceLoss,
        optim: OptimConfig,
        reference: nn.Module | None = None,
    ):
        super().__init__()
        if loss.needs_reference and reference is None:
            raise ValueError(f"loss '{loss.name}' needs a reference model, none was given")
        self.policy = policy
        self.loss = loss
        self.optim = optim
        self.reference = FrozenReference(reference) if reference is not None else None

    def compute_loss(self, batch: dict[str, Tensor]) -> LossOutput:
        n_pairs = batch["input_ids"].shape[0] // 2
        policy = PairLogps(*completion_logps(self.policy, batch).split(n_pairs))
        reference = None
        if self.loss.needs_reference:
            reference = PairLogps(*self.reference.logps(batch).split(n_pairs))
        return self.loss(policy, reference)

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        out = self.compute_loss(batch)
        self._log_metrics("train", out, batch)
        return out.loss

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        out = self.compute_loss(batch)
        self._log_metrics("val", out, batch)

    def _log_metrics(self, stage: str, out: LossOutput, batch: dict[str, Tensor]) -> None:
        n_pairs = batch["input_ids"].shape[0] // 2
        per_step = stage == "train"
        common = dict(batch_size=n_pairs, on_step=per_step, on_epoch=not per_step, sync_dist=not per_step)
        self.log(f"{stage}/loss", out.loss.detach(), prog_bar=True, **common)
        for name, values in out.metrics.items():
            show = name == "rewards/accuracies"
            self.log(f"{stage}/{name}", values.float().mean(), prog_bar=show, **common)

    def configure_optimizers(self):
        params = [p for p in self.policy.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(
            params, lr=self.optim.lr, betas=tuple(self.optim.betas), weight_decay=self.optim.weight_decay
        )
        total = max(1, int(self.trainer.estimated_stepping_batches))
        schedule = lr_schedule(self.optim.scheduler, total, int(self.optim.warmup_ratio * total))
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def lr_schedule(kind: str, total_steps: int, warmup_steps: int):
    """Multiplier of the peak lr at each step: linear warm-up, then constant/linear/cosine."""
    if kind not in ("constant", "linear", "cosine"):
        raise ValueError(f"optim.scheduler={kind!r}: choose constant, linear or cosine")

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
