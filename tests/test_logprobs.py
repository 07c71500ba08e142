"""Completion log-probs: shifted by one, prompt and padding masked, summed per sequence.

Every model family's own logits are checked in `tests/models/` (the family matrix)."""

import logging

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


def test_logits_beyond_the_output_layer_take_the_full_path_in_one_line(
    tiny_model_factory, batch, caplog
):
    """A model whose logits are more than lm_head(hidden) (here scaled by 4 after the head, as
    Granite divides by `logits_scaling` and Cohere multiplies by `logit_scale`) is scored
    through its own logits; the probe that finds it out runs once per model, says so in one
    line, and leaves the model's mode and the random state as they were."""
    model = tiny_model_factory()  # train mode, as the policy

    def scaled(module, args, output):
        output.logits = output.logits * 4
        return output

    model.register_forward_hook(scaled)
    rng_before = torch.get_rng_state()
    with caplog.at_level(logging.INFO, logger="prefopt.models"):
        first = completion_logps(model, batch, chunk_size=2).summed
        second = completion_logps(model, batch, chunk_size=2).summed
    assert model.training
    assert torch.equal(torch.get_rng_state(), rng_before)
    assert sum("not its output layer" in r.getMessage() for r in caplog.records) == 1

    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    logps = torch.log_softmax(logits[:, :-1], -1)
    picked = logps.gather(-1, batch["input_ids"][:, 1:, None]).squeeze(-1)
    expected = (picked * batch["completion_mask"][:, 1:]).sum(-1)
    torch.testing.assert_close(first, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(second, expected, rtol=1e-5, atol=1e-5)


def test_models_whose_logits_are_their_output_layer_take_the_chunked_path(tiny_model_factory):
    from prefopt.model.logprobs import _split_model

    model = tiny_model_factory()
    assert _split_model(model) == (model.model, model.lm_head)
