"""Batched left-padded generation, seeding, scoring and decoding of completions."""

import torch

from prefopt.evaluation.generation import (
    cut_at_eos,
    decode_completions,
    generate,
    left_pad,
    score,
    stop_token_ids,
)

from ..conftest import tiny_llama

CPU = torch.device("cpu")
PROMPTS = [[1, 5, 6, 7, 8, 9], [1, 10], [1, 11, 12, 13]]


def _generate(model, prompts, **overrides):
    kwargs = dict(
        pad_token_id=0,
        stop_ids=[2],
        max_new_tokens=6,
        temperature=1.0,
        seed=0,
        batch_size=8,
        device=CPU,
    )
    return generate(model, prompts, **{**kwargs, **overrides})


def test_left_pad_puts_every_prompt_against_the_right_edge():
    batch = left_pad([[1, 5, 6], [1]], pad_token_id=0)
    assert batch["input_ids"].tolist() == [[1, 5, 6], [0, 0, 1]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [0, 0, 1]]


def test_cut_at_eos_keeps_the_first_stop_token_and_drops_what_follows():
    assert cut_at_eos([7, 8, 2, 0, 0], stop_ids=[2]) == [7, 8, 2]
    assert cut_at_eos([7, 2, 2, 2], stop_ids=[2]) == [7, 2]
    assert cut_at_eos([7, 8, 9], stop_ids=[2]) == [7, 8, 9]  # ran out of budget
    assert cut_at_eos([7, 9, 8, 2], stop_ids=[2, 9]) == [7, 9]  # a chat model's end of turn


def test_stop_tokens_join_the_tokenizer_eos_and_the_model_generation_config(tokenizer):
    model = tiny_llama()
    model.generation_config.eos_token_id = [2, 30]
    assert stop_token_ids(tokenizer, model) == [2, 30]
    model.generation_config.eos_token_id = None
    assert stop_token_ids(tokenizer, model) == [2]


def test_batched_greedy_generation_equals_one_prompt_at_a_time():
    """Left padding must not change what a prompt gets: same ids as unpadded generation."""
    model = tiny_llama(seed=3)
    batched = _generate(model, PROMPTS, temperature=0.0)
    alone = [_generate(model, [p], temperature=0.0)[0] for p in PROMPTS]
    assert batched == alone
    assert all(0 < len(c) <= 6 for c in batched)


def test_sampling_is_seeded_and_leaves_the_training_rng_alone():
    model = tiny_llama(seed=3)
    torch.manual_seed(123)
    state = torch.get_rng_state()
    first = _generate(model, PROMPTS * 4, max_new_tokens=12)
    assert torch.equal(torch.get_rng_state(), state)
    assert _generate(model, PROMPTS * 4, max_new_tokens=12) == first
    assert _generate(model, PROMPTS * 4, max_new_tokens=12, seed=1) != first
    assert model.training  # restored (tiny_llama starts in train mode)


def test_score_is_the_summed_log_prob_of_the_completion_tokens():
    """log p(completion | prompt) from the full logits by hand: token t is predicted at t−1."""
    model = tiny_llama(seed=4).eval()
    prompts, completions = [[1, 5, 6], [1, 9]], [[7, 8, 2], [10, 11, 12, 2]]
    values = score(model, prompts, completions, pad_token_id=0, batch_size=1, device=CPU)
    for row, (p, c) in enumerate(zip(prompts, completions)):
        ids = torch.tensor([p + c])
        logps = model(input_ids=ids).logits.log_softmax(-1)[0]
        expected = sum(logps[len(p) + i - 1, token] for i, token in enumerate(c))
        assert abs(values[row].item() - expected.item()) < 1e-4
    batched = score(model, prompts, completions, pad_token_id=0, batch_size=8, device=CPU)
    assert torch.allclose(batched, values, atol=1e-5)


def test_decoded_completions_are_the_text_after_the_prompt(tokenizer):
    prompt = tokenizer("review of the phone :").input_ids
    completion = tokenizer(" it is great .", add_special_tokens=False).input_ids
    completion.append(tokenizer.eos_token_id)
    assert decode_completions(tokenizer, [prompt], [completion]) == [" it is great ."]
