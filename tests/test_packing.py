"""Packed pairs (shared prompts, padding-free rows) score exactly as one padded row per sequence."""

import logging
import random
from types import SimpleNamespace

import pytest
import torch
from torch.utils.data import DataLoader
from transformers import BloomConfig, BloomForCausalLM

from prefopt.config.schema import ModelConfig, OptimConfig, ReferenceConfig
from prefopt.data.collate import collate_pairs
from prefopt.data.packing import pack_pairs
from prefopt.errors import PrefoptError
from prefopt.losses import DPOLoss, KTOLoss
from prefopt.model.loading import check_model_config
from prefopt.model.logprobs import completion_logps
from prefopt.model.packing import PairPacking, prefix_sharing_mode
from prefopt.reference import build_reference
from prefopt.reference.online import OnlineReference
from prefopt.training.module import PreferenceModule

from .conftest import tiny_llama
from .numerics import assert_close_f32

MODES = {  # (shared_prefix, padding_free)
    "shared": (True, False),
    "padding_free": (False, True),
    "both": (True, True),
}


def random_pairs(n_pairs: int, seed: int = 0, vocab_size: int = 32) -> list[dict]:
    """Ragged pairs; every third one's prompts differ (a token merged across the boundary),
    every fourth one's prompt lengths differ (truncation)."""
    rng = random.Random(seed)

    def tokens(n):
        return [rng.randrange(3, vocab_size) for _ in range(n)]

    pairs = []
    for i in range(n_pairs):
        prompt = [1, *tokens(rng.randint(1, 9))]
        chosen, rejected = tokens(rng.randint(1, 6)), tokens(rng.randint(1, 6))
        rejected_prompt = list(prompt)
        if i % 3 == 1:
            rejected_prompt[-1] = 3 if prompt[-1] != 3 else 4
        if i % 4 == 3:
            rejected_prompt = rejected_prompt[:-1] or [1]
        pairs.append(
            {
                "chosen_input_ids": prompt + chosen,
                "chosen_prompt_length": len(prompt),
                "rejected_input_ids": rejected_prompt + rejected,
                "rejected_prompt_length": len(rejected_prompt),
                "index": i,
            }
        )
    return pairs


def random_batch(n_pairs: int, seed: int = 0) -> dict[str, torch.Tensor]:
    return collate_pairs(random_pairs(n_pairs, seed), pad_token_id=0)


