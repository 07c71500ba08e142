"""`OnlineReference`: a frozen model, run on every batch that needs reference log-probs.

It is held outside the LightningModule's submodules on purpose: it is then never in the
optimizer, never switched to train mode by Lightning, and never touched by gradient clipping.
It runs in eval mode under `inference_mode`. Only a moving reference (`sync.py`) changes its
weights, and that callback's state puts them in the checkpoint.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from prefopt.losses.base import CompletionLogps
from prefopt.model.logprobs import DEFAULT_CHUNK_SIZE
from prefopt.model.packing import PairPacking
from prefopt.reference.base import SamplingModel, score_table


class OnlineReference:
    def __init__(
        self,
        model: nn.Module,
        chunk_size: int | None = DEFAULT_CHUNK_SIZE,
        packing: PairPacking | None = None,
        sampling_model: SamplingModel | None = None,
    ):
        model.eval()
        model.requires_grad_(False)
        self.model = model
        self.chunk_size = chunk_size
        self.packing = packing or PairPacking()
        """Paired batches only (off for KTO): shared prompts / padding-free rows."""
        self.forward_calls = 0
        """How many batches the reference has scored (lets tests and benchmarks count them)."""
        self.sampling_model = sampling_model or SamplingModel(model)
        """Evaluation samples from this very model (no second copy), unless another is given:
        a moving reference (`sync.py`) leaves evaluation a frozen initial one."""

    def logps(
        self, batch: dict[str, Tensor], split: str = "train", shared_prefix: bool = False
    ) -> CompletionLogps:
        device = batch["input_ids"].device
        if next(self.model.parameters()).device != device:
            self.model.to(device)
        self.forward_calls += 1
        # inference_mode skips autograd's bookkeeping (version counters, views) that no_grad
        # keeps; the two small results are cloned out so the loss may use them under autograd.
        with torch.inference_mode():
            out = self.packing.logps(
                self.model, batch, self.chunk_size, shared_prefix=shared_prefix
            )
        return out.clone()

    def logps_table(self, loaders: dict[str, object], device: torch.device) -> dict[str, Tensor]:
        return score_table(self, loaders, device)
