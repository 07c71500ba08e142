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

    `chunk_size=None` computes the full [batch, seq, vocab] logits (the reference path the
    chunked one is tested against).
    """
    input_ids, attention_mask = batch["input_ids"], batch["attention_mask"]
    scored = batch["completion_mask"][:, 1:]
    token_counts = scored.sum(-1)
    parts = _split_model(model) if chunk_size else None
    if parts is None:
        logits = model(input_ids=input_ids, attention_mask=attention_mask).logits
        logps = token_logps(logits[:, :-1], input_ids[:, 1:]) * scored
        return CompletionLogps(summed=logps.sum(-1), token_counts=token_counts)

    body, head = parts
    hidden = body(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
    rows, positions = scored.nonzero(as_tuple=True)
    states = hidden[rows, positions]  # [M, H]: the positions that predict completion tokens
    labels = input_ids[rows, positions + 1]
    # Checkpointing only matters when a backward pass will need the chunk's logits again.
    score = _chunk_logps_checkpointed if torch.is_grad_enabled() else _chunk_logps
    chunks = [
        score(head.weight, head.bias, states[i : i + chunk_size], labels[i : i + chunk_size])
        for i in range(0, states.shape[0], chunk_size)
    ]
    flat = torch.cat(chunks) if chunks else hidden.new_zeros(0, dtype=torch.float32)
    summed = torch.zeros(input_ids.shape[0], dtype=torch.float32, device=input_ids.device)
    return CompletionLogps(summed=summed.index_add(0, rows, flat), token_counts=token_counts)


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
