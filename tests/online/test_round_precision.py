"""An online round's reference log-probs, computed once when the round is made
(`reference.cache=true`), are computed in the precision training runs in: at step 0 of a
bf16-mixed run they equal what the reference gives inside the training step."""

from prefopt.train import train

from .test_online_training import ONLINE

REWARDS = ("train/rewards/chosen", "train/rewards/rejected")


def test_a_round_s_reference_log_probs_are_computed_in_the_training_precision(
    compose_config, tmp_path
):
    rewards = {}
    for cache in ("true", "false"):
        cfg = compose_config(
            *ONLINE, "trainer.max_steps=1", "trainer.limit_val_batches=0", "eval.num_prompts=0",
            "eval.diagnostics.enabled=false", "checkpoint.enabled=false",
            "trainer.precision=bf16-mixed", f"reference.cache={cache}",
            f"output_dir={tmp_path / cache}", f"logger.tracking_uri=sqlite:///{tmp_path / cache}.db",
        )  # fmt: skip
        metrics = train(cfg).metrics
        rewards[cache] = [metrics[name] for name in REWARDS]
    # The same batch, the same autocast: the same numbers (an fp32 precompute is off by ~1e-4).
    assert rewards["true"] == rewards["false"]
