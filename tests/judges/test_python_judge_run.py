"""`judge=python` through `prefopt.train.train`: a user's function judges the evaluation."""

import json
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from prefopt.toy import reward
from prefopt.train import train


def test_a_short_toy_run_is_judged_by_a_python_function(compose_config, reward_module, tmp_path):
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
    client = MlflowClient(cfg.logger.tracking_uri)
    run = client.get_run(result.run_id)
    assert run.data.metrics["eval/judge_failures"] == 0.0

    # The last evaluation's completions, as logged: scored here by the toy world's reward
    # directly, the win rate (ties count 1/2) and the ties are what the run logged.
    path = client.download_artifacts(result.run_id, "eval/generations.json", str(tmp_path))
    table = json.loads(Path(path).read_text())
    last = [dict(zip(table["columns"], row)) for row in table["data"]][-8:]
    policy = [reward(row["policy"]) for row in last]
    reference = [reward(row["reference"]) for row in last]
    assert [row["reward_policy"] for row in last] == pytest.approx(policy)
    assert [row["reward_ref"] for row in last] == pytest.approx(reference)
    wins = [1.0 if p > r else 0.5 if p == r else 0.0 for p, r in zip(policy, reference)]
    assert run.data.metrics["eval/win_rate_vs_ref"] == pytest.approx(sum(wins) / 8)
    assert run.data.metrics["eval/ties"] == sum(p == r for p, r in zip(policy, reference))
    assert run.data.params["judge"] == f"python:{reward_module}.toy_reward"
    assert run.data.params["judge/function"] == f"{reward_module}.toy_reward"
