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

import re

from torch import nn

from prefopt.errors import PrefoptError


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
    linear = linear_layer_names(model)  # before PEFT, which may wrap some before it refuses
    try:
        return peft.get_peft_model(model, config)
    except ValueError as error:
        if "target_modules" not in str(error) and "Target modules" not in str(error):
            raise
        raise target_modules_error(model, target_modules, linear, str(error)) from None


def linear_layer_names(model: nn.Module) -> set[str]:
    """The names (last component) of `model`'s linear layers but its output layer."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    return {
        name.rsplit(".", 1)[-1]
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear) and module is not head
    }


def target_modules_error(
    model: nn.Module, target_modules, linear: set[str], refusal: str
) -> PrefoptError:
    """PEFT's refusal of `model.lora.target_modules` (e.g. `all-linear` on a hybrid model, whose
    Mamba `out_proj` PEFT will not adapt) as one line with a list it takes: the `linear`
    layers' names but those PEFT's message names."""
    refused = set(re.findall(r"'(\w+)'", refusal))
    suggestion = ",".join(sorted(linear - refused))
    given = target_modules if isinstance(target_modules, str) else ",".join(target_modules)
    return PrefoptError(
        f"model.lora.target_modules={given}: PEFT refuses it on {type(model).__name__} "
        f"({refusal.splitlines()[0]}); name the layers to adapt, e.g. "
        f"model.lora.target_modules=[{suggestion}]"
    )


def is_peft_model(model: nn.Module) -> bool:
    return hasattr(model, "disable_adapter") and hasattr(model, "get_base_model")
