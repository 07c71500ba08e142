"""A resumed run whose settings differ from its checkpoint's: the new values apply, or the run
is refused in one line. Never are the old ones silently kept.

Each checkpoint records the settings that shape training (`ResumedSettings.state_dict`): the
loss and its hyperparameters, the `optim` section, the precision and length of training, the
policy's checkpoint and the data section. When a run resumes:

- a change that a checkpoint cannot honour stops the run (`PrefoptError`, exit 2) naming the
  keys (`FIXED`), before the MLflow run reopens (`refuse_before_start`; the policy's path once
  the model loaded): another policy, other data or batch size (the checkpoint's weights and data
  position are of those), another loss kind, optimizer or schedule class (their saved states
  are of another kind), other gradient accumulation (its position within a step is of that);
- every other change applies. The loss and the precision need nothing: both are built from
  the new config, the checkpoint holding only the loss's running state. The optimizer's
  hyperparameters and the schedule's base learning rate do: Lightning restores them from the
  checkpoint after `configure_optimizers` built them from the new config, so they are set back
  to the new config's values, and the current learning rate is recomputed on the new schedule
  at the resumed step (`optim.lr=1e-5` then trains at 1e-5 times the schedule, not at the old
  schedule's lr);
- the changed keys go to the console (one line), to the MLflow tag `prefopt.resume.changed`,
  and as params `resumed_at_step_<step>/<key>` (MLflow keeps a param's first value, so the
  run's own params still show the values it started with).
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

import lightning as L
import torch
from omegaconf import DictConfig, OmegaConf

from prefopt.errors import PrefoptError
from prefopt.tracking import set_tags
from prefopt.training.checkpoint import safe_load

log = logging.getLogger("prefopt.resume")

CHANGED_TAG = "prefopt.resume.changed"

FIXED = (
    "model.path",
    "data.",
    "loss._target_",
    "optim.optimizer._target_",
    "optim.lr_scheduler._target_",
    "trainer.accumulate_grad_batches",
)
"""Keys (or prefixes) whose change a checkpoint cannot honour."""
FIXED_WHY = (
    "the checkpoint's weights, optimizer state and data position belong to its policy, data, "
    "loss and optimizer"
)
HARMLESS_DATA_KEYS = (
    *("num_proc", "num_workers", "cache", "cache_dir", "eval_batch_size"),
    *("packing", "packing_row_tokens"),
)
"""Data settings that change how batches are prepared or laid out, not what is trained on."""
SCHEDULE_KEYS = ("optim.", "trainer.max_steps", "trainer.max_epochs")
"""Changes after which the restored optimizer and schedule are set to the new config's."""


def run_settings(trainer: L.Trainer, module: Any) -> dict[str, Any]:
    """The settings a checkpoint records: flat dotted keys, plain values."""
    settings: dict[str, Any] = {
        **_objective_settings(module),
        **_flat("optim", _plain(module.optim)),
        "trainer.precision": str(trainer.precision),
        "trainer.max_steps": trainer.max_steps,
        "trainer.max_epochs": trainer.max_epochs,
        "trainer.accumulate_grad_batches": trainer.accumulate_grad_batches,
        "trainer.gradient_clip_val": trainer.gradient_clip_val,
        "model.path": str(getattr(module.policy, "name_or_path", "") or ""),
    }
    data = _data_config(trainer)
    if data is not None:
        data = {k: v for k, v in _plain(data).items() if k not in HARMLESS_DATA_KEYS}
        settings.update(_flat("data", data))
    return settings


def _objective_settings(module: Any) -> dict[str, Any]:
    """What the module trains for: a preference loss and its hyperparameters, or (task=reward,
    a module without a `loss`) the reward model's Bradley–Terry terms, under `task.`."""
    loss = getattr(module, "loss", None)
    if loss is None:
        return {
            "loss._target_": objective_name(None),
            "task.margin": module.margin,
            "task.center_rewards_coefficient": module.center_rewards_coefficient,
        }
    return {
        "loss._target_": objective_name(loss),
        **_flat("loss", _plain(dataclasses.asdict(loss))),
    }


