"""`AdapterDisabledReference`: with LoRA, π_ref is the policy itself with its adapter disabled
(`PeftModel.disable_adapter()`): the base weights, never changed, with no second copy in memory.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from prefopt.losses.base import CompletionLogps
from prefopt.model.logprobs import DEFAULT_CHUNK_SIZE
from prefopt.model.lora import is_peft_model
from prefopt.model.packing import PairPacking
from prefopt.reference.base import SamplingModel, score_table


class AdapterDisabled(nn.Module):
    """A PEFT model seen with its adapter off: the base model, sharing its weights.

    Evaluation samples π_ref from it (`generate`) and scores with it (`forward`)."""

    def __init__(self, peft_model: nn.Module):
        super().__init__()
        self.peft_model = peft_model

    def forward(self, *args, **kwargs):
        with self.peft_model.disable_adapter():
            return self.peft_model(*args, **kwargs)

    def generate(self, *args, **kwargs):
        with self.peft_model.disable_adapter():
            return self.peft_model.generate(*args, **kwargs)

    @property
    def config(self):
        return self.peft_model.config

    @property
    def generation_config(self):
        return self.peft_model.generation_config


class AdapterDisabledReference:
    """π_ref for training: the policy's own forward with its adapter disabled, in eval mode,
    under `no_grad`."""

    def __init__(
        self,
        policy: nn.Module,
        chunk_size: int | None = DEFAULT_CHUNK_SIZE,
        packing: PairPacking | None = None,
    ):
        if not is_peft_model(policy):
            raise TypeError("AdapterDisabledReference needs a PEFT model (model.lora.enabled)")
        self.policy = policy
        self.model = AdapterDisabled(policy)
        self.chunk_size = chunk_size
        self.packing = packing or PairPacking()
        self.forward_calls = 0
        self.sampling_model = SamplingModel(self.model)
        """Evaluation samples from the base weights the policy holds: no second copy."""

    @torch.no_grad()
    def logps(
        self, batch: dict[str, Tensor], split: str = "train", shared_prefix: bool = False
    ) -> CompletionLogps:
        device = batch["input_ids"].device
        if next(self.policy.parameters()).device != device:
            self.policy.to(device)
        self.forward_calls += 1
        was_training = self.policy.training
        self.policy.eval()
        try:
            with self.policy.disable_adapter():
                return self.packing.logps(
                    self.policy, batch, self.chunk_size, shared_prefix=shared_prefix
                )
        finally:
            self.policy.train(was_training)

    def logps_table(self, loaders: dict[str, object], device: torch.device) -> dict[str, Tensor]:
        return score_table(self, loaders, device)
