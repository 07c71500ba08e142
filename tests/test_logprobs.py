"""Completion log-probs: shifted by one, prompt and padding masked, summed per sequence."""

import pytest
import torch

from prefopt.model.logprobs import completion_logps

from .numerics import assert_close_f32

pytestmark = pytest.mark.numerics


def test_completion_logps_match_a_position_by_position_computation(tiny_model_factory, batch):
    model = tiny_model_factory().eval()
    got = completion_logps(model, batch)

    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    expected_sums, expected_counts = [], []
    for row in range(batch["input_ids"].shape[0]):
        total, count = 0.0, 0
        for t in range(1, batch["input_ids"].shape[1]):
            if batch["completion_mask"][row, t]:
                token = batch["input_ids"][row, t]
                total += torch.log_softmax(logits[row, t - 1].double(), -1)[token].item()
                count += 1
        expected_sums.append(total)
        expected_counts.append(count)

    assert_close_f32(got.summed, expected_sums, tokens=got.token_counts)
    assert got.token_counts.tolist() == [3, 3, 2, 5]


def test_padding_and_prompt_do_not_change_the_completion_logps(tiny_model_factory, batch):
    """Extra right padding (masked out) leaves the sums unchanged."""
    model = tiny_model_factory().eval()
    before = completion_logps(model, batch).summed
    padded = {k: torch.nn.functional.pad(v, (0, 3)) for k, v in batch.items()}
    after = completion_logps(model, padded).summed
    assert_close_f32(after, before, tokens=5)  # hand_batch: at most 5 completion tokens


@pytest.mark.parametrize("chunk_size", [1, 3, 1024])
def test_chunked_logps_and_gradients_equal_the_full_logits_path(
    tiny_model_factory, batch, chunk_size
):
    """Chunked (only completion positions, recomputed in backward) vs full [N, T, V] logits."""
    model = tiny_model_factory()
    full = completion_logps(model, batch, chunk_size=None)
    full_grads = torch.autograd.grad(full.summed.sum(), list(model.parameters()))
    chunked = completion_logps(model, batch, chunk_size=chunk_size)
    chunked_grads = torch.autograd.grad(chunked.summed.sum(), list(model.parameters()))

    assert_close_f32(chunked.summed, full.summed, tokens=full.token_counts)
    assert chunked.token_counts.tolist() == full.token_counts.tolist()
    for a, b in zip(chunked_grads, full_grads, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_models_with_logit_softcapping_take_the_full_path(tiny_model_factory, batch):
    model = tiny_model_factory()
    model.config.final_logit_softcapping = 30.0  # as in Gemma 2: logits are not lm_head(h)
    from prefopt.model.logprobs import _split_model

    assert _split_model(model) is None
    assert _split_model(tiny_model_factory()) is not None
