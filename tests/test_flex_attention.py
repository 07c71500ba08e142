"""`model.attention=flex`: packed and shared-prompt rows under a block-sparse FlexAttention mask
score exactly as one padded row per sequence under SDPA, sliding windows included."""

import copy
import logging

import pytest
import torch
from torch.nn.attention.flex_attention import BlockMask
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
)

import prefopt.model.attention as attention
from prefopt.config.schema import ModelConfig
from prefopt.data.collate import collate_pairs
from prefopt.data.packing import layout_pairs
from prefopt.model.attention import FLEX, implementation, resolve_attention, sliding_window
from prefopt.model.loading import load_causal_lm
from prefopt.model.logprobs import completion_logps
from prefopt.model.packing import PairPacking

from .numerics import assert_close_f32
from .test_packing import random_pairs

WINDOW = 4
SHAPE = dict(
    vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
    num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
)  # fmt: skip
FAMILIES = {
    "llama": lambda: LlamaForCausalLM(LlamaConfig(**SHAPE)),
    # Layer 0 full attention, layer 1 a window: the model takes one mask per layer type.
    "qwen2_window": lambda: Qwen2ForCausalLM(
        Qwen2Config(**SHAPE, use_sliding_window=True, sliding_window=WINDOW, max_window_layers=1)
    ),
    "mistral_window": lambda: MistralForCausalLM(MistralConfig(**SHAPE, sliding_window=WINDOW)),
}
LAYOUTS = {  # PairPacking arguments: prefix sharing, padding-free, row tokens
    "shared": ("true", False, None),
    "padding_free": ("false", True, None),
    "both": ("true", True, None),
    "long_rows": ("true", True, 96),
}


def sdpa_and_flex(family: str, seed: int = 0):
    """The same random weights twice: under SDPA (the standard path) and under flex."""
    torch.manual_seed(seed)
    standard = FAMILIES[family]()
    standard.set_attn_implementation("sdpa")
    flex = copy.deepcopy(standard)
    flex.set_attn_implementation(implementation("flex"))
    return standard, flex


def ragged_batch(n_pairs: int = 6, seed: int = 0) -> dict[str, torch.Tensor]:
    """Ragged pairs (some with differing prompts), longer than the window."""
    pairs = random_pairs(n_pairs, seed)
    for i, pair in enumerate(pairs):  # 8-20 more completion tokens: rows well past WINDOW
        extra = [3 + (7 * i + k) % 29 for k in range(8 + 2 * i)]
        pair["chosen_input_ids"] = pair["chosen_input_ids"] + extra
        pair["rejected_input_ids"] = pair["rejected_input_ids"] + extra[::-1][: 6 + i]
    return collate_pairs(pairs, pad_token_id=0)


def masks_seen(model) -> list:
    """Records the attention mask every forward of `model`'s decoder receives."""
    seen = []
    forward = model.model.forward

    def spy(*args, attention_mask=None, **kwargs):
        seen.append(attention_mask)
        return forward(*args, attention_mask=attention_mask, **kwargs)

    model.model.forward = spy
    return seen


