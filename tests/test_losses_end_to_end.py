"""Each loss trains end to end on the toy world through the real entry point."""

import pytest
from mlflow.tracking import MlflowClient

from prefopt.config.schema import ToyWorldConfig
from prefopt.train import train


@pytest.mark.parametrize(
    "overrides",
    # KTO on pairs split in two learns slowest (no pairwise difference cancels what the two
    # completions share): on this small test world it needs a second epoch to separate them.
    # SimPO's length-normalised reward does not separate this small world's pairs (validation
    # accuracy 0.45 after one epoch, 0.52 after three): it learns the default world (0.72, below).
    [["loss=ipo"], ["loss=kto", "trainer.max_epochs=2"], ["loss=kto", "data=toy_unpaired"]],
    ids=["ipo", "kto-paired", "kto-unpaired"],
)
def test_each_loss_learns_the_toy_preference(compose_config, overrides):
    assert_learns(train(compose_config(*overrides, "export=false", "eval.num_prompts=0")))


@pytest.mark.slow  # the full default toy world (about 25 s on 2 cores)
def test_simpo_learns_the_default_toy_world(compose_config, tmp_path):
    """The default world, not the small test world (about 25 s, building it included)."""
    defaults = [
        f"toy.{key}={value}" for key, value in ToyWorldConfig().__dict__.items() if key in SIZES
    ]
    cfg = compose_config(
        "loss=simpo",
        *defaults,
        f"toy.cache_dir={tmp_path / 'toy'}",
        "export=false",
        "eval.num_prompts=0",
    )
    assert_learns(train(cfg))  # 0.72 validation reward accuracy


SIZES = ("n_train_prompts", "n_val_prompts", "n_test_prompts", "sft_steps")


def assert_learns(result) -> None:
    metrics = result.metrics
    assert metrics["val/rewards/chosen"] > metrics["val/rewards/rejected"], metrics
    if "val/rewards/accuracies" in metrics:
        assert metrics["val/rewards/accuracies"] > 0.5, metrics


def test_simpo_never_loads_or_runs_a_reference(compose_config, loaded_checkpoints):
    result = train(
        compose_config("loss=simpo", "export=false", "trainer.max_steps=3", "eval.num_prompts=0")
    )
    assert len(loaded_checkpoints) == 1  # the policy only
    assert result.module.reference is None


def test_online_dpo_runs_its_reference_once_per_batch(compose_config):
    # evaluation and diagnostics would add reference forwards of their own: off here
    result_cfg = compose_config(
        "export=false",
        "reference.cache=false",
        "eval.num_prompts=0",
        "eval.diagnostics.enabled=false",
        "trainer.max_steps=4",
        "trainer.limit_val_batches=2",
        "trainer.val_check_interval=2",
    )
    result = train(result_cfg)
    client = MlflowClient(tracking_uri=result_cfg.logger.tracking_uri)
    validations = len(client.get_metric_history(result.run_id, "val/loss"))
    assert validations >= 1
    # one reference forward per training batch and per validation batch
    val_batches = min(
        2,
        -(-result.module.trainer.datamodule.stats["val_pairs"] // result_cfg.data.eval_batch_size),
    )
    assert result.module.reference.forward_calls == 4 + val_batches * validations
