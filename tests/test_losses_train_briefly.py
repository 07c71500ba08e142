"""Every `loss=<name>` trains a few steps on the toy world through the real entry point and its
run ends FINISHED with a finite loss; options and mixes too. (The learning checks, which need
whole epochs, are in test_losses_end_to_end.py; TRL's paired loss types are trained in
test_paired_losses_end_to_end.py.)"""

import math

import pytest
from mlflow.tracking import MlflowClient

from prefopt.losses import LOSSES, TRL_LOSSES
from prefopt.train import train

BRIEF = ["export=false", "eval.num_prompts=0", "trainer.max_steps=3", "trainer.limit_val_batches=1"]


def train_briefly(compose_config, *overrides):
    cfg = compose_config(*BRIEF, "trainer.val_check_interval=3", *overrides)
    result = train(cfg)
    run = MlflowClient(tracking_uri=cfg.logger.tracking_uri).get_run(result.run_id)
    assert run.info.status == "FINISHED"
    assert math.isfinite(result.metrics["train/loss"]), result.metrics
    assert math.isfinite(result.metrics["val/loss"]), result.metrics
    return result


@pytest.mark.parametrize(
    "name",
    # dpo, ipo, simpo and kto learn in test_losses_end_to_end.py; mix trains below; TRL's
    # paired loss types train in test_paired_losses_end_to_end.py, with stricter checks;
    # on-policy losses (rloo) train only online: tests/online/test_rloo_online.py
    sorted(
        set(LOSSES)
        - {"dpo", "ipo", "simpo", "kto", "mix"}
        - {c.name for c in TRL_LOSSES}
        - {name for name, cls in LOSSES.items() if cls.on_policy}
    ),
)
def test_each_loss_trains_a_few_steps(compose_config, name):
    train_briefly(compose_config, f"loss={name}")


def test_dpo_with_every_option_trains_a_few_steps(compose_config):
    """LD-DPO needs the reference's shared-length sums: the reference runs online although
    `reference.cache` is on, and WPO's weights come from the policy's own distribution."""
    result = train_briefly(
        compose_config,
        "loss.ld_alpha=0.5",
        "loss.use_weighting=true",
        "loss.f_divergence=js",
    )
    assert result.module.reference.forward_calls > 0  # online, not the cache
    assert 0 < result.metrics["train/wpo_weight"] < 1


def test_a_mix_logs_each_term_under_its_name(compose_config):
    result = train_briefly(compose_config, "loss=mix", "loss.terms.dpo.beta=0.2")
    metrics = result.metrics
    for key in ("dpo/loss", "sft/loss", "sft/nll", "dpo/rewards/margins", "rewards/accuracies"):
        assert f"val/{key}" in metrics, sorted(metrics)
    assert metrics["val/loss"] == pytest.approx(
        metrics["val/dpo/loss"] + 0.2 * metrics["val/sft/loss"], rel=1e-5
    )
    assert metrics["val/rewards/margins"] == metrics["val/dpo/rewards/margins"]


def test_a_reference_free_mix_never_loads_a_reference(compose_config, loaded_checkpoints):
    result = train_briefly(compose_config, "loss=mix", "~loss.terms.dpo", "+loss.terms.orpo=1.0")
    assert len(loaded_checkpoints) == 1  # the policy only
    assert result.module.reference is None
