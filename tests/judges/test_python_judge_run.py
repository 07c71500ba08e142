"""`judge=python` through `prefopt.train.train`: a user's function judges the evaluation."""

from mlflow.tracking import MlflowClient

from prefopt.train import train


def test_a_short_toy_run_is_judged_by_a_python_function(compose_config, reward_module):
    """The function returns the toy world's reward, so the win rate is the ground truth's."""
    cfg = compose_config(
        "judge=python",
        f"judge.function={reward_module}.toy_reward",
        "export=false",
        "trainer.max_steps=4",
        "trainer.val_check_interval=4",
        "trainer.limit_val_batches=1",
        "eval.num_prompts=8",
        "eval.max_new_tokens=16",
    )
    result = train(cfg)
    run = MlflowClient(cfg.logger.tracking_uri).get_run(result.run_id)
    assert 0.0 <= run.data.metrics["eval/win_rate_vs_ref"] <= 1.0
    assert run.data.metrics["eval/judge_failures"] == 0.0
    assert 0 <= run.data.metrics["eval/ties"] <= 8
    assert run.data.params["judge"] == f"python:{reward_module}.toy_reward"
    assert run.data.params["judge/function"] == f"{reward_module}.toy_reward"
