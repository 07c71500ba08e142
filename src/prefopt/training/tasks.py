"""What a run trains, assembled from the config by one builder per kind, so that `prefopt.train`
fits and exports any of them the same way:

- `offline`: the policy aligned with the run's loss on the data's pairs (`task=align`, the
  default, with `loop=offline`);
- `online`: the same, with pairs sampled from the policy and judged each round (`loop=online`,
  `prefopt.online`);
- `reward`: a Bradley–Terry reward model on the data's pairs (`task=reward`, `prefopt.reward`).

`check_task(cfg)` checks the config (before the run starts) and names the kind; `build_fit`
returns the `Fit` its builder assembled: the module, the data, the callbacks, the trainer
section, and what export and model logging need.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import lightning as L
from omegaconf import DictConfig

from prefopt.config import checks
from prefopt.evaluation import build_callbacks
from prefopt.judges import build_judge
from prefopt.losses.base import PreferenceLoss
from prefopt.model.compatibility import check_reference_compatible
from prefopt.model.loading import Checkpoints
from prefopt.online import (
    OnlineSummary,
    build_online_data,
    check_loop_config,
    is_online,
    online_trainer_config,
)
from prefopt.reward.build import build_reward_model, check_reward_config
from prefopt.toy import build_toy_world, reward
from prefopt.tracking.models import check_model_logging
from prefopt.training import assemble, strategies


@dataclass
class Task:
    """The checked config's kind of run and the name its runs get by default."""

    kind: str
    """offline, online or reward: the key of its builder in `BUILDERS`."""
    label: str
    """The run name's start (the loss and its hyperparameters, or `reward model`)."""
    loss: PreferenceLoss

    @property
    def trained_loss(self) -> PreferenceLoss | None:
        """The preference loss the run trains with; None for a reward model (Bradley–Terry)."""
        return None if self.kind == "reward" else self.loss


@dataclass
class Fit:
    """What `prefopt.train` fits and exports."""

    module: L.LightningModule
    datamodule: L.LightningDataModule
    callbacks: list[L.Callback]
    trainer_cfg: DictConfig
    fault_hints: dict[str, object]
    tokenizer: Any
    load_base: Callable
    """Loads the base checkpoint, for a merged LoRA export."""
    log_model: bool = True
    """Log the export as the run's MLflow model (the aligned policy, a causal LM)."""
    extras: dict[str, Any] = field(default_factory=dict)


def task_kind(cfg: DictConfig) -> str:
    if str(cfg.task.kind) == "reward":
        return "reward"
    return "online" if is_online(cfg.loop) else "offline"


def check_task(cfg: DictConfig) -> Task:
    """Everything that can be checked before a model or dataset is touched."""
    kind = task_kind(cfg)
    if kind == "reward":  # first: the checks below speak of the loss a reward run ignores
        check_reward_config(cfg)
    loss = checks.check_config(cfg)
    strategies.check_scaling_config(cfg.trainer, cfg.model, cfg.reference, cfg.eval)
    check_model_logging(cfg.model, cfg.export)
    check_loop_config(cfg.loop, cfg.trainer)
    return Task(kind, "reward model" if kind == "reward" else loss.describe(), loss)


def build_fit(cfg: DictConfig, task: Task, logger) -> Fit:
    world = build_toy_world(cfg.toy) if "toy" in (cfg.model.path, cfg.data.source) else None
    checkpoints = Checkpoints.of(cfg.model, world and world.model_dir)
    # Again now that the toy model exists and hub files may be fetched: before any weights load.
    check_reference_compatible(cfg.model, checkpoints.policy_path, download=True)
    return BUILDERS[task.kind](cfg, task.loss, checkpoints, world, logger)


def build_offline(cfg, loss, checkpoints, world, logger) -> Fit:
    """The policy, its reference and the loss; evaluation's callbacks and judge."""
    tokenizer = checkpoints.load_tokenizer()
    datamodule = assemble.build_datamodule(cfg.data, tokenizer, world, loss, logger)
    module = assemble.build_module(
        cfg.model, cfg.reference, cfg.optim, loss, checkpoints, datamodule, cfg.trainer.precision
    )
    reference_model = assemble.evaluation_reference(module, checkpoints)
    toy_data = cfg.data.source == "toy"  # the toy world's reward is the ground truth
    # One judge for evaluation and the online loop: a reward model loads once.
    judged = cfg.eval.num_prompts > 0 or is_online(cfg.loop)
    judge = build_judge(cfg.judge, toy_data) if judged else None
    true_reward = reward if toy_data else None  # the ground truth, logged whatever the judge
    callbacks = build_callbacks(
        cfg.eval, cfg.model, judge, loss, tokenizer, reference_model, true_reward
    )
    callbacks += assemble.reference_callbacks(cfg.reference, module)  # TR-DPO's moving π_ref
    hints = assemble.fault_hints(cfg.optim, cfg.trainer, cfg.loss)
    extras = {"judge": judge, "reference_model": reference_model, "true_reward": true_reward}
    return Fit(module, datamodule, callbacks, cfg.trainer, hints, tokenizer, checkpoints.load,
               extras=extras)  # fmt: skip


def build_online(cfg, loss, checkpoints, world, logger) -> Fit:
    """The offline pieces, with the data module wrapped so that each epoch is a round sampled
    from the policy and judged (`prefopt.online`)."""
    fit = build_offline(cfg, loss, checkpoints, world, logger)
    fit.datamodule = build_online_data(
        cfg.loop, fit.datamodule, fit.module, fit.tokenizer, fit.extras["judge"],
        fit.extras["reference_model"], true_reward=fit.extras["true_reward"],
        progress=cfg.trainer.enable_progress_bar,
    )  # fmt: skip
    fit.callbacks.append(OnlineSummary())
    fit.trainer_cfg = online_trainer_config(cfg.trainer)
    return fit


def build_reward(cfg, loss, checkpoints, world, logger) -> Fit:
    """A Bradley–Terry reward model on the data's pairs (`prefopt.reward`)."""
    module, datamodule, callbacks, tokenizer = build_reward_model(cfg, checkpoints, world, logger)
    hints = assemble.fault_hints(cfg.optim, cfg.trainer, {})
    # Not the aligned-policy logged model (a text-generation pipeline): the export's folder is
    # the run's `prefopt.export_dir` tag, as for policies.
    return Fit(module, datamodule, callbacks, cfg.trainer, hints, tokenizer, checkpoints.load,
               log_model=False)  # fmt: skip


BUILDERS: dict[str, Callable[..., Fit]] = {
    "offline": build_offline,
    "online": build_online,
    "reward": build_reward,
}
