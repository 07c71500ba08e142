"""Load the policy, its reference and the tokenizer from Hugging Face checkpoints."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerBase

from prefopt.config import ModelConfig

log = logging.getLogger("prefopt.models")

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def check_model_config(cfg: ModelConfig, path: str) -> None:
    """Fail before loading anything when the config cannot work."""
    if cfg.dtype not in DTYPES:
        raise ValueError(f"model.dtype={cfg.dtype!r}: choose one of {', '.join(DTYPES)}")
    for key, value in (("model.path", path), ("model.reference_path", cfg.reference_path)):
        if value and _looks_local(value) and not Path(value).exists():
            raise FileNotFoundError(
                f"{key}={value}: no such directory; give a saved checkpoint or a hub id"
            )


def _looks_local(path: str) -> bool:
    return path.startswith(("/", ".", "~")) or Path(path).exists()


def load_tokenizer(path: str, cfg: ModelConfig) -> PreTrainedTokenizerBase:
    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=cfg.trust_remote_code)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
        log.info("tokenizer has no pad token: using eos (%r) for padding", tokenizer.eos_token)
    return tokenizer


def load_causal_lm(path: str, cfg: ModelConfig) -> torch.nn.Module:
    return AutoModelForCausalLM.from_pretrained(
        path, dtype=DTYPES[cfg.dtype], trust_remote_code=cfg.trust_remote_code
    )


def prepare_policy(model: torch.nn.Module, cfg: ModelConfig) -> torch.nn.Module:
    """The loaded model as training wants it: gradient checkpointing, LoRA adapters, compiled
    decoder layers, each when `cfg` asks for it."""
    if cfg.gradient_checkpointing:
        # Non-reentrant: works with DDP, FSDP and frozen (LoRA) base weights alike.
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
    if cfg.lora.enabled:
        from prefopt.lora import apply_lora

        model = apply_lora(model, cfg.lora)
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        total = sum(p.numel() for p in model.parameters())
        log.info(
            "LoRA: %d of %d parameters train (%.2f%%)", trainable, total, 100 * trainable / total
        )
    if cfg.compile:
        from prefopt.distributed import decoder_layer_classes

        # Layer by layer: each block compiles once and is reused; the module keeps its
        # attributes and state-dict keys (no `_orig_mod.` prefix), so export is unchanged.
        classes = tuple(decoder_layer_classes(model))
        for module in model.modules():
            if isinstance(module, classes):
                module.compile(dynamic=True)
    return model
