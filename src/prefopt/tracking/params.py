"""The params a run carries: the hyperparameters a user compares runs by, not the whole config.

The whole resolved config is the run's `config.yaml` artifact; as params it would be some 165
keys, too many to scan in the runs table or the compare view. A param is named after its config
key with "/" for "." (`loss/beta`, `optim/lr`: the names runs before this selection had too),
so a key swept with `--multirun loss.beta=...` is the param `loss/beta`, and the compare view's
parallel coordinates plot it against the metrics. A few params are derived from the config:

- `loss`: the loss's name (`dpo`, `ipo`, ...), and `loss/<field>` for each of its fields;
- `optim/optimizer`: the optimizer's class (`torch.optim.AdamW`);
- `reference`: how π_ref's log-probs come (`cached`, `online`, or `none` for a loss without one).

An unset key (`data.path` of the toy data, `model.reference_path`) is no param.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from omegaconf import DictConfig, OmegaConf

KEY_SETTINGS = (
    "model.path",
    "model.reference_path",
    "model.dtype",
    "model.lora.enabled",
    "data.source",
    "data.path",
    "data.format",
    "data.max_length",
    "data.max_prompt_length",
    "data.max_rows",
    "data.batch_size",
    "optim.lr",
    "optim.scheduler",
    "optim.warmup_ratio",
    "optim.weight_decay",
    "trainer.accumulate_grad_batches",
    "trainer.max_steps",
    "trainer.max_epochs",
    "trainer.precision",
    "trainer.gradient_clip_val",
    "seed",
    "eval.judge",
)
"""Config keys logged as params as they are (when set)."""


def param_name(key: str) -> str:
    """The param of config key `key`: `loss.beta` -> `loss/beta`."""
    return key.replace(".", "/")


def key_params(config: DictConfig, extra_keys: Iterable[str] = ()) -> dict[str, str]:
    """{param name: value as text} for the key hyperparameters of `config`, plus `extra_keys`
    (config keys, e.g. the swept ones) that hold a value. Works on a partial config: what is
    missing is left out."""
    params: dict[str, Any] = {}
    loss = OmegaConf.select(config, "loss")
    if isinstance(loss, DictConfig):
        if (name := _loss_name(loss)) is not None:
            params["loss"] = name
        for field, value in loss.items():
            if field != "_target_":
                params[f"loss/{field}"] = value
    for key in (*KEY_SETTINGS, *extra_keys):
        value = OmegaConf.select(config, key, default=None)
        if value is not None and not isinstance(value, DictConfig):
            params[param_name(key)] = value
    if OmegaConf.select(config, "model.lora.enabled", default=False):
        params["model/lora/r"] = OmegaConf.select(config, "model.lora.r", default=None)
    optimizer = OmegaConf.select(config, "optim.optimizer._target_", default=None)
    if optimizer is not None:
        params["optim/optimizer"] = optimizer
    if (reference := _reference_mode(config, loss)) is not None:
        params["reference"] = reference
    return {name: _text(value) for name, value in params.items() if value is not None}


def _loss_name(loss: DictConfig) -> str | None:
    """The name a loss class registers under (`DPOLoss.name` = "dpo"), read from its
    `_target_`; None when there is none or it does not import."""
    target = loss.get("_target_")
    if not target:
        return None
    try:
        from hydra.utils import get_class

        return getattr(get_class(target), "name", None)
    except Exception:  # a loss that does not import fails at its own place, with its own error
        return None


def _reference_mode(config: DictConfig, loss: Any) -> str | None:
    """`none` (the loss needs no reference model), `cached` or `online`."""
    cache = OmegaConf.select(config, "reference.cache", default=None)
    if cache is None or not isinstance(loss, DictConfig):
        return None
    try:
        from hydra.utils import get_class

        needs_reference = getattr(get_class(loss.get("_target_")), "needs_reference", True)
    except Exception:
        needs_reference = True
    if not needs_reference:
        return "none"
    return "cached" if cache else "online"


def _text(value: Any) -> str:
    if OmegaConf.is_config(value):
        return str(OmegaConf.to_container(value, resolve=True))
    return str(value)
