"""Summed log-probabilities of completion tokens under a causal LM, without the full logits.

Token t is predicted at position t−1. Only completion tokens are scored (prompt and padding are
masked), so only their hidden states go through the output layer: prompt positions never get
logits. Those positions are processed in chunks of `chunk_size` tokens, each chunk under
activation checkpointing, so at most one [chunk, vocab] block of logits exists at a time, in the
forward pass and again (recomputed) in the backward pass — the gradients stay exact. For a
152k vocabulary, 2k tokens of full fp32 logits would take 1.2 GB per sequence.

Models whose logits are more than `lm_head(hidden)` (final logit soft-capping, logit scaling)
take the plain path through `model(...).logits`.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from prefopt.losses.base import CompletionLogps

DEFAULT_CHUNK_SIZE = 512
"""At 152k vocabulary: 311 MB of fp32 logits per chunk (measured peak RSS for 4 pairs of 512
tokens: 1.9 GB at 512, 3.1 GB at 1024, 10.2 GB with full logits; benchmarks/step_benchmark.py)."""


def token_logps(logits: Tensor, labels: Tensor) -> Tensor:
    """log p(label) per position: logits [..., V], labels [...] -> [...] in fp32."""
    logits = logits.float()
    picked = logits.gather(-1, labels.unsqueeze(-1)).squeeze(-1)
    return picked - logits.logsumexp(-1)


def completion_logps(
    model: nn.Module, batch: dict[str, Tensor], chunk_size: int | None = DEFAULT_CHUNK_SIZE
) -> CompletionLogps:
    """Per-sequence summed log-probs of the completion tokens of `batch` under `model`.

    `batch` is a standard one (`collate_pairs`: one sequence per row) or a packed one
    (`prefopt.data.packing.pack_pairs`: several sequences per row, with explicit scoring tensors);
    the result has one entry per logical sequence either way. `chunk_size=None` computes the
    full [rows, seq, vocab] logits (the reference path the chunked one is tested against).
    """
    inputs = _model_inputs(model, batch)
    rows, positions, labels, sequences, token_counts = _scoring(batch)
    parts = _split_model(model) if chunk_size else None
    if parts is None:
        logits = model(**inputs).logits
        flat = token_logps(logits[rows, positions], labels)
    else:
        body, head = parts
        hidden = body(**inputs).last_hidden_state
        states = hidden[rows, positions]  # [M, H]: the positions that predict completion tokens
        # Checkpointing only matters when a backward pass will need the chunk's logits again.
        score = _chunk_logps_checkpointed if torch.is_grad_enabled() else _chunk_logps
        chunks = [
            score(head.weight, head.bias, states[i : i + chunk_size], labels[i : i + chunk_size])
            for i in range(0, states.shape[0], chunk_size)
        ]
        flat = torch.cat(chunks) if chunks else hidden.new_zeros(0, dtype=torch.float32)
    summed = torch.zeros(token_counts.shape[0], dtype=torch.float32, device=flat.device)
    return CompletionLogps(summed=summed.index_add(0, sequences, flat), token_counts=token_counts)


class _Scoring(NamedTuple):
    """Each scored token's row, the position whose hidden state predicts it, and its label id;
    which sequence it belongs to; and each sequence's number of scored tokens."""

    rows: Tensor
    positions: Tensor
    labels: Tensor
    sequences: Tensor
    token_counts: Tensor


def _scoring(batch: dict[str, Tensor]) -> _Scoring:
    if "score_rows" in batch:  # packed: the layout names every scored token
        keys = ("score_rows", "score_positions", "score_labels", "score_sequences", "token_counts")
        return _Scoring(*(batch[key] for key in keys))
    scored = batch["completion_mask"][:, 1:]  # token t is predicted at position t-1
    rows, positions = scored.nonzero(as_tuple=True)
    labels = batch["input_ids"][rows, positions + 1]
    return _Scoring(rows, positions, labels, rows, scored.sum(-1))


def _model_inputs(model: nn.Module, batch: dict[str, Tensor]) -> dict[str, Tensor]:
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    if "position_ids" in batch:  # packed: a boolean 4-D mask, several sequences per row
        inputs["attention_mask"] = model_attention_mask(model, batch["attention_mask"])
        inputs["position_ids"] = batch["position_ids"]
    return inputs


class UnsupportedModel(Exception):
    """The model cannot take position ids and a custom 4-D attention mask."""


def model_attention_mask(model: nn.Module, allowed: Tensor) -> Tensor:
    """A boolean 4-D mask (True = attend) in the form `model`'s attention implementation takes
    as it is: transformers hands a 4-D mask to the attention function unchanged, and SDPA reads
    a boolean one while eager attention adds it to its scores."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    implementation = getattr(getattr(base, "config", None), "_attn_implementation", None)
    if implementation == "sdpa":
        return allowed
    if implementation == "eager":
        dtype = next(model.parameters()).dtype
        blocked = torch.zeros(allowed.shape, dtype=dtype, device=allowed.device)
        return blocked.masked_fill(~allowed, torch.finfo(dtype).min)
    raise UnsupportedModel(f"attention implementation {implementation!r}")


def _chunk_logps(weight: Tensor, bias: Tensor | None, states: Tensor, labels: Tensor) -> Tensor:
    return token_logps(nn.functional.linear(states, weight, bias), labels)


def _chunk_logps_checkpointed(
    weight: Tensor, bias: Tensor | None, states: Tensor, labels: Tensor
) -> Tensor:
    return checkpoint(_chunk_logps, weight, bias, states, labels, use_reentrant=False)


def _split_model(model: nn.Module) -> tuple[nn.Module, nn.Linear] | None:
    """(transformer body, output layer) when logits are exactly `head(body(...))`, else None."""
    if hasattr(model, "get_base_model"):  # PEFT: adapters live inside the wrapped model
        model = model.get_base_model()
    config = getattr(model, "config", None)
    if getattr(config, "final_logit_softcapping", None) or getattr(config, "logit_scale", None):
        return None
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    body = getattr(model, "base_model", None)
    if not isinstance(head, nn.Linear) or body is None or body is model:
        return None
    return body, head
