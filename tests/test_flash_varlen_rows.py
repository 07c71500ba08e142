"""`model.attention=flash_varlen` with several packed rows: each sequence attends only to itself.

No GPU here, so flash-attn's kernel is stood in for by `emulated_flash`, a CPU function that
dispatches as transformers' `_flash_attention_forward` (5.x) does: precomputed `cu_seq_lens_*`
→ varlen over the rows laid end to end; else, for ONE row, boundaries from its position ids;
else plain causal attention over each whole row (where packed sequences would see each other).
"""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from prefopt.data.packing import collate_packed_pairs, packed_part
from prefopt.model.attention import FLASH, packed_attention_kwargs
from prefopt.model.logprobs import completion_logps

from .test_packing import random_pairs

SHAPE = dict(
    vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
    num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
)  # fmt: skip


def _causal(q, k, v, scale):  # [H, L, D] each
    return torch.nn.functional.scaled_dot_product_attention(
        q[None], k[None], v[None], is_causal=True, scale=scale, enable_gqa=True
    )[0]


def _varlen(q, k, v, cu_seq_lens, scale):  # [H, N, D] flattened, boundaries in cu_seq_lens
    bounds = cu_seq_lens.tolist()
    return torch.cat(
        [_causal(q[:, a:b], k[:, a:b], v[:, a:b], scale) for a, b in zip(bounds, bounds[1:])], 1
    )


def emulated_flash(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """[B, H, T, D] in, [B, T, H, D] out, as transformers' flash_attention_forward."""
    calls.append({"batch": query.shape[0], **kwargs})
    rows, heads, width, _ = query.shape
    flat = [t.transpose(0, 1).reshape(t.shape[1], -1, t.shape[-1]) for t in (query, key, value)]
    if kwargs.get("cu_seq_lens_q") is not None:
        out = _varlen(*flat, kwargs["cu_seq_lens_q"], scaling)
    elif rows == 1 and kwargs.get("position_ids") is not None:
        positions = kwargs["position_ids"].reshape(-1)
        starts = torch.nonzero(positions == positions.min()).flatten()
        out = _varlen(*flat, torch.cat([starts, torch.tensor([positions.numel()])]), scaling)
    else:  # transformers' fallback for several rows: causal over each whole row
        out = torch.stack([_causal(q, k, v, scaling) for q, k, v in zip(query, key, value)], 0)
        return out.transpose(1, 2), None
    return out.reshape(heads, rows, width, -1).permute(1, 2, 0, 3), None


calls: list[dict] = []


@pytest.fixture
def flash_on_cpu(monkeypatch):
    """`flash_attention_2` bound to `emulated_flash` for this test only."""
    monkeypatch.setitem(ALL_ATTENTION_FUNCTIONS, FLASH, emulated_flash)
    calls.clear()
    yield calls


def sdpa_and_flash():
    torch.manual_seed(0)
    standard = LlamaForCausalLM(LlamaConfig(**SHAPE, attn_implementation="sdpa"))
    flash = copy.deepcopy(standard)
    flash.config._attn_implementation = FLASH
    return standard, flash


def test_the_boundaries_cover_every_sequence_of_every_row():
    """Two rows of width 7: row 0 holds sequences of 3 and 4 tokens, row 1 one of 5 and two
    padding tokens (position 0 each: sequences of their own). Laid end to end: starts at 0, 3,
    7, 12, 13 and the end 14; the longest is 5."""
    _, flash = sdpa_and_flash()
    positions = torch.tensor([[0, 1, 2, 0, 1, 2, 3], [0, 1, 2, 3, 4, 0, 0]])
    got = packed_attention_kwargs(flash, {"position_ids": positions})
    assert got["cu_seq_lens_q"].tolist() == [0, 3, 7, 12, 13, 14]
    assert got["cu_seq_lens_q"].dtype == torch.int32 and got["max_length_q"] == 5
    assert packed_attention_kwargs(sdpa_and_flash()[0], {"position_ids": positions}) == {}


def test_several_packed_rows_score_as_separate_sequences(flash_on_cpu):
    standard, flash = sdpa_and_flash()
    batch = collate_packed_pairs(
        random_pairs(6, 0), 0, shared_prefix=False, padding_free=True, row_tokens=24
    )
    layout = packed_part(batch)
    rows = layout["input_ids"].shape[0]
    per_row = [(r == 0).sum().item() for r in layout["position_ids"]]
    assert rows > 1 and max(per_row) > 1  # several rows, and rows holding several sequences

    expected = completion_logps(
        standard, {k: v for k, v in batch.items() if not k.startswith("packed")}, None
    )
    got = completion_logps(flash, layout, None)

    torch.testing.assert_close(got.summed, expected.summed, rtol=1e-5, atol=1e-5)
    assert flash_on_cpu and all(call["cu_seq_lens_q"] is not None for call in flash_on_cpu)
    assert flash_on_cpu[0]["batch"] == rows
