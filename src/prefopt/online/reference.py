"""π_ref for online rounds: the run's reference, except for the round's own batches when their
log-probs were computed with the round (`reference.cache=true`).

The offline cache holds log-probs of the offline data only, looked up by example index; a
round's pairs are new sequences. So online batches carry `reference_logps` (the reference
model's log-probs of exactly those rows, computed once when the round was made) and carry no
`example_index`: a cached reference could never look one of them up by mistake. Validation
batches and the diagnostics' offline examples go to the run's reference as before.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from prefopt.losses.base import CompletionLogps
from prefopt.model.packing import PairPacking
from prefopt.reference import Reference

ROUND_LOGPS = "reference_logps"


class RoundReference:
    def __init__(self, base: Reference):
        self.base = base
        self.sampling_model = base.sampling_model

    @property
    def forward_calls(self) -> int:
        return self.base.forward_calls

    def logps(
        self, batch: dict[str, Tensor], split: str = "train", shared_prefix: bool = False
    ) -> CompletionLogps:
        if ROUND_LOGPS not in batch:
            return self.base.logps(batch, split, shared_prefix=shared_prefix)
        if shared_prefix:
            raise ValueError("a round's reference log-probs have no shared-length sums (LD-DPO)")
        summed = batch[ROUND_LOGPS].to(batch["input_ids"].device)
        return CompletionLogps(summed=summed, token_counts=batch["completion_mask"][:, 1:].sum(-1))

    def logps_table(self, loaders: dict[str, object], device: torch.device) -> dict[str, Tensor]:
        return self.base.logps_table(loaders, device)


def batch_logps_with(packing: PairPacking, chunk_size: int | None):
    """`(model, batch) -> summed log-probs of its rows`, scored as the online reference scores
    a training batch (the same packing), in eval mode without autograd."""

    def batch_logps(model: nn.Module, batch: dict[str, Tensor]) -> Tensor:
        was_training = model.training
        model.eval()
        try:
            with torch.inference_mode():
                return packing.logps(model, batch, chunk_size).summed.clone()
        finally:
            model.train(was_training)

    return batch_logps
