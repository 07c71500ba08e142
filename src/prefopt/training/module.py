"""PreferenceModule: the policy, its frozen reference, the loss, and the metrics they yield.

Paired batches (DPO, IPO, SimPO): one reference forward on the batch when the loss needs it,
then one forward of the policy on chosen and rejected concatenated (chosen rows first; packed
with shared prompts or without padding where `packing` says so and the model can take it), then
the loss on the completion log-probs. Unpaired batches (KTO): the first half of the
rows are the examples, the second half each prompt with another example's completion; the
policy scores the second half without gradient, since KTO only uses it for a detached KL
estimate. Sample batches (RLOO, `loss.on_policy`): one row per sample of the online loop, with
its advantage and its log-prob when drawn; the policy scores the rows and the loss weighs them.
Such a loss has no form on offline pairs: validation computes nothing for it (the generation
evaluation still runs). Metrics are means over every rank's examples (torchmetrics,
`metrics.py`): per step in training, once per validation.
"""

from __future__ import annotations

import lightning as L
import torch
from torch import Tensor, nn

from prefopt.config.schema import OptimConfig
from prefopt.losses.base import (
    LossOutput,
    PairLogps,
    PreferenceLoss,
    SampleLogps,
    UnpairedLogps,
)
from prefopt.model.logprobs import DEFAULT_CHUNK_SIZE, completion_logps
from prefopt.model.packing import PairPacking
from prefopt.reference import Reference
from prefopt.training.metrics import EpochMeans, StepMeans, mean_across_ranks
from prefopt.training.optimizers import build_optimizer


class PreferenceModule(L.LightningModule):
    def __init__(
        self,
        policy: nn.Module,
        loss: PreferenceLoss,
        optim: OptimConfig,
        reference: Reference | None = None,
        chunk_size: int | None = DEFAULT_CHUNK_SIZE,
        packing: PairPacking | None = None,
    ):
        super().__init__()
        if loss.needs_reference and reference is None:
            raise ValueError(f"loss '{loss.name}' needs a reference model, none was given")
        self.policy = policy.train()  # from_pretrained returns eval mode; Lightning keeps modes
        self.loss = loss
        self.optim = optim
        self.chunk_size = chunk_size
        # Pairs only: KTO's rows are examples and mismatched completions, scored as today.
        self.packing = packing if packing is not None and loss.paired else PairPacking()
        if reference is not None and not isinstance(reference, Reference):
            raise TypeError(
                f"reference: expected a prefopt.reference.Reference, got {type(reference).__name__}"
                " (wrap a model in OnlineReference, or use build_reference)"
            )
        self.reference = reference
        self.step_means = StepMeans()
        self.val_means = EpochMeans()

    def compute_loss(self, batch: dict[str, Tensor], split: str = "train") -> LossOutput:
        if self.loss.on_policy:
            rows = {k: batch[k] for k in ("input_ids", "attention_mask", "completion_mask")}
            current = completion_logps(self.policy, rows, self.chunk_size)
            return self.loss(SampleLogps(current, batch["old_logps"], batch["advantages"]))
        n_examples = examples_in(batch)
        # The reference runs first: its transient buffers are freed before the policy's
        # activations are allocated, so they never add up (the step's peak is lower), and on
        # CPU its forward is markedly faster than when it runs on top of them (benchmarks/).
        reference_logps = None
        if self.loss.needs_reference:
            # Asked for only when wanted: a Reference of one's own may predate the keyword.
            extras = {"shared_prefix": True} if self.loss.needs_shared_prefix else {}
            reference_logps = self.reference.logps(batch, split, **extras)
        # Batch statistics (KTO's z_ref, BCO's baseline) are averaged across ranks in training,
        # where every rank steps together; a validation batch keeps its own (ranks may hold
        # different numbers of batches).
        across = self._mean_across_devices if split == "train" else (lambda value: value)
        if self.loss.paired:
            policy_logps = self.packing.logps(
                self.policy,
                batch,
                self.chunk_size,
                shared_prefix=self.loss.needs_shared_prefix,
                wpo=self.loss.needs_wpo,
            )
            policy = PairLogps(*policy_logps.split(n_examples))
            reference = (
                None if reference_logps is None else PairLogps(*reference_logps.split(n_examples))
            )
            if self.loss.keeps_state:
                return self.loss(
                    policy, reference, training=split == "train", mean_across_devices=across
                )
            return self.loss(policy, reference)

        own, mismatched = split_rows(batch, n_examples)
        with torch.no_grad():
            policy_mismatched = completion_logps(self.policy, mismatched, self.chunk_size)
        desirable = batch["desirable"]
        policy = UnpairedLogps(
            completion_logps(self.policy, own, self.chunk_size), policy_mismatched, desirable
        )
        reference = UnpairedLogps(*reference_logps.split(n_examples), desirable)
        return self.loss(policy, reference, mean_across_devices=across)

    def _mean_across_devices(self, value: Tensor) -> Tensor:
        return mean_across_ranks(value)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        # A loss's running statistics (BCO's baseline) resume with the weights.
        if state := self.loss.state_dict():
            checkpoint["loss_state"] = state

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        if "loss_state" in checkpoint:
            self.loss.load_state_dict(checkpoint["loss_state"])

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        out = self.compute_loss(batch)
        self._log_metrics("train", out, batch)
        return out.loss

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        if self.loss.on_policy and SAMPLE_KEY not in batch:
            return  # offline pairs: an on-policy loss has nothing to compute on them
        out = self.compute_loss(batch, "val")
        self._log_metrics("val", out, batch)

    def on_validation_epoch_start(self) -> None:
        self.val_means.reset()

    def on_validation_epoch_end(self) -> None:
        if not self.val_means.update_called:
            return
        for name, (mean, examples) in self.val_means.compute().items():
            self._log("val", name, mean, int(examples), per_step=False)

    def _log_metrics(self, stage: str, out: LossOutput, batch: dict[str, Tensor]) -> None:
        metrics = {"loss": out.loss.detach(), **out.metrics}
        if stage != "train":
            self.val_means.update(metrics, examples_in(batch))  # logged at the epoch's end
            return
        self.step_means.update(metrics, examples_in(batch))
        for name, (mean, examples) in self.step_means.compute().items():
            self._log(stage, name, mean, int(examples), per_step=True)

    def _log(self, stage: str, name: str, value: Tensor, examples: int, per_step: bool) -> None:
        # Values are reduced across ranks already: Lightning's sync_dist would average again.
        self.log(
            f"{stage}/{name}",
            value,
            batch_size=examples,
            on_step=per_step,
            on_epoch=not per_step,
            prog_bar=name in ("loss", "rewards/accuracies"),
        )

    def configure_optimizers(self):
        params = [p for p in self.policy.parameters() if p.requires_grad]
        total = max(1, int(self.trainer.estimated_stepping_batches))
        optimizer, scheduler = build_optimizer(self.optim, params, total)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step"},
        }


SAMPLE_KEY = "advantages"
"""What marks a batch of samples (`loss.on_policy`): one row per sample."""


def examples_in(batch: dict[str, Tensor]) -> int:
    """Pairs (paired batches) or labelled examples (unpaired): half the rows either way;
    samples (on-policy batches): every row."""
    if SAMPLE_KEY in batch:
        return batch[SAMPLE_KEY].shape[0]
    return batch["input_ids"].shape[0] // 2


def split_rows(
    batch: dict[str, Tensor], n_first: int
) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    keys = ("input_ids", "attention_mask", "completion_mask")
    first = {k: batch[k][:n_first] for k in keys}
    rest = {k: batch[k][n_first:] for k in keys}
    return first, rest
