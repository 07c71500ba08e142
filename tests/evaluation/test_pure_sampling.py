"""Evaluation and online rounds sample from π itself, whatever the checkpoint's own
`generation_config` says (an Instruct model ships a repetition penalty, `no_repeat_ngram_size`,
`min_p`, suppressed tokens...): `eval/kl_seq` and `round/kl` are unbiased only for samples of π."""

import pytest
import torch
from transformers import AutoModelForCausalLM

from prefopt.evaluation.generation import generate

from ..ancestral import CHECKPOINT_SAMPLING
from ..ancestral import ancestral_samples as hand_written_samples
from ..conftest import tiny_llama

CPU = torch.device("cpu")
PAD, BOS, EOS = 0, 1, 2
PROMPTS = [[BOS, 5, 6, 7], [BOS, 10], [BOS, 11, 12, 13, 14, 15], [BOS, 9, 9]] * 8
"""32 prompts of mixed lengths (left padding in play), with repeats (the seeded stream differs
per row)."""
MAX_NEW_TOKENS = 10
TEMPERATURE = 0.7


@pytest.fixture(scope="module")
def instruct_like_checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("instruct-like")
    model = tiny_llama(seed=5)
    for key, value in CHECKPOINT_SAMPLING.items():
        setattr(model.generation_config, key, value)
    model.save_pretrained(path)
    return path


def ancestral_samples(model, prompts, seed: int) -> list[list[int]]:
    return hand_written_samples(
        model, prompts, seed, pad_token_id=PAD, eos_token_id=EOS,
        max_new_tokens=MAX_NEW_TOKENS, temperature=TEMPERATURE,
    )  # fmt: skip


def test_samples_are_pure_ancestral_samples_whatever_the_checkpoint_generation_config(
    instruct_like_checkpoint,
):
    model = AutoModelForCausalLM.from_pretrained(instruct_like_checkpoint)
    assert model.generation_config.repetition_penalty == 1.5  # the checkpoint's config is there
    for seed in (0, 1):
        sampled = generate(
            model,
            PROMPTS,
            pad_token_id=PAD,
            stop_ids=[EOS],
            max_new_tokens=MAX_NEW_TOKENS,
            temperature=TEMPERATURE,
            seed=seed,
            batch_size=len(PROMPTS),
            device=CPU,
        )
        assert sampled == ancestral_samples(model, PROMPTS, seed)
    # ... and left in place for anything else that reads it.
    assert model.generation_config.repetition_penalty == 1.5
    assert model.generation_config.suppress_tokens == [3, 4]


def test_greedy_ignores_the_checkpoint_generation_config(instruct_like_checkpoint):
    """Temperature 0 is the argmax at every step: no penalty, no banned or forced token."""
    model = AutoModelForCausalLM.from_pretrained(instruct_like_checkpoint).eval()
    prompts = PROMPTS[:4]
    greedy = generate(
        model, prompts, pad_token_id=PAD, stop_ids=[EOS], max_new_tokens=MAX_NEW_TOKENS,
        temperature=0.0, seed=0, batch_size=4, device=CPU,
    )  # fmt: skip
    for prompt, completion in zip(prompts, greedy):
        ids = list(prompt)
        for _ in range(MAX_NEW_TOKENS):
            ids.append(int(model(torch.tensor([ids])).logits[0, -1].argmax()))
            if ids[-1] == EOS:
                break
        assert completion == ids[len(prompt) :]
