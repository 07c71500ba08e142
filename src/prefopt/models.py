"""Load the policy, its reference and the tokenizer from Hugging Face checkpoints."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerBase

from prefopt.config import ModelConfig
from prefopt.errors import PrefoptError

log = logging.getLogger("prefopt.models")

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def check_model_config(cfg: ModelConfig, path: str) -> None:
    """Fail before loading anything when the config cannot work."""
    if cfg.dtype not in DTYPES:
        raise PrefoptError(f"model.dtype={cfg.dtype!r}: choose one of {', '.join(DTYPES)}")
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
