"""The optimizer and schedule come from `_target_` nodes: the default is the AdamW with linear
warm-up and decay prefopt always built, and another one is a YAML (or an override) away."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader

from prefopt.config.schema import OptimConfig
from prefopt.losses import DPOLoss
from prefopt.reference.online import OnlineReference
from prefopt.training.module import PreferenceModule
from prefopt.training.optimizers import build_optimizer, lr_schedule

from ..conftest import hand_batch, quiet_trainer, tiny_llama


def params():
    return [torch.nn.Parameter(torch.zeros(3))]


def multipliers(scheduler, steps: int) -> list[float]:
    return [scheduler.lr_lambdas[0](step) for step in range(steps)]


def test_the_default_is_adamw_with_warmup_then_linear_decay(compose_config):
    cfg = compose_config()
    optimizer, scheduler = build_optimizer(cfg.optim, params(), total_steps=20)
    assert type(optimizer) is torch.optim.AdamW
    group = optimizer.param_groups[0]
    assert group["initial_lr"] == cfg.model.lr == cfg.optim.lr
    assert tuple(group["betas"]) == (0.9, 0.999) and group["weight_decay"] == 0.0
    assert type(scheduler) is torch.optim.lr_scheduler.LambdaLR
    assert multipliers(scheduler, 21) == [lr_schedule("linear", 20, 2)(s) for s in range(21)]
    # the same from a schema built in Python (tests, benchmarks)
    optimizer, scheduler = build_optimizer(OptimConfig(lr=0.5), params(), total_steps=20)
    assert type(optimizer) is torch.optim.AdamW and optimizer.param_groups[0]["initial_lr"] == 0.5
    assert multipliers(scheduler, 21) == [lr_schedule("linear", 20, 2)(s) for s in range(21)]


def test_the_optim_keys_users_override_reach_the_optimizer(compose_config):
    cfg = compose_config(
        "optim.lr=1e-4",
        "optim.weight_decay=0.01",
        "optim.betas=[0.8,0.95]",
        "optim.scheduler=cosine",
        "optim.warmup_ratio=0",
    )
    optimizer, scheduler = build_optimizer(cfg.optim, params(), total_steps=10)
    group = optimizer.param_groups[0]
    assert group["initial_lr"] == 1e-4 and group["weight_decay"] == 0.01
    assert tuple(group["betas"]) == (0.8, 0.95)
    assert multipliers(scheduler, 11) == [lr_schedule("cosine", 10, 0)(s) for s in range(11)]


def test_an_optimizer_yaml_trains_with_no_python(compose_config, tmp_path):
    """conf/optim/sgd.yaml: SGD with momentum; none of AdamW's arguments leak into it."""
    cfg = compose_config("optim=sgd", "optim.lr=0.05")
    module = PreferenceModule(
        tiny_llama(seed=0),
        DPOLoss(beta=0.1),
        cfg.optim,
        reference=OnlineReference(tiny_llama(seed=1)),
    )
    trainer = quiet_trainer(tmp_path, max_steps=2)
    before = [p.detach().clone() for p in module.policy.parameters()]
    trainer.fit(module, train_dataloaders=DataLoader([hand_batch()] * 2, batch_size=None))
    optimizer = trainer.optimizers[0]
    assert type(optimizer) is torch.optim.SGD
    group = optimizer.param_groups[0]
    assert group["momentum"] == 0.9 and group["initial_lr"] == 0.05 and "betas" not in group
    assert type(trainer.lr_scheduler_configs[0].scheduler) is torch.optim.lr_scheduler.LambdaLR
    assert any(not torch.equal(a, b) for a, b in zip(before, module.policy.parameters()))


def test_an_optimizer_and_a_torch_scheduler_from_overrides(compose_config):
    cfg = compose_config(
        "optim.optimizer._target_=torch.optim.SGD",
        "~optim.optimizer.betas",
        "+optim.optimizer.nesterov=true",
        "+optim.optimizer.momentum=0.5",
    )
    optimizer, _ = build_optimizer(cfg.optim, params(), total_steps=10)
    assert type(optimizer) is torch.optim.SGD and optimizer.param_groups[0]["nesterov"] is True

    # A torch scheduler: called with `total_steps` only when it takes that argument.
    step = OptimConfig(
        lr=1.0,
        lr_scheduler={"_target_": "torch.optim.lr_scheduler.StepLR", "step_size": 1, "gamma": 0.5},
    )
    _, scheduler = build_optimizer(step, params(), total_steps=10)
    assert type(scheduler) is torch.optim.lr_scheduler.StepLR
    one_cycle = OptimConfig(
        lr=1.0,
        lr_scheduler={"_target_": "torch.optim.lr_scheduler.OneCycleLR", "max_lr": "${..lr}"},
    )
    _, scheduler = build_optimizer(one_cycle, params(), total_steps=10)
    assert scheduler.total_steps == 10


def test_an_unknown_schedule_kind_names_the_key():
    with pytest.raises(ValueError, match=r"optim.scheduler='step': choose one of constant"):
        lr_schedule("step", 10, 0)
