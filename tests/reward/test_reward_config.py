"""`task=reward` composes, and what it cannot do is one line before anything loads."""

import pytest

from prefopt.train import check_config, train

from ..conftest import user_error


def test_the_reward_task_composes_with_its_learning_rate_and_objective(compose_config):
    cfg = compose_config("task=reward")
    assert cfg.task.kind == "reward" and cfg.objective == "val/accuracy"
    assert cfg.optim.lr == cfg.model.reward_lr == 1e-3  # the toy model's; others: model.lr
    assert cfg.trainer.max_epochs == 6
    assert check_config(cfg).kind == "reward"
    assert check_config(compose_config()).kind == "offline"
    assert check_config(compose_config("loop=online")).kind == "online"
    assert compose_config("task=reward", "model=qwen2.5-0.5b").optim.lr == 5e-7  # its model.lr


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            ["loop=online"],
            "task=reward with loop=online: a reward model trains on the data's pairs",
        ),
        (["data=toy_unpaired"], "task=reward trains on pairs (prompt, chosen, rejected)"),
        (["model.lora.enabled=true"], "task=reward trains the whole classifier"),
        (
            ["task.center_rewards_coefficient=-1"],
            "task.center_rewards_coefficient=-1.0: it must be >= 0",
        ),
        (["task.calibration_bins=0"], "task.calibration_bins=0: it must be >= 1"),
    ],
)
def test_what_a_reward_run_cannot_do_is_one_line_at_start(
    compose_config, capsys, overrides, message
):
    line = user_error(capsys, train, compose_config("task=reward", *overrides))
    assert message in line, line
