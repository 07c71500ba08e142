"""The optimizer and its learning-rate schedule, built from the `optim` config section.

Both are `_target_` nodes (`optim.optimizer`, `optim.lr_scheduler`) that `hydra.utils.instantiate`
builds, so a YAML under `conf/optim/` can name any torch optimizer or scheduler. The default
schedule is `warmup_schedule`: linear warm-up, then constant, linear decay or cosine.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Iterable

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from prefopt.config.schema import OptimConfig, Scheduler
from prefopt.errors import PrefoptError


def build_optimizer(
    optim: OptimConfig | DictConfig, params: Iterable[torch.nn.Parameter], total_steps: int
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    """`optim.optimizer` over `params` and `optim.lr_scheduler` over that optimizer."""
    if not isinstance(optim, DictConfig):
        optim = OmegaConf.structured(optim)
    # Built as partials, whatever the YAML says, since the parameters are known only now;
    # `_convert_` hands plain lists to torch (a ListConfig would end up in the checkpoint).
    make_optimizer = instantiate(optim.optimizer, _partial_=True, _convert_="all")
    optimizer = make_optimizer(params)
    make_scheduler = instantiate(optim.lr_scheduler, _partial_=True, _convert_="all")
    takes_total = "total_steps" in inspect.signature(make_scheduler).parameters
    scheduler = make_scheduler(optimizer, **({"total_steps": total_steps} if takes_total else {}))
    return optimizer, scheduler


def warmup_schedule(
    optimizer: torch.optim.Optimizer,
    total_steps: int,
    kind: str = Scheduler.linear,
    warmup_ratio: float = 0.1,
) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up over `warmup_ratio` of `total_steps`, then `kind` (`lr_schedule`)."""
    schedule = lr_schedule(kind, total_steps, int(warmup_ratio * total_steps))
    return torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)


def lr_schedule(kind: str, total_steps: int, warmup_steps: int) -> Callable[[int], float]:
    """Multiplier of the peak lr at each step: linear warm-up, then constant/linear/cosine."""
    if kind not in Scheduler.values():
        raise PrefoptError(
            f"optim.scheduler={str(kind)!r}: choose one of {', '.join(Scheduler.values())}"
        )

    def multiplier(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / (warmup_steps + 1)
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        if kind == Scheduler.linear:
            return max(0.0, 1.0 - progress)
        if kind == Scheduler.cosine:
            return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
        return 1.0

    return multiplier
