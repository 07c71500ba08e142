"""Export the aligned policy with `save_pretrained`, from global rank 0.

A full model is written as a Hugging Face checkpoint, a LoRA policy as its adapter (plus,
with `model.lora.merge_on_export`, the base model with the adapter merged in). Under FSDP the
whole weights are first gathered onto rank 0, a collective every rank takes part in. Each
folder is written under a temporary name and renamed into place: a killed export leaves no
half-written model behind, and a full disk ends the run with one line.
"""

from __future__ import annotations

import logging
from pathlib import Path

from lightning.pytorch.strategies import FSDPStrategy

from prefopt.files import replaced_folder
from prefopt.model.lora import is_peft_model

log = logging.getLogger("prefopt.export")

_FULL = "set output_dir to a larger disk"


def _model_bytes(model, state_dict=None) -> int:
    """About what `save_pretrained` writes: the bytes of the weights it saves (the gathered
    state dict under FSDP, the trainable weights of a LoRA adapter)."""
    params = list(state_dict.values()) if state_dict is not None else list(model.parameters())
    if state_dict is None and is_peft_model(model):
        params = [p for p in params if p.requires_grad]
    return sum(p.numel() * p.element_size() for p in params)


def export_policy(trainer, module, tokenizer, output_dir: Path, cfg_model, load_base):
    """Write the policy and tokenizer to `output_dir/model` on rank 0 and return
    {tag: directory} for what was written ({} on the other ranks). `load_base()` loads the
    base checkpoint (on the CPU) for a merged LoRA export."""
    state_dict = None
    if isinstance(trainer.strategy, FSDPStrategy):
        full = trainer.strategy.lightning_module_state_dict()  # collective: every rank calls
        state_dict = {
            k.removeprefix("policy."): v for k, v in full.items() if k.startswith("policy.")
        }
    if not trainer.is_global_zero:
        return {}
    export_dir = output_dir / "model"
    with replaced_folder(export_dir, _model_bytes(module.policy, state_dict), _FULL) as staging:
        module.policy.save_pretrained(staging, state_dict=state_dict)
        tokenizer.save_pretrained(staging)
    written = {"prefopt.export_dir": export_dir}
    if is_peft_model(module.policy):
        log.info("LoRA adapter saved to %s", export_dir)
        if cfg_model.lora.merge_on_export:
            written["prefopt.merged_dir"] = merge_adapter(
                export_dir, output_dir / "merged", load_base, tokenizer
            )
    else:
        log.info("aligned policy saved to %s", export_dir)
    return written


def merge_adapter(adapter_dir: Path, merged_dir: Path, load_base, tokenizer) -> Path:
    """Base checkpoint + the saved adapter, merged into plain weights (loaded anew on the CPU,
    so this works whatever the strategy left the training copy as)."""
    from peft import PeftModel

    merged = PeftModel.from_pretrained(load_base(), adapter_dir).merge_and_unload()
    with replaced_folder(merged_dir, _model_bytes(merged), _FULL) as staging:
        merged.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
    log.info("policy with the LoRA adapter merged in saved to %s", merged_dir)
    return merged_dir
