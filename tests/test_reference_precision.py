"""Reference log-probs are computed in the precision training runs in.

At step 0 the policy IS the reference, so every reward β·(log π − log π_ref) is 0: exactly
with the online reference (the same rows through the same kernels, in any precision), and up
to rounding with the cached one, which is filled under the Trainer's precision (`bf16-mixed`
autocasts the policy's forward) and keyed by it, but scores each pair in another batch. `assert_step0_rewards_are_zero` is the reusable check (the model-family
conformance tests run it on their own checkpoints).
"""

from types import SimpleNamespace

import pytest
import torch

from prefopt.reference import build as reference_build
from prefopt.train import train

from .conftest import tiny_llama

REWARDS = ("train/rewards/chosen", "train/rewards/rejected")
ROUNDING = {"32-true": 1e-6, "bf16-mixed": 1e-4}
"""What rounding leaves of a cached reward at step 0, where the cache scored a pair in another
batch than training does (another row width): fp32, β (0.1) × the rounding of a summed
log-prob of some tens of nats (~1e-5); bf16-mixed, SDPA's CPU kernel rounds a packed rejected
completion (whose visible keys are not a prefix of the row) differently by row width, and
bf16 makes that ~1e-3 of a summed log-prob (docs/models.md, "Precision"). A cache filled in
fp32 for a bf16-mixed run is off by ~1e-3."""


def step0_rewards(compose_config, precision: str, cache: bool, cache_dir, *overrides) -> dict:
    """The rewards of one training step: those of the step's forward, taken before the
    optimizer moves the policy away from the reference."""
    cfg = compose_config(
        "export=false",
        "checkpoint.enabled=false",
        "trainer.max_steps=1",
        "trainer.log_every_n_steps=1",
        "trainer.limit_val_batches=0",
        "eval.num_prompts=0",
        "eval.diagnostics.enabled=false",
        f"trainer.precision={precision}",
        f"reference.cache={str(cache).lower()}",
        f"reference.cache_dir={cache_dir}",
        *overrides,
    )
    metrics = train(cfg).metrics
    return {name: metrics[name] for name in REWARDS}


def assert_step0_rewards_are_zero(
    compose_config, checkpoint: str | None, precision: str, cache_dir
) -> None:
    """Step 0 of a run on `checkpoint` (a saved model folder; None = the toy world's model) in
    `precision`: the rewards with the online reference are exactly 0 (policy and reference
    score the same rows the same way: the packing verdict does not depend on autocast), and
    those with the cached one are 0 up to `ROUNDING`."""
    overrides = [f"model.path={checkpoint}"] if checkpoint else []
    cached = step0_rewards(compose_config, precision, True, cache_dir, *overrides)
    online = step0_rewards(compose_config, precision, False, cache_dir, *overrides)
    for name in REWARDS:
        assert online[name] == 0.0, (name, online[name])
        assert abs(cached[name]) <= ROUNDING[precision], (name, cached[name])


@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed"])
def test_step0_rewards_are_zero_cached_or_not(compose_config, tmp_path, precision):
    assert_step0_rewards_are_zero(compose_config, None, precision, tmp_path / "cache")


def test_the_cache_key_holds_the_precision(monkeypatch, tmp_path):
    """A bf16-mixed run does not read the table an fp32 run wrote (nor the reverse); `bf16`
    and `32` are Lightning's short names of bf16-mixed and 32-true."""
    checkpoint = tmp_path / "reference"
    tiny_llama().save_pretrained(checkpoint)
    paths = []
    monkeypatch.setattr(reference_build, "load_or_compute", lambda path, *a: paths.append(path))
    data = SimpleNamespace(paired=True, fingerprint="data", reference_loaders=dict)
    reference_cfg = SimpleNamespace(cache=True, cache_dir=str(tmp_path), sync_every_n_steps=0)
    model_cfg = SimpleNamespace(
        logits_chunk_size=0, lora=SimpleNamespace(enabled=False), reference_path=None,
        dtype="float32",
    )  # fmt: skip
    for precision in ("32-true", "bf16-mixed", "32", "bf16"):
        reference_build.build_reference(
            reference_cfg, model_cfg, reference_path=str(checkpoint), datamodule=data,
            load_model=lambda path: torch.nn.Identity(), precision=precision,
        )  # fmt: skip
    assert paths[0] != paths[1]
    assert paths[2:] == paths[:2]
