"""The frozen reference policy π_ref.

It is held outside the LightningModule's submodules on purpose: it is then never in the
optimizer, never in a checkpoint, never switched to train mode by Lightning, and never
touched by gradient clipping. It runs in eval mode under `no_grad`.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from prefopt.logprobs import completion_logps
from prefopt.losses.base import CompletionLogps


class FrozenReference:
    def __init__(self, model: nn.Module):
        model.eval()
        model.requires_grad_(False)
        self.model = model
        self.forward_calls = 0
        """How many batches the reference has scored (lets tests and benchmarks count them)."""

    @torch.no_grad()
    def logps(self, batch: dict[str, Tensor]) -> CompletionLogps:
        device = batch["input_ids"].device
        if next(self.model.parameters()).device != device:
            self.model.to(device)
        self.forward_calls += 1
        return completion_logps(self.model, batch)
