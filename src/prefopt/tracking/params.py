"""The params a run carries: the hyperparameters a user compares runs by, not the whole config.

The whole resolved config is the run's `config.yaml` artifact; as params it would be some 165
keys, too many to scan in the runs table or the compare view. A param is named after its config
key with "/" for "." (`loss/beta`, `optim/lr`: the names runs before this selection had too),
so a key swept with `--multirun loss.beta=...` is the param `loss/beta`, and the compare view's
parallel coordinates plot it against the metrics. A few params are derived from the config:

- `loss`: the loss's name (`dpo`, `ipo`, ...), and `loss/<field>` for each of its fields (a
  nested one flattened: `loss/terms/dpo/beta` of `loss=mix`);
- `optim/optimizer`: the optimizer's class (`torch.optim.AdamW`);
- `judge`: the judge's short name (`toy`, `reward_model`, `python:<function>`, `none`);
- `reference`: how π_ref's log-probs come (`cached`, `online`, or `none` for a loss without one).

An unset key (`data.path` of the toy data, `model.reference_path`) is no param.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from omegaconf import DictConfig, OmegaConf

from prefopt.config.checks import check_loss
from prefopt.config.judges_schema import judge_label

KEY_SETTINGS = (
    "model.path",
    "model.reference_path",
    "model.dtype",
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
    "trainer.accumulate_grad_batches",
    "trainer.max_steps",
    "trainer.max_epochs",
    "trainer.precision",
    "seed",
    "judge.path",
    "judge.function",
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
    loss_cfg = OmegaConf.select(config, "loss")
    loss = _loss(loss_cfg)
    if loss is not None:
        params["loss"] = loss.name
    if isinstance(loss_cfg, DictConfig):
        fields = OmegaConf.to_container(loss_cfg, resolve=True)
        fields.pop("_target_", None)
        params.update(_flat(fields, "loss"))
    for key in (*KEY_SETTINGS, *extra_keys):
        value = OmegaConf.select(config, key, default=None)
        if value is not None and not isinstance(value, DictConfig):
            params[param_name(key)] = value
    if OmegaConf.select(config, "model.lora.enabled", default=False):
        params["model/lora/r"] = OmegaConf.select(config, "model.lora.r", default=None)
    judge = OmegaConf.select(config, "judge", default=None)
    if isinstance(judge, DictConfig):
        params["judge"] = judge_label(judge)
    optimizer = OmegaConf.select(config, "optim.optimizer._target_", default=None)
    if optimizer is not None:
        params["optim/optimizer"] = optimizer
    cache = OmegaConf.select(config, "reference.cache", default=None)
    if loss is not None and cache is not None:
        params["reference"] = ("cached" if cache else "online") if loss.needs_reference else "none"
    return {name: _text(value) for name, value in params.items() if value is not None}


def _loss(loss_cfg: Any) -> Any | None:
    """The loss the config builds (its `name` and `needs_reference` may depend on its fields, as
    a mix's do); None without a `_target_` or when it does not build (its own check says why)."""
    if not isinstance(loss_cfg, DictConfig) or "_target_" not in loss_cfg:
        return None
    try:
        return check_loss(loss_cfg)
    except Exception:
        return None


def _flat(value: Any, name: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        return {name: value}
    flat: dict[str, Any] = {}
    for key, item in value.items():
        flat.update(_flat(item, f"{name}/{key}"))
    return flat


def _text(value: Any) -> str:
    if OmegaConf.is_config(value):
        return str(OmegaConf.to_container(value, resolve=True))
    return str(value)
