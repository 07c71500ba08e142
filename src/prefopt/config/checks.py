"""Everything checked before a model or dataset is touched, and how user errors are reported.

The schemas (`schema.py`) already refuse unknown keys, wrong types and unknown choices when
Hydra composes. What they cannot say is checked here, one function per config section
(`check_loss`, `check_optim`, `check_data`, ...), in the first seconds of a run, before the
MLflow run starts: a config that cannot work stops there with one line naming the key, the
value and the fix. `check_config` is the entry point's call of them all.

`check_overrides` runs even before Hydra composes the config, so that a misspelled group option
(`loss=dpoo`) or choice (`optim.scheduler=cosin`) gets the same kind of line listing the valid
options. `reported_errors` prints a `PrefoptError` as that one line on stderr and exits with
status 2, without a traceback.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import sys
import typing
from pathlib import Path
from typing import Any

from hydra.utils import get_class
from omegaconf import DictConfig, OmegaConf

from prefopt.config.schema import GROUP_SCHEMAS, Choice, Config
from prefopt.config.targets import locate_target
from prefopt.errors import EXIT_USER_ERROR, PrefoptError
from prefopt.evaluation import check_eval_config
from prefopt.losses.base import PreferenceLoss
from prefopt.model.loading import check_model_config
from prefopt.tracking import check_tracking_uri

log = logging.getLogger("prefopt")

GROUPS = ("loss", "model", "data", "optim", "trainer", "logger", "eval", "sweep")


def group_options(config_dir: str | Path, group: str) -> list[str]:
    return sorted(p.stem for p in (Path(config_dir) / group).glob("*.yaml"))


def check_overrides(args: list[str], config_dir: str | Path) -> None:
    """`group=option` arguments naming an option that does not exist, and `key=value` ones
    giving a choice field (a `schema.Choice`) a value it does not have."""
    for arg in args:
        key, sep, value = arg.partition("=")
        key = key.lstrip("+~")
        if arg.startswith("-") or not sep or "(" in value:
            continue  # flags, deletions, and sweep functions (choice(...)) are Hydra's to parse
        if key in GROUPS:
            options = group_options(config_dir, key)
            for option in value.split(","):  # --multirun loss=dpo,ipo
                if option and option != "null" and option not in options:
                    raise PrefoptError(
                        f"{key}={option}: there is no such {key}; "
                        f"choose one of: {', '.join(options)}"
                    )
        elif not arg.startswith("~") and (choices := choice_type(key)) is not None:
            for option in value.split(","):  # --multirun optim.scheduler=linear,cosine
                option = option.strip().strip("'\"")
                if option.startswith("${") or option in choices.__members__:
                    continue
                raise PrefoptError(f"{key}={option!r}: choose one of {', '.join(choices.values())}")


def check_config(cfg: DictConfig) -> PreferenceLoss:
    """The loss object, once every section has been checked (the only check that takes the
    whole config: the entry point's)."""
    check_required(cfg)
    loss = check_loss(cfg.loss)
    check_optim(cfg.optim)
    check_trainer(cfg.trainer)
    check_model_config(cfg.model, cfg.model.path)
    check_data(cfg.data, loss)
    check_eval_config(cfg.eval)
    check_checkpoint(cfg.checkpoint, resuming=bool(cfg.resume or cfg.ckpt_path))
    check_tracking_uri(cfg.logger.tracking_uri)
    return loss


def check_required(cfg: DictConfig) -> None:
    """No `???` left: a value every run needs and no config gave."""
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        raise PrefoptError(
            f"{', '.join(missing)}: required, and not set; give it on the command line, "
            f"e.g. {missing[0]}=…"
        )


def check_loss(loss_cfg: DictConfig) -> PreferenceLoss:
    """The loss the `loss` section describes (its own constructor checks its values)."""
    loss_params = OmegaConf.to_container(loss_cfg, resolve=True)
    loss_class = get_class(loss_params.pop("_target_"))
    return loss_class(**loss_params)  # direct call, so a bad value raises its own clear error


def check_optim(optim: DictConfig) -> None:
    if not optim.lr > 0:
        raise PrefoptError(f"optim.lr={optim.lr}: the learning rate must be > 0")
    if not 0 <= optim.warmup_ratio < 1:
        raise PrefoptError(f"optim.warmup_ratio={optim.warmup_ratio}: it must be in [0, 1)")
    for key in ("optimizer", "lr_scheduler"):
        locate_target(f"optim.{key}._target_", optim[key].get("_target_"))


def check_trainer(trainer: DictConfig) -> None:
    for name, node in (trainer.get("callbacks") or {}).items():
        if node is not None:
            locate_target(f"trainer.callbacks.{name}._target_", node.get("_target_"))


def check_data(data: DictConfig, loss: PreferenceLoss) -> None:
    if data.source == "toy" and data.path:
        raise PrefoptError(
            f"data.path={data.path} has no effect with data.source=toy; "
            "train on your file with data=local data.path=…"
        )
    if data.format == "unpaired" and loss.paired:
        raise PrefoptError(
            f"loss={loss.name} trains on pairs (prompt, chosen, rejected), but data.format=unpaired "
            "gives (prompt, completion, label) rows; use loss=kto or paired data"
        )
    if not 0 < data.max_prompt_length < data.max_length:
        raise PrefoptError(
            f"data.max_prompt_length={data.max_prompt_length} must be positive and below "
            f"data.max_length={data.max_length}, or no completion token would fit"
        )
    if not 0 <= data.val_fraction < 1:
        raise PrefoptError(f"data.val_fraction={data.val_fraction}: it must be in [0, 1)")
    for key in ("batch_size", "eval_batch_size"):
        if data[key] < 1:
            raise PrefoptError(f"data.{key}={data[key]}: it must be >= 1")
    if data.num_proc is not None and data.num_proc < 1:
        raise PrefoptError(
            f"data.num_proc={data.num_proc}: it must be >= 1, or null for one per CPU core"
        )


def check_checkpoint(checkpoint: DictConfig, resuming: bool) -> None:
    """`resuming`: `resume=true` or a `ckpt_path` was given."""
    if checkpoint.every_n_steps < 0:
        raise PrefoptError(
            f"checkpoint.every_n_steps={checkpoint.every_n_steps}: it must be >= 0 "
            "(0 = only at the end)"
        )
    if resuming and not checkpoint.enabled:
        raise PrefoptError(
            "resume=true / ckpt_path with checkpoint.enabled=false: a resumed run would write no "
            "checkpoints of its own; drop checkpoint.enabled=false"
        )


def _in_multirun() -> bool:
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        return HydraConfig.get().mode == RunMode.MULTIRUN
    except Exception:
        return False


@contextlib.contextmanager
def reported_errors():
    """A `PrefoptError` becomes one line on stderr and exit status 2 (a single run; in a
    --multirun the job fails and the sweep records it)."""
    try:
        yield
    except PrefoptError as error:
        if _in_multirun():
            log.error("%s", error)
            raise
        logging.shutdown()  # flush the log files before leaving
        print(f"prefopt: error: {error}", file=sys.stderr, flush=True)
        sys.exit(EXIT_USER_ERROR)


def choice_type(key: str) -> type[Choice] | None:
    """The `Choice` enum of a dotted config key (`optim.scheduler`), or None when the key is not
    a choice field of a schema."""
    group, _, rest = key.partition(".")
    schema: Any = GROUP_SCHEMAS.get(group)
    parts = rest.split(".") if schema is not None else key.split(".")
    if schema is None:
        schema = Config
    for part in parts:
        if not dataclasses.is_dataclass(schema):
            return None
        hint = typing.get_type_hints(schema).get(part)
        if hint is None:
            return None
        schema = hint
    return schema if isinstance(schema, type) and issubclass(schema, Choice) else None
