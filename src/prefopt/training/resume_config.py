"""A resumed run whose settings differ from its checkpoint's: the new values apply, or the run
is refused in one line. Never are the old ones silently kept.

Each checkpoint records the settings that shape training (`ResumedSettings.state_dict`): the
loss and its hyperparameters, the `optim` section, the precision and length of training, the
policy's checkpoint and the data section. When a run resumes:

- a change that a checkpoint cannot honour stops the run (`PrefoptError`, exit 2) naming the
  keys (`FIXED`): another policy, other data or batch size (the checkpoint's weights and data
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
from typing import Any

import lightning as L
import torch
from omegaconf import DictConfig, OmegaConf

from prefopt.errors import PrefoptError
from prefopt.tracking import set_tags

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
HARMLESS_DATA_KEYS = ("num_proc", "cache", "cache_dir", "eval_batch_size", "path_hint")
"""Data settings that change how data is prepared or validated, not what is trained on."""
SCHEDULE_KEYS = ("optim.", "trainer.max_steps", "trainer.max_epochs")
"""Changes after which the restored optimizer and schedule are set to the new config's."""


def run_settings(trainer: L.Trainer, module: Any) -> dict[str, Any]:
    """The settings a checkpoint records: flat dotted keys, plain values."""
    loss = module.loss
    settings: dict[str, Any] = {
        "loss._target_": f"{type(loss).__module__}.{type(loss).__qualname__}",
        **_flat("loss", _plain(dataclasses.asdict(loss))),
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


def changed_settings(old: dict[str, Any], new: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """{key: (checkpoint's value, this run's)} for every key whose value differs."""
    keys = sorted(set(old) | set(new))
    return {k: (old.get(k), new.get(k)) for k in keys if old.get(k) != new.get(k)}


def refused(changed: dict[str, tuple[Any, Any]]) -> list[str]:
    return [
        k for k in changed if any(k == f or (f.endswith(".") and k.startswith(f)) for f in FIXED)
    ]


class ResumedSettings(L.Callback):
    """Records the run's settings in every checkpoint; on resume, refuses or applies changes
    (see the module's docstring). Add it beside `ResumeCheckpoint`."""

    def __init__(self):
        self._checkpoint_settings: dict[str, Any] | None = None
        self._fresh: list[tuple[list[dict[str, Any]], list[float] | None]] = []
        self._changed: dict[str, tuple[Any, Any]] | None = None

    @property
    def state_key(self) -> str:
        return "ResumedSettings"

    def state_dict(self) -> dict[str, Any]:
        return {"settings": self._settings} if hasattr(self, "_settings") else {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._checkpoint_settings = state_dict.get("settings")

    def on_fit_start(self, trainer, pl_module) -> None:
        # configure_optimizers has run (the new config's values); the checkpoint's optimizer
        # and schedule states are restored after this hook.
        self._settings = run_settings(trainer, pl_module)
        self._fresh = [
            (
                [
                    {k: v for k, v in g.items() if k != "params"}
                    for g in config.scheduler.optimizer.param_groups
                ],
                list(getattr(config.scheduler, "base_lrs", []) or []) or None,
            )
            for config in trainer.lr_scheduler_configs
        ]
        if not trainer.lr_scheduler_configs:
            self._fresh = [
                ([{k: v for k, v in g.items() if k != "params"} for g in opt.param_groups], None)
                for opt in trainer.optimizers
            ]
        self._compare()

    def on_train_start(self, trainer, pl_module) -> None:
        self._compare()  # strategies that restore after setup (FSDP) loaded the state just now
        if not self._changed:
            return
        if any(k.startswith(SCHEDULE_KEYS) for k in self._changed):
            self._apply_optimizer_settings(trainer)
        self._report(trainer)

    def _compare(self) -> None:
        if self._changed is not None or self._checkpoint_settings is None:
            return
        if not hasattr(self, "_settings"):
            return
        self._changed = changed_settings(self._checkpoint_settings, self._settings)
        if fixed := refused(self._changed):
            shown = ", ".join(
                f"{k} ({_short(self._changed[k][0])} -> {_short(self._changed[k][1])})"
                for k in fixed
            )
            raise PrefoptError(
                f"resume: the config changes what the checkpoint cannot continue: {shown}; "
                f"{FIXED_WHY}: resume with the checkpoint's values, or start a new run "
                "(without resume=true / ckpt_path)"
            )

    def _apply_optimizer_settings(self, trainer) -> None:
        """The new config's optimizer hyperparameters and base learning rates over the restored
        ones, and each group's current lr on the new schedule at the resumed step."""
        configs = trainer.lr_scheduler_configs
        if configs:
            pairs = [(c.scheduler.optimizer, c.scheduler) for c in configs]
        else:
            pairs = [(opt, None) for opt in trainer.optimizers]
        for (optimizer, scheduler), (groups, base_lrs) in zip(pairs, self._fresh, strict=False):
            for group, fresh in zip(optimizer.param_groups, groups, strict=False):
                restored_lr = group["lr"]
                group.update({k: v for k, v in fresh.items() if k != "lr"})
                if scheduler is None:
                    group["lr"] = fresh["lr"]
                elif isinstance(scheduler, torch.optim.lr_scheduler.LambdaLR):
                    pass  # set below from the closed form
                else:  # a schedule proportional to its base lr
                    old_base = group.get("initial_lr") or restored_lr
                    group["lr"] = restored_lr * fresh.get("initial_lr", fresh["lr"]) / old_base
            if scheduler is None:
                continue
            if base_lrs is not None:
                scheduler.base_lrs = list(base_lrs)
            if isinstance(scheduler, torch.optim.lr_scheduler.LambdaLR):
                for group, base, schedule in zip(
                    optimizer.param_groups, scheduler.base_lrs, scheduler.lr_lambdas, strict=True
                ):
                    group["lr"] = base * schedule(scheduler.last_epoch)

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