@pytest.mark.numerics
@pytest.mark.parametrize("chunk_size", [None, 3])
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("n_pairs", [1, 7])
def test_packed_logps_and_gradients_equal_the_standard_path(n_pairs, mode, chunk_size):
    model = tiny_llama()
    batch = random_batch(n_pairs, seed=n_pairs)
    standard = completion_logps(model, batch, chunk_size)
    standard_grads = torch.autograd.grad(standard.summed.sum(), list(model.parameters()))
    packed = completion_logps(model, pack_pairs(batch, *MODES[mode]), chunk_size)
    packed_grads = torch.autograd.grad(packed.summed.sum(), list(model.parameters()))

    assert_close_f32(packed.summed, standard.summed, tokens=standard.token_counts)
    assert packed.token_counts.tolist() == standard.token_counts.tolist()
    for a, b in zip(packed_grads, standard_grads, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


@pytest.mark.numerics
def test_eager_attention_takes_the_additive_form_of_the_mask():
    model = tiny_llama()
    model.config._attn_implementation = "eager"
    batch = random_batch(5)
    expected = completion_logps(model, batch, None)
    got = completion_logps(model, pack_pairs(batch, True, True), None).summed
    assert_close_f32(got, expected.summed, tokens=expected.token_counts)


def test_a_shared_pair_is_one_sequence_whose_rejected_side_cannot_see_the_chosen_one():
    pair = {
        "chosen_input_ids": [1, 5, 6, 7, 8],  # prompt [1, 5, 6], chosen [7, 8]
        "chosen_prompt_length": 3,
        "rejected_input_ids": [1, 5, 6, 9, 10, 11],  # rejected [9, 10, 11]
        "rejected_prompt_length": 3,
    }
    packed = pack_pairs(collate_pairs([pair], pad_token_id=0), shared_prefix=True)
    assert packed["input_ids"].tolist() == [[1, 5, 6, 7, 8, 9, 10, 11]]
    assert packed["position_ids"].tolist() == [[0, 1, 2, 3, 4, 3, 4, 5]]
    mask = packed["attention_mask"][0, 0]
    assert mask[5].tolist() == [True, True, True, False, False, True, False, False]
    assert mask[4].tolist() == [True] * 5 + [False] * 3
    # Chosen [7, 8] from positions 2, 3; rejected 9 from the LAST PROMPT position (2), then
    # 10, 11 from the rejected tokens at packed positions 5, 6.
    assert packed["score_positions"].tolist() == [2, 3, 2, 5, 6]
    assert packed["score_labels"].tolist() == [7, 8, 9, 10, 11]
    assert packed["score_sequences"].tolist() == [0, 0, 1, 1, 1]


def test_padding_free_rows_are_no_longer_than_a_sequence_and_keep_sequences_apart():
    batch = random_batch(6)
    packed = pack_pairs(batch, shared_prefix=False, padding_free=True)
    lengths = batch["attention_mask"].sum(-1)
    n_rows, width = packed["input_ids"].shape
    assert width == int(lengths.max()) and n_rows < 12  # short sequences share rows
    assert packed["input_ids"].numel() < batch["input_ids"].numel()
    real = packed["input_ids"] != 0  # packed padding is id 0; random tokens are >= 1
    starts = (packed["position_ids"] == 0) & real
    assert int(starts.sum()) == 12  # every sequence restarts its positions
    for row, start in starts.nonzero().tolist():
        assert not packed["attention_mask"][row, 0, start, :start].any()  # nothing before it
    assert int(real.sum()) == int(lengths.sum())


def test_prefix_sharing_runs_fewer_tokens_through_the_model():
    batch = random_batch(8)
    standard = batch["input_ids"].numel()
    shared = pack_pairs(batch, shared_prefix=True, padding_free=True)["input_ids"].numel()
    unshared = pack_pairs(batch, shared_prefix=False, padding_free=True)["input_ids"].numel()
    assert shared < unshared < standard


def tiny_bloom() -> BloomForCausalLM:
    """ALiBi computed from a 2-D padding mask: this family cannot take a 4-D one."""
    torch.manual_seed(0)
    config = BloomConfig(vocab_size=32, hidden_size=16, n_layer=1, n_head=2)
    return BloomForCausalLM(config)


def test_a_model_that_cannot_take_a_4d_mask_falls_back_with_one_info_line(caplog):
    model = tiny_bloom()
    batch = random_batch(3)
    packing = PairPacking("auto", padding_free=True)
    with caplog.at_level(logging.INFO, logger="prefopt.packing"):
        got = packing.logps(model, batch, 3)
        packing.logps(model, batch, 3)  # decided once per model
    assert [r.getMessage() for r in caplog.records] == [
        "prefix sharing: BloomForCausalLM cannot take a 4-D attention mask; "
        "scoring pairs as separate sequences"
    ]
    expected = completion_logps(model, batch, 3)
    torch.testing.assert_close(got.summed, expected.summed, atol=0, rtol=0)
    assert model.training  # the probe ran in eval mode and restored the mode


def test_prefix_sharing_true_with_a_model_that_cannot_is_a_one_line_error():
    with pytest.raises(PrefoptError, match=r"model.prefix_sharing=true: BloomForCausalLM .*auto"):
        PairPacking("true").logps(tiny_bloom(), random_batch(2), None)


def test_a_model_that_ignores_position_ids_is_caught_by_the_probe(caplog):
    model = tiny_llama()
    forward = model.model.forward
    model.model.forward = lambda *args, position_ids=None, **kwargs: forward(*args, **kwargs)
    with caplog.at_level(logging.INFO, logger="prefopt.packing"):
        assert not PairPacking("auto").supported(model, None)
    assert "LlamaForCausalLM scores differently" in caplog.text
    assert PairPacking("auto").supported(tiny_llama(), None)


def test_a_model_with_a_sliding_window_is_not_packed(caplog):
    """A custom 4-D mask would replace the window the model's own mask applies."""
    from transformers import MistralConfig, MistralForCausalLM

    config = MistralConfig(
        vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=2, sliding_window=4,
    )  # fmt: skip
    model = MistralForCausalLM(config)
    with caplog.at_level(logging.INFO, logger="prefopt.packing"):
        assert not PairPacking("auto").supported(model, None)
    assert "MistralForCausalLM has a sliding attention window (4 tokens)" in caplog.text
    config.sliding_window = None
    assert PairPacking("auto").supported(MistralForCausalLM(config), None)


def test_the_packing_verdict_does_not_depend_on_autocast():
    """The verdict is kept per model, and the policy's is asked for at build time (fp32) while
    an online reference's first comes inside a bf16-mixed step: the probe runs in the
    weights' dtype either way, so both are packed and score the same rows at step 0 (asked
    under autocast, the probe used to see bf16's rounding and refuse to pack the reference)."""
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert PairPacking("auto").supported(tiny_llama(), None)
        assert PairPacking("auto").supported(tiny_llama(), 3)


def make_module(packing, loss=None, reference_seed=1):
    loss = loss or DPOLoss(beta=0.1)
    reference = build_reference(  # an online reference, as with reference.cache=false
        ReferenceConfig(cache=False),
        ModelConfig(path="tiny", logits_chunk_size=4),
        reference_path="tiny",
        datamodule=SimpleNamespace(paired=loss.paired),
        load_model=lambda path: tiny_llama(seed=reference_seed),
        packing=packing,
    )
    return PreferenceModule(
        tiny_llama(seed=0), loss, OptimConfig(lr=1e-2), reference, chunk_size=4, packing=packing
    )


@pytest.mark.numerics
def test_the_loss_and_its_gradients_with_packing_equal_those_without():
    batch = random_batch(5)
    plain, packed = make_module(None), make_module(PairPacking("true", padding_free=True))
    out_plain, out_packed = plain.compute_loss(batch), packed.compute_loss(batch)
    assert_close_f32(out_packed.loss, out_plain.loss)
    for name in ("rewards/chosen", "rewards/rejected"):
        assert_close_f32(out_packed.metrics[name], out_plain.metrics[name], msg=name)
    out_plain.loss.backward()
    out_packed.loss.backward()
    for a, b in zip(packed.policy.parameters(), plain.policy.parameters(), strict=True):
        torch.testing.assert_close(a.grad, b.grad, atol=1e-5, rtol=1e-5)
    assert packed.packing.supported(packed.policy, 4)
    assert packed.packing.supported(packed.reference.model, 4)


def test_kto_keeps_its_rows_as_they_are():
    module = make_module(PairPacking("true", padding_free=True), loss=KTOLoss())
    assert not module.packing.requested
    assert not module.reference.packing.requested


@pytest.mark.numerics
def test_the_precomputed_reference_table_is_the_same_packed():
    pairs = random_pairs(9, seed=3)
    loader = DataLoader(pairs, batch_size=4, collate_fn=lambda e: collate_pairs(e, 0))
    reference = tiny_llama(seed=2)
    plain = OnlineReference(reference, 4).logps_table({"train": loader}, torch.device("cpu"))
    packed = OnlineReference(reference, 4, PairPacking("auto", padding_free=True)).logps_table(
        {"train": loader}, torch.device("cpu")
    )
    assert_close_f32(packed["train"], plain["train"], tokens=6)  # random_pairs: <= 6 per side


def test_prefix_sharing_config_values():
    assert prefix_sharing_mode(True) == "true"  # Hydra reads `true` as a bool
    assert prefix_sharing_mode("Auto") == "auto"
    with pytest.raises(PrefoptError, match="model.prefix_sharing='sometimes': choose one of"):
        check_model_config(ModelConfig(path="x", prefix_sharing="sometimes"), "x")


def test_training_with_packing_logs_the_losses_of_the_standard_path(compose_config, tmp_path):
    """End to end on the toy world (online reference): same per-step losses either way."""
    from mlflow.tracking import MlflowClient

    from prefopt.train import train

    common = [
        "export=false",
        "trainer.max_steps=4",
        "trainer.log_every_n_steps=1",
        "trainer.limit_val_batches=1",
        "reference.cache=false",
        "checkpoint.enabled=false",
    ]
    runs = {
        name: train(compose_config(*common, *overrides, f"logger.experiment_name={name}"))
        for name, overrides in {
            "standard": ["model.prefix_sharing=false"],
            "packed": ["model.prefix_sharing=true", "data.packing=true"],
        }.items()
    }
    assert runs["packed"].module.packing.supported(runs["packed"].module.policy, None)
    client = MlflowClient(tracking_uri=compose_config().logger.tracking_uri)
    standard, packed = (
        torch.tensor([m.value for m in client.get_metric_history(run.run_id, "train/loss")])
        for run in runs.values()
    )
    assert len(standard) == 4
    torch.testing.assert_close(packed, standard, atol=1e-5, rtol=0)
