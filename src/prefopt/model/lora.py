"""LoRA through PEFT: train small adapters, keep the base weights, and use them as π_ref.

With `model.lora.enabled=true` the policy is the base checkpoint with LoRA adapters
(`peft.get_peft_model`); only the adapters train. The reference is that same model with its
adapter disabled (`PeftModel.disable_adapter()`): the base weights, never changed, with no
second copy in memory. With `reference.cache=true` (the default) the cached reference
log-probs are computed the same way before training.

Export (`prefopt.model.export`) writes the adapter with `save_pretrained` (adapter_config.json +
adapter_model.safetensors, loadable with `peft.AutoPeftModelForCausalLM`), and with
`model.lora.merge_on_export=true` also the base model with the adapter merged in.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from prefopt.losses.base import CompletionLogps
from prefopt.model.logprobs import DEFAULT_CHUNK_SIZE
from prefopt.model.packing import PairPacking


def require_peft():
    """The `peft` module, or an ImportError that says how to install it."""
    try:
        import peft
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ImportError(
            "model.lora.enabled=true needs PEFT: pip install 'prefopt[lora]'"
        ) from error
    return peft


def apply_lora(model: nn.Module, cfg) -> nn.Module:
    """The model wrapped with fresh LoRA adapters as `cfg` (`model.lora`) describes."""
    peft = require_peft()
    target_modules = cfg.target_modules
    if not isinstance(target_modules, str):
        target_modules = list(target_modules)
    config = peft.LoraConfig(
        r=cfg.r,
        lora_alpha=cfg.alpha,
        lora_dropout=cfg.dropout,
        target_modules=target_modules,
        task_type="CAUSAL_LM",
    )
    return peft.get_peft_model(model, config)


def is_peft_model(model: nn.Module) -> bool:
    return hasattr(model, "disable_adapter") and hasattr(model, "get_base_model")


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
    under `no_grad` (a drop-in for `FrozenReference`)."""

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

    @torch.no_grad()
    def logps(self, batch: dict[str, Tensor], split: str = "train") -> CompletionLogps:
        device = batch["input_ids"].device
        if next(self.policy.parameters()).device != device:
            self.policy.to(device)
        self.forward_calls += 1
        was_training = self.policy.training
        self.policy.eval()
        try:
            with self.policy.disable_adapter():
                return self.packing.logps(self.policy, batch, self.chunk_size)
        finally:
            self.policy.train(was_training)
