"""TRL's paired loss types train on the toy world through the real entry point: a few steps
each, the MLflow run FINISHED, every logged loss finite."""

import math

import pytest
from mlflow.tracking import MlflowClient

from prefopt.losses import TRL_LOSSES
from prefopt.train import train


@pytest.fixture(scope="module")
def shared_store(tmp_path_factory):
    """One MLflow store for the twelve runs: creating a SQLite store costs seconds each time."""
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"


@pytest.mark.parametrize("name", [cls.name for cls in TRL_LOSSES])
def test_each_trl_loss_trains_on_the_toy_world(compose_config, shared_store, name):
    cfg = compose_config(
        f"loss={name}",
        f"logger.tracking_uri={shared_store}",
        "export=false",
        "eval.num_prompts=0",
        "eval.diagnostics.enabled=false",
        # small batches and few steps: twelve runs must stay cheap in the fast suite
        "data.batch_size=4",
        "data.eval_batch_size=8",
        "trainer.max_steps=3",
        "trainer.log_every_n_steps=1",
        "trainer.val_check_interval=3",
        "trainer.limit_val_batches=1",
    )
    result = train(cfg)
    client = MlflowClient(tracking_uri=cfg.logger.tracking_uri)
    assert client.get_run(result.run_id).info.status == "FINISHED"
    losses = [m.value for m in client.get_metric_history(result.run_id, "train/loss")]
    assert len(losses) == 3 and all(math.isfinite(v) for v in losses), losses
    assert math.isfinite(result.metrics["val/loss"]), result.metrics
    if name == "bco_pair":  # the running baseline was logged and moved
        history = client.get_metric_history(result.run_id, "train/reward_baseline")
        assert len({m.value for m in history}) > 1
