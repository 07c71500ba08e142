"""The `task` config group: what a run trains (`conf/task/`).

`task=align` (the default) trains the policy with the run's loss, offline or online
(`loop=`); `task=reward` trains a Bradley–Terry reward model on the same paired data
(`prefopt.reward`): a sequence-classification head with one output on the policy's
architecture (`model.path`), exported so that `judge=reward_model judge.path=<export>` reads it.
"""

from __future__ import annotations

from dataclasses import dataclass

from prefopt.config.choices import TaskKind


@dataclass
class TaskConfig:
    """Align the policy (the loss, `loop=`) or train a reward model; the reward keys are read
    only with `kind=reward`."""

    kind: TaskKind = TaskKind.align
    """align: train the policy with `loss=`; reward: a Bradley–Terry reward model on the pairs."""
    margin: float = 0.0
    """Reward models: the loss is −log σ(r_chosen − r_rejected − margin), this margin for every
    pair (TRL's RewardTrainer reads a per-pair `margin` data column instead; prefopt's data
    pipeline does not carry one yet)."""
    center_rewards_coefficient: float = 0.0
    """Reward models: adds c·mean((r_chosen + r_rejected)²) to the loss, which keeps the rewards
    centred on 0 (TRL's `center_rewards_coefficient`, Eisenstein et al. 2023); 0 = off."""
    calibration_bins: int = 10
    """Reward models: bins of the calibration plot (predicted P(chosen ≻ rejected) = σ(margin)
    against how often it held), logged as `reward_calibration.png`."""
