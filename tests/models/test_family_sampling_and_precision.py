"""Every family of the matrix samples purely and has zero rewards at step 0, in any precision.

- Sampling: prefopt's `generate` on the family's checkpoint, saved with an Instruct-like
  `generation_config` (penalties, banned and forced tokens...), draws what a hand-written
  ancestral sampler draws under the same seed (`tests/ancestral.py`).
- Step 0: with policy == reference every implicit reward is exactly 0, in fp32 and in
  bf16-mixed (the Trainer's precision plugin around the step, `reference/precision.py`), with
  the online reference and with the cached one (filled through `load_or_compute` under the
  same plugin): the reference's log-probs are the policy's own, bit for bit.
"""

from __future__ import annotations

import shutil

import pytest
import torch
from transformers import GenerationConfig

from prefopt.config.schema import ModelConfig, OptimConfig
from prefopt.evaluation.generation import generate
from prefopt.losses import DPOLoss
from prefopt.model.loading import load_causal_lm
from prefopt.model.packing import PairPacking
from prefopt.reference.base import SamplingModel
from prefopt.reference.cached import load_or_compute
from prefopt.reference.online import OnlineReference
from prefopt.reference.precision import precision_plugin
from prefopt.training.module import PreferenceModule

from ..ancestral import CHECKPOINT_SAMPLING, ancestral_samples

CPU = torch.device("cpu")
CHUNK = 3
PAD, BOS, EOS = 0, 1, 2
PROMPTS = [[BOS, 5, 6, 7], [BOS, 10], [BOS, 11, 12, 13, 14, 15], [BOS, 9, 9]] * 2
"""Mixed lengths (left padding in play), with repeats (the seeded stream differs per row)."""
MAX_NEW_TOKENS = 6
TEMPERATURE = 0.7


def load(path):
    return load_causal_lm(str(path), ModelConfig(path=str(path)))


def test_sampling_is_pure_whatever_the_checkpoints_generation_config(family, tmp_path):
    path = tmp_path / family.name
    shutil.copytree(family.path, path)
    saved = GenerationConfig.from_model_config(family.config)
    for key, value in CHECKPOINT_SAMPLING.items():
        setattr(saved, key, value)
    saved.save_pretrained(path)
    model = load(path)
    assert model.generation_config.repetition_penalty == 1.5  # the polluted config is there
    sampled = generate(
        model, PROMPTS, pad_token_id=PAD, stop_ids=[EOS], max_new_tokens=MAX_NEW_TOKENS,
        temperature=TEMPERATURE, seed=0, batch_size=len(PROMPTS), device=CPU,
    )  # fmt: skip
    expected = ancestral_samples(
        model, PROMPTS, 0, pad_token_id=PAD, eos_token_id=EOS,
        max_new_tokens=MAX_NEW_TOKENS, temperature=TEMPERATURE,
    )  # fmt: skip
    assert sampled == expected


class OneBatch:
    """A reference loader of one collated batch (`score_table` reads `dataset` for its size)."""

    def __init__(self, batch):
        self.batch = batch
        self.dataset = range(len(batch["example_index"]))

    def __iter__(self):
        return iter([self.batch])


@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed"])
def test_step0_rewards_are_zero_with_the_reference_online_or_cached(
    family, family_batch, precision, tmp_path
):
    batch = {**family_batch, "example_index": torch.arange(2)}
    plugin = precision_plugin(precision, CPU)
    # As `assemble.build_module`: one packing for policy and reference, the policy's verdict
    # decided at build (outside autocast), the reference's at its first batch (inside it).
    packing = PairPacking("auto")
    online = OnlineReference(load(family.path), CHUNK, packing)
    module = PreferenceModule(
        load(family.path), DPOLoss(beta=0.1), OptimConfig(lr=1e-3), online, CHUNK, packing
    )
    packing.supported(module.policy, CHUNK)
    cached = load_or_compute(
        tmp_path / "cache.pt",
        str(family.path),
        lambda: OnlineReference(load(family.path), CHUNK, PairPacking("auto")),
        lambda: {"train": OneBatch(batch)},
        SamplingModel(),
        precision,
    )
    module.train()
    for reference in (online, cached):
        module.reference = reference
        with plugin.forward_context():
            out = module.compute_loss(batch)
        for side in ("chosen", "rejected"):
            rewards = out.metrics[f"rewards/{side}"]
            assert rewards.abs().max().item() == 0.0, (type(reference).__name__, rewards)
