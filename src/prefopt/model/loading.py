"""Load the policy, its reference and the tokenizer from Hugging Face checkpoints."""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    PretrainedConfig,
    PreTrainedTokenizerBase,
)

from prefopt.config.schema import ModelConfig
from prefopt.errors import PrefoptError
from prefopt.model.attention import implementation, resolve_attention
from prefopt.model.packing import prefix_sharing_mode

log = logging.getLogger("prefopt.models")

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(frozen=True)
class Checkpoints:
    """Where a run's policy and reference come from, and the one way they load.

    `policy_path`: `model.path`, or the toy world's SFT model for `toy`. `reference_path`:
    `model.reference_path`, else the policy's own checkpoint (π_ref = the initial policy)."""

    model_cfg: ModelConfig
    policy_path: str
    reference_path: str

    @classmethod
    def of(cls, model_cfg: ModelConfig, toy_model_dir: Path | None = None) -> Checkpoints:
        policy = str(toy_model_dir) if model_cfg.path == "toy" else model_cfg.path
        return cls(model_cfg, policy, model_cfg.reference_path or policy)

    def load(self, path: str | None = None) -> torch.nn.Module:
        """The checkpoint at `path` (default: the policy's), with the section's dtype, and
        Liger's layer kernels with `model.liger_kernel` (policy and reference alike)."""
        model = load_causal_lm(path or self.policy_path, self.model_cfg)
        if self.model_cfg.liger_kernel:
            from prefopt.model.liger import apply_liger_kernels

            apply_liger_kernels(model)
        return model

    def load_tokenizer(self) -> PreTrainedTokenizerBase:
        return load_tokenizer(self.policy_path, self.model_cfg)


def check_model_config(cfg: ModelConfig, path: str) -> None:
    """Fail before loading anything when the config cannot work."""
    prefix_sharing_mode(cfg.prefix_sharing)
    resolve_attention(cfg.attention)
    for key, value in (("model.path", path), ("model.reference_path", cfg.reference_path)):
        if value and _looks_local(value) and not Path(value).exists():
            raise PrefoptError(
                f"{key}={value}: no such directory; give a checkpoint saved with "
                "save_pretrained, or a Hugging Face hub id"
            )
        if value and Path(value).is_dir() and not (Path(value) / "config.json").is_file():
            raise PrefoptError(
                f"{key}={value}: the folder holds no config.json, so it is not a Hugging Face "
                "checkpoint; give the folder that save_pretrained wrote"
            )


def _looks_local(path: str) -> bool:
    return path.startswith(("/", ".", "~")) or Path(path).exists()


def load_tokenizer(path: str, cfg: ModelConfig) -> PreTrainedTokenizerBase:
    with _load_errors(path, "tokenizer"):
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=cfg.trust_remote_code)
    if tokenizer.pad_token_id is None:
        if tokenizer.eos_token is None:
            raise PrefoptError(
                f"{path}: the tokenizer has neither a pad nor an eos token; add a pad token "
                "(tokenizer.add_special_tokens({'pad_token': ...}) and save it)"
            )
        tokenizer.pad_token = tokenizer.eos_token
        log.warning(
            "the tokenizer has no pad token: padding with its eos token %r (padding is masked "
            "out, so this is safe)",
            tokenizer.eos_token,
        )
    return tokenizer


def load_causal_lm(path: str, cfg: ModelConfig) -> torch.nn.Module:
    """Weights load from safetensors, or from .bin files with weights_only=True (transformers
    does that itself); code shipped with a checkpoint runs only with model.trust_remote_code."""
    with _load_errors(path, "model"):
        attention = resolve_attention(cfg.attention)
        try:
            model = AutoModelForCausalLM.from_pretrained(
                path,
                dtype=DTYPES[cfg.dtype],
                trust_remote_code=cfg.trust_remote_code,
                # sdpa: transformers' default (sdpa where the model has it, else eager).
                attn_implementation=None if attention == "sdpa" else implementation(attention),
            )
        except ValueError as error:
            if attention != "flex":
                raise
            # A model outside transformers' attention registry: as it loads by default.
            log.info("model.attention: %s cannot use %s (%s); using sdpa", path, attention, error)
            model = AutoModelForCausalLM.from_pretrained(
                path, dtype=DTYPES[cfg.dtype], trust_remote_code=cfg.trust_remote_code
            )
    if cfg.disable_dropout:
        disable_dropout(model)
    return model


DROPOUT_MODULES = (
    torch.nn.Dropout,
    torch.nn.Dropout1d,
    torch.nn.Dropout2d,
    torch.nn.Dropout3d,
    torch.nn.AlphaDropout,
    torch.nn.FeatureAlphaDropout,
)
DROPOUT_SUFFIXES = ("dropout", "pdrop", "dropout_p", "dropout_rate")
"""Names of dropout probabilities: GPT-2's `resid_pdrop`, Llama's `attention_dropout`, OPT's
`dropout`, ..."""


def disable_dropout(model: torch.nn.Module) -> None:
    """Dropout off for good, in train mode too (`model.disable_dropout`): every `nn.Dropout`'s
    p, and every float attribute named like a dropout probability, on the modules and on their
    configs. Module p alone is not enough: many attention layers copy the config's
    `attention_dropout` at init and pass it to SDPA as `dropout_p` in train mode, never
    through a module. LoRA adapters, added later, keep `model.lora.dropout`."""
    for module in model.modules():
        if isinstance(module, DROPOUT_MODULES):
            module.p = 0.0
        owners = [module]
        if isinstance(config := getattr(module, "config", None), PretrainedConfig):
            owners.append(config)
        for owner in owners:
            for name, value in list(vars(owner).items()):
                if name.endswith(DROPOUT_SUFFIXES) and type(value) is float:
                    setattr(owner, name, 0.0)


@contextlib.contextmanager
def _load_errors(path: str, what: str):
    try:
        yield
    except (OSError, ValueError) as error:
        if isinstance(error, PrefoptError):
            raise
        reason = " ".join(str(error).split())[:300]
        hint = ""
        if "trust_remote_code" in reason:
            hint = "; if you trust its author, set model.trust_remote_code=true"
        raise PrefoptError(f"{path}: cannot load the {what} ({reason}){hint}") from None


def prepare_policy(model: torch.nn.Module, cfg: ModelConfig) -> torch.nn.Module:
    """The loaded model as training wants it: gradient checkpointing, LoRA adapters, compiled
    decoder layers, each when `cfg` asks for it."""
    if cfg.gradient_checkpointing:
        # Non-reentrant: works with DDP, FSDP and frozen (LoRA) base weights alike.
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
    if cfg.lora.enabled:
        from prefopt.model.lora import apply_lora

        model = apply_lora(model, cfg.lora)
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        total = sum(p.numel() for p in model.parameters())
        log.info(
            "LoRA: %d of %d parameters train (%.2f%%)", trainable, total, 100 * trainable / total
        )
    if cfg.compile:
        from prefopt.training.strategies import decoder_layer_classes

        # Layer by layer: each block compiles once and is reused; the module keeps its
        # attributes and state-dict keys (no `_orig_mod.` prefix), so export is unchanged.
        classes = tuple(decoder_layer_classes(model))
        for module in model.modules():
            if isinstance(module, classes):
                module.compile(dynamic=True)
    return model