@pytest.mark.numerics
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("family", FAMILIES)
def test_flex_packed_rows_give_the_logps_and_gradients_of_padded_rows(family, layout):
    standard, flex = sdpa_and_flex(family)
    batch = ragged_batch()
    if family != "llama":
        assert sliding_window(flex)[0] == WINDOW < batch["attention_mask"].sum(-1).max()
    seen = masks_seen(flex)
    packing = PairPacking(*LAYOUTS[layout])

    expected = completion_logps(standard, batch, 8)
    expected_grads = torch.autograd.grad(expected.summed.sum(), list(standard.parameters()))
    got = packing.logps(flex, batch, 8)
    got_grads = torch.autograd.grad(got.summed.sum(), list(flex.parameters()))

    assert packing.supported(flex, 8)
    assert_close_f32(got.summed, expected.summed, tokens=expected.token_counts)
    for a, b in zip(got_grads, expected_grads, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    # The scored batch (after the probe's) went in with a block mask, never a dense tensor.
    last = seen[-1]
    masks = list(last.values()) if isinstance(last, dict) else [last]
    assert masks and all(isinstance(mask, BlockMask) for mask in masks)
    if family == "qwen2_window":
        assert set(last) == {"full_attention", "sliding_attention"}


def test_a_mask_first_built_for_the_reference_under_inference_mode_serves_the_policy_backward():
    """`reference.cache=false` (LD-DPO, TR-DPO...): the reference scores each batch first, under
    inference_mode, and the policy reuses the batch's masks. FlexAttention saves them for its
    backward (on a GPU), which refuses inference tensors; on CPU the same happens to any op
    that saves them, reproduced here with a multiplication."""
    from prefopt.data.packing import collate_packed_pairs

    _, policy = sdpa_and_flex("llama")
    reference = copy.deepcopy(policy).eval().requires_grad_(False)
    packing = PairPacking(*LAYOUTS["both"])
    seen = masks_seen(policy)
    for seed in (0, 1):  # the first step's probes build their own masks; the second reuses
        batch = collate_packed_pairs(random_pairs(6, seed), 0, True, True)
        with torch.inference_mode():
            packing.logps(reference, batch, 8)
        packing.logps(policy, batch, 8).summed.sum().backward()
    mask = seen[-1]
    tensors = [mask.kv_num_blocks, mask.kv_indices, mask.full_kv_num_blocks, mask.q_indices]
    tensors += [m for row in mask.prefopt_segments.rows for _, m, _ in row if m is not None]
    assert not any(t.is_inference() for t in tensors)
    weight = torch.ones((), requires_grad=True)
    (weight * mask.kv_num_blocks).sum().backward()  # saved for backward: no inference tensor


@pytest.mark.numerics
def test_the_block_mask_keeps_the_window():
    """Without its window the mask scores differently: the test above would see a lost window."""
    _, flex = sdpa_and_flex("mistral_window")
    batch = ragged_batch()
    layout = layout_pairs(batch, True, True)
    inputs = {"input_ids": layout["input_ids"], "position_ids": layout["position_ids"]}
    positions = layout["position_ids"]
    with torch.no_grad():
        windowed = flex(
            **inputs,
            attention_mask=attention.block_mask(
                layout["groups"], layout["branches"], positions, window=WINDOW
            ),
        ).logits
        unwindowed = flex(
            **inputs,
            attention_mask=attention.block_mask(layout["groups"], layout["branches"], positions),
        ).logits
    assert (windowed - unwindowed).abs().max() > 1e-3


def test_the_block_mask_skips_blocks_nothing_attends_to():
    """Two 300-token sequences in one 600-token row: the second's queries list no block of the
    first (apart from the one block they share), and no [T, T] tensor is built."""
    groups = torch.tensor([[0] * 300 + [1] * 300])
    mask = attention.block_mask(groups, torch.zeros_like(groups), torch.arange(600)[None] % 300)
    counts = (mask.kv_num_blocks + mask.full_kv_num_blocks)[0, 0].tolist()
    assert counts == [1, 2, 3, 2, 3]  # causal within each sequence, blocks of 128
    assert mask.shape == (1, 1, 600, 600)


@pytest.mark.numerics
def test_packing_row_tokens_fills_fewer_slots_and_scores_the_same():
    _, flex = sdpa_and_flex("llama")
    batch = ragged_batch(8, seed=2)
    default, long_rows = PairPacking("true", True), PairPacking("true", True, row_tokens=120)
    default_layout, long_layout = default.layout(batch, flex), long_rows.layout(batch, flex)
    assert long_layout["input_ids"].numel() < default_layout["input_ids"].numel()
    assert long_layout["input_ids"].shape[0] < default_layout["input_ids"].shape[0]
    assert long_layout["input_ids"].shape[1] <= 120  # the longest filled row
    with torch.no_grad():
        expected = default.logps(flex, batch, None)
        assert_close_f32(
            long_rows.logps(flex, batch, None).summed,
            expected.summed,
            tokens=expected.token_counts,
        )


def test_on_cpu_each_sequence_of_a_long_row_attends_on_its_own(monkeypatch):
    """The CPU path under a block mask: every SDPA call covers one sequence (a shared pair or a
    plain sequence), never the whole row, and only shared pairs build a mask (no window here)."""
    _, flex = sdpa_and_flex("llama")
    batch = ragged_batch(8, seed=2)
    packing = PairPacking("true", True, row_tokens=120)
    layout = packing.layout(batch, flex)
    calls = []
    sdpa = torch.nn.functional.scaled_dot_product_attention

    def recording(query, key, value, attn_mask=None, **kwargs):
        calls.append((query.shape[-2], None if attn_mask is None else attn_mask.shape))
        return sdpa(query, key, value, attn_mask=attn_mask, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", recording)
    with torch.no_grad():
        packing.logps(flex, batch, None)
    longest = max(
        int((layout["groups"][r] == g).sum())
        for r in range(layout["groups"].shape[0])
        for g in layout["groups"][r].unique().tolist()
        if g >= 0
    )
    width = layout["input_ids"].shape[1]
    assert calls and max(length for length, _ in calls) == longest < width
    masks = [shape for _, shape in calls if shape is not None]
    assert masks and all(shape[-2:] == (n, n) for n, shape in calls if shape is not None)
    assert len(masks) < len(calls)  # sequences without a shared prompt run is_causal alone


def test_long_rows_under_a_dense_mask_warn_once(caplog):
    standard, _ = sdpa_and_flex("llama")
    packing = PairPacking("true", True, row_tokens=120)
    with caplog.at_level(logging.WARNING, logger="prefopt.packing"):
        packing.logps(standard, ragged_batch(), None)
        packing.logps(standard, ragged_batch(seed=1), None)
    assert [r.getMessage()[:40] for r in caplog.records] == [
        "data.packing_row_tokens=120 with a dense"
    ]


@pytest.fixture
def fresh_resolution():
    resolve_attention.cache_clear()
    yield
    resolve_attention.cache_clear()


def test_auto_keeps_sdpa_until_flex_is_measured_on_a_gpu(monkeypatch, fresh_resolution, caplog):
    with caplog.at_level(logging.INFO, logger="prefopt.attention"):
        assert resolve_attention("auto") == "sdpa"  # this machine: CPU only
        resolve_attention.cache_clear()
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        assert resolve_attention("auto") == "sdpa"
        assert resolve_attention("auto") == "sdpa"  # resolved once: one line
        assert resolve_attention("flex") == "flex"  # opt-in where FlexAttention is there
    opt_in = "(flex and flash_varlen are opt-in: model.attention=flex)"
    assert [r.getMessage() for r in caplog.records] == [
        f"model.attention=auto: sdpa on CPU {opt_in}",
        f"model.attention=auto: sdpa on a GPU {opt_in}",
    ]


@pytest.mark.numerics
def test_auto_and_flex_fall_back_to_sdpa_where_flex_is_missing(
    monkeypatch, fresh_resolution, caplog, tmp_path
):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(attention, "flex_available", lambda: False)
    with caplog.at_level(logging.INFO, logger="prefopt.attention"):
        assert resolve_attention("auto") == "sdpa"
        assert resolve_attention("flex") == "sdpa"
        assert resolve_attention("flash_varlen") == "sdpa"  # no flash-attn here either
    assert len(caplog.records) == 3
    assert "FlexAttention is not available here; using sdpa" in caplog.records[1].getMessage()

    # The model then loads as by default and packs with its dense mask.
    standard, _ = sdpa_and_flex("llama")
    standard.save_pretrained(tmp_path)
    model = load_causal_lm(str(tmp_path), ModelConfig(path=str(tmp_path), attention="flex"))
    assert model.config._attn_implementation == "sdpa"
    batch = ragged_batch()
    expected = completion_logps(standard, batch, None)
    assert_close_f32(
        PairPacking("true", True).logps(model, batch, None).summed,
        expected.summed,
        tokens=expected.token_counts,
    )


@pytest.mark.numerics
def test_flex_loads_as_the_registered_implementation(fresh_resolution, tmp_path):
    standard, _ = sdpa_and_flex("qwen2_window")
    standard.save_pretrained(tmp_path)
    model = load_causal_lm(str(tmp_path), ModelConfig(path=str(tmp_path), attention="flex"))
    assert model.config._attn_implementation == FLEX
    # An unpacked batch (transformers builds the mask) runs as under sdpa, window included.
    batch = ragged_batch()
    with torch.no_grad():
        expected = completion_logps(standard, batch, None)
        assert_close_f32(
            completion_logps(model, batch, None).summed,
            expected.summed,
            tokens=expected.token_counts,
        )
        # Generation (left-padded prompts, a KV cache) too, as evaluation samples.
        prompts = {"input_ids": torch.tensor([[0, 0, 5, 6], [3, 4, 5, 6]])}
        prompts["attention_mask"] = (prompts["input_ids"] != 0).long()
        sample = dict(max_new_tokens=6, do_sample=False, pad_token_id=0)
        assert torch.equal(
            model.generate(**prompts, **sample), standard.generate(**prompts, **sample)
        )


TRAIN_BRIEFLY = [
    "export=false",
    "trainer.max_steps=3",
    "trainer.log_every_n_steps=1",
    "trainer.limit_val_batches=1",
    "reference.cache=false",
    "checkpoint.enabled=false",
    "eval.num_prompts=0",
]
FLEX_PACKED = [
    "model.attention=flex",
    "model.prefix_sharing=true",
    "data.packing=true",
    "data.packing_row_tokens=256",
]


def train_losses(compose_config, name: str, *overrides: str):
    from mlflow.tracking import MlflowClient

    from prefopt.train import train

    run = train(compose_config(*TRAIN_BRIEFLY, *overrides, f"logger.experiment_name={name}"))
    client = MlflowClient(tracking_uri=compose_config().logger.tracking_uri)
    history = client.get_metric_history(run.run_id, "train/loss")
    return run, torch.tensor([m.value for m in history])


def test_training_with_flex_shared_prompts_and_long_rows(compose_config):
    """A few toy steps (a Llama) with flex, shared prompts and filled rows."""
    run, losses = train_losses(compose_config, "flex", *FLEX_PACKED)
    policy = run.module.policy
    assert policy.config._attn_implementation == FLEX
    assert run.module.packing.supported(policy, None)
    assert len(losses) == 3 and torch.isfinite(losses).all()


@pytest.mark.slow  # a second toy run: ~20 s more on 2 cores
def test_training_with_flex_logs_the_losses_of_the_standard_path(compose_config):
    _, standard = train_losses(
        compose_config, "standard", "model.attention=sdpa", "model.prefix_sharing=false"
    )
    _, flex = train_losses(compose_config, "flex", *FLEX_PACKED)
    assert len(standard) == 3
    assert_close_f32(flex, standard)  # mean losses over a few steps of training
