"""LoRA through PEFT: train small adapters, keep the base weights, and use them as π_ref.

With `model.lora.enabled=true` the policy is the base checkpoint with LoRA adapters
(`peft.get_peft_model`); only the adapters train. The reference is that same model with its
adapter disabled (`prefopt.reference.adapter`): the base weights, never changed, with no
second copy in memory. With `reference.cache=true` (the default) the cached reference
log-probs are computed the same way before training.

Export (`prefopt.model.export`) writes the adapter with `save_pretrained` (adapter_config.json +
adapter_model.safetensors, loadable with `peft.AutoPeftModelForCausalLM`), and with
`model.lora.merge_on_export=true` also the base model with the adapter merged in.
"""

from __future__ import annotations

from torch import nn


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
