"""`model.liger_kernel=true`: Liger's fused Triton kernels in a loaded model's layers.

The `liger-kernel` package (the optional extra `liger`) patches an already-loaded Hugging Face
model through its public `liger_kernel.transformers.apply_liger_kernel_to_<model_type>(model=...)`
functions: RMSNorm, the SwiGLU MLP and the rotary embedding become fused kernels, the weights
and state-dict keys stay as they are (export is unchanged). Its fused linear cross-entropy
replaces the model's `forward` to return a loss instead of logits; prefopt computes completion
log-probs itself, chunked through the output layer (`model/logprobs.py`), so it is switched off.

The kernels need triton and a CUDA GPU: `liger_kernel_problem` says, before any model loads,
why a machine cannot run them (`config/checks.py` reports it as a one-line error).
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import logging

from torch import nn

from prefopt.errors import PrefoptError

log = logging.getLogger("prefopt.models")

LAYER_KERNELS = {"rope": True, "rms_norm": True, "layer_norm": True, "swiglu": True, "geglu": True}
"""The layer kernels asked for, where a model family's patch function offers them."""
NO_LOSS_KERNELS = {"cross_entropy": False, "fused_linear_cross_entropy": False}
"""Liger's loss kernels stay off: they replace the logits prefopt's log-probs are read from."""


def liger_kernel_problem(accelerator: str) -> str | None:
    """Why `model.liger_kernel=true` cannot run on this machine with `trainer.accelerator`,
    or None when it can."""
    if importlib.util.find_spec("liger_kernel") is None:
        return (
            "the liger-kernel package is not installed; pip install -e '.[liger]' (triton and "
            "a CUDA GPU) or set model.liger_kernel=false"
        )
    import torch

    if str(accelerator).lower() == "cpu" or not torch.cuda.is_available():
        return (
            "Liger's Triton kernels run on a CUDA GPU and this run has none "
            f"(trainer.accelerator={accelerator}, CUDA available: {torch.cuda.is_available()}); "
            "set model.liger_kernel=false or train with trainer=gpu"
        )
    return None


def apply_liger_kernels(model: nn.Module) -> nn.Module:
    """Patch `model` in place with Liger's layer kernels for its model type (see the module
    docstring); a model type Liger has no patch for is a `PrefoptError`."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    patch = _patch_function(model_type)
    if patch is None:
        raise PrefoptError(
            f"model.liger_kernel=true: liger-kernel has no kernels for model type {model_type!r}; "
            "set model.liger_kernel=false"
        )
    accepted = inspect.signature(patch).parameters
    options = {k: v for k, v in {**LAYER_KERNELS, **NO_LOSS_KERNELS}.items() if k in accepted}
    patch(model=model, **options)
    log.info(
        "liger-kernel: %s patched with %s", model_type, sorted(k for k, v in options.items() if v)
    )
    return model


def _patch_function(model_type: str | None):
    """Liger's public patch function for `model_type` (`qwen2` → `apply_liger_kernel_to_qwen2`;
    the text half of a multimodal type, `qwen2_vl_text`, uses its family's `qwen2_vl`)."""
    if not model_type:
        return None
    transformers_api = importlib.import_module("liger_kernel.transformers")
    for name in (model_type, model_type.removesuffix("_text")):
        patch = getattr(transformers_api, f"apply_liger_kernel_to_{name}", None)
        if patch is not None and "model" in inspect.signature(patch).parameters:
            return patch
    return None