def objective_name(loss: Any) -> str:
    """The loss's class, or for a reward model (no preference loss) its Bradley–Terry objective."""
    if loss is None:
        return "prefopt.reward.loss.bradley_terry"
    return f"{type(loss).__module__}.{type(loss).__qualname__}"


def changed_settings(old: dict[str, Any], new: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """{key: (checkpoint's value, this run's)} for every key whose value differs."""
    keys = sorted(set(old) | set(new))
    return {k: (old.get(k), new.get(k)) for k in keys if old.get(k) != new.get(k)}


def refused(changed: dict[str, tuple[Any, Any]]) -> list[str]:
    return [
        k for k in changed if any(k == f or (f.endswith(".") and k.startswith(f)) for f in FIXED)
    ]


def refusal(changed: dict[str, tuple[Any, Any]], fixed: list[str]) -> PrefoptError:
    shown = ", ".join(f"{k} ({_short(changed[k][0])} -> {_short(changed[k][1])})" for k in fixed)
    return PrefoptError(
        f"resume: the config changes what the checkpoint cannot continue: {shown}; "
        f"{FIXED_WHY}: resume with the checkpoint's values, or start a new run "
        "(without resume=true / ckpt_path)"
    )


def refuse_before_start(checkpoint: str | Path, cfg: DictConfig, loss: Any | None) -> None:
    """The refusal `ResumedSettings` makes once training starts, made before the MLflow run is
    reopened, so that a refused resume records nothing (the run would otherwise end FAILED,
    half recorded): for the fixed keys the config gives as the checkpoint recorded them (the
    loss kind, the optimizer and schedule classes, gradient accumulation, the data). The
    policy's path, recorded as the loaded model names it, is left to the callback. A checkpoint
    without settings (older) passes. The checkpoint is memory-mapped: its tensors are not read."""
    state = safe_load(checkpoint, mmap=True)  # unsafe or unreadable: one line, nothing started
    old = (state.get("callbacks") or {}).get("ResumedSettings", {}).get("settings")
    if not old:
        return
    data = {k: v for k, v in _plain(cfg.data).items() if k not in HARMLESS_DATA_KEYS}
    new = {
        "loss._target_": objective_name(loss),  # loss None: a reward model
        **_flat("optim", _plain(cfg.optim)),
        "trainer.accumulate_grad_batches": cfg.trainer.accumulate_grad_batches,
        **_flat("data", data),
    }
    old = {k: v for k, v in old.items() if k in new or k.startswith("data.")}
    changed = changed_settings(old, new)
    if fixed := refused(changed):
        raise refusal(changed, fixed)


class ResumedSettings(L.Callback):
    """Records the run's settings in every checkpoint; on resume, refuses or applies changes
    (see the module's docstring). Add it beside `ResumeCheckpoint`."""

    def __init__(self):
        self._settings: dict[str, Any] | None = None
        """This run's settings, known once training is set up (`on_fit_start`)."""
        self._checkpoint_settings: dict[str, Any] | None = None
        """The resumed checkpoint's (None: a fresh run, or a checkpoint that predates them)."""
        self._fresh: list[tuple[torch.optim.Optimizer, Any, list[dict[str, Any]], list]] = []
        """Per optimizer: its schedule, and its groups' settings and base lrs as the new
        config built them, before the checkpoint's replaced them."""
        self._changed: dict[str, tuple[Any, Any]] | None = None

    @property
    def state_key(self) -> str:
        return "ResumedSettings"

    def state_dict(self) -> dict[str, Any]:
        return {"settings": self._settings} if self._settings is not None else {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._checkpoint_settings = state_dict.get("settings")

    def on_fit_start(self, trainer, pl_module) -> None:
        # configure_optimizers has run (the new config's values); the checkpoint's optimizer
        # and schedule states are restored after this hook.
        self._settings = run_settings(trainer, pl_module)
        schedules = {id(c.scheduler.optimizer): c.scheduler for c in trainer.lr_scheduler_configs}
        self._fresh = []
        for optimizer in trainer.optimizers:
            schedule = schedules.get(id(optimizer))
            groups = [{k: v for k, v in g.items() if k != "params"} for g in optimizer.param_groups]
            base_lrs = list(getattr(schedule, "base_lrs", None) or [])
            self._fresh.append((optimizer, schedule, groups, base_lrs))
        self._compare()

    def on_train_start(self, trainer, pl_module) -> None:
        self._compare()  # strategies that restore after setup (FSDP) loaded the state just now
        if not self._changed:
            return
        if any(k.startswith(SCHEDULE_KEYS) for k in self._changed):
            for optimizer, schedule, groups, base_lrs in self._fresh:
                set_back(optimizer, schedule, groups, base_lrs)
        self._report(trainer)

    def _compare(self) -> None:
        if self._changed is not None or None in (self._checkpoint_settings, self._settings):
            return
        self._changed = changed_settings(self._checkpoint_settings, self._settings)
        if fixed := refused(self._changed):
            raise refusal(self._changed, fixed)

    def _report(self, trainer) -> None:
        step = trainer.global_step
        shown = ", ".join(f"{k} {_short(a)} -> {_short(b)}" for k, a, b in _rows(self._changed))
        log.warning("resumed at step %d with changed settings, applied: %s", step, shown)
        logger = trainer.logger
        if logger is None or trainer.global_rank != 0:
            return
        set_tags(logger, {CHANGED_TAG: f"step {step}: {shown}"[:5000]})
        logger.log_hyperparams(
            {f"resumed_at_step_{step}/{k}": _short(b) for k, _, b in _rows(self._changed)}
        )


def set_back(optimizer, schedule, groups: list[dict[str, Any]], base_lrs: list[float]) -> None:
    """The new config's optimizer settings (`groups`) and base lrs over those restored from the
    checkpoint, and each group's current lr on the new schedule at the resumed step."""
    for group, fresh in zip(optimizer.param_groups, groups, strict=True):
        restored_lr, restored_base = group["lr"], group.get("initial_lr", group["lr"])
        group.update({k: v for k, v in fresh.items() if k != "lr"})
        if schedule is None:
            group["lr"] = fresh["lr"]
        elif not isinstance(schedule, torch.optim.lr_scheduler.LambdaLR):
            # Any other torch schedule is proportional to its base lr (eta_min aside).
            group["lr"] = restored_lr * fresh.get("initial_lr", fresh["lr"]) / restored_base
    if schedule is None:
        return
    if base_lrs:
        schedule.base_lrs = list(base_lrs)
    if isinstance(schedule, torch.optim.lr_scheduler.LambdaLR):  # warmup_schedule: exact
        for group, base, multiplier in zip(
            optimizer.param_groups, schedule.base_lrs, schedule.lr_lambdas, strict=True
        ):
            group["lr"] = base * multiplier(schedule.last_epoch)


def _rows(changed):
    return [(k, a, b) for k, (a, b) in changed.items()]


def _short(value: Any) -> str:
    text = str(value)
    return text if len(text) <= 200 else text[:197] + "..."


def _data_config(trainer) -> Any:
    datamodule = getattr(trainer, "datamodule", None)
    datamodule = getattr(datamodule, "offline", datamodule)  # loop=online wraps the data's
    return getattr(datamodule, "cfg", None)


def _plain(node: Any) -> dict[str, Any]:
    if isinstance(node, DictConfig):
        return OmegaConf.to_container(node, resolve=True, enum_to_str=True)
    if dataclasses.is_dataclass(node) and not isinstance(node, type):
        return OmegaConf.to_container(OmegaConf.structured(node), resolve=True, enum_to_str=True)
    return dict(node)


def _flat(prefix: str, values: Any) -> dict[str, Any]:
    if not isinstance(values, dict):
        return {prefix: _value(values)}
    flat: dict[str, Any] = {}
    for key, value in values.items():
        flat.update(_flat(f"{prefix}.{key}", value))
    return flat


def _value(value: Any) -> Any:
    """Plain values that `torch.load(weights_only=True)` reads back."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, list | tuple):
        return [_value(v) for v in value]
    return str(value)
