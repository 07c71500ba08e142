"""Summed log-probabilities of completion tokens under a causal LM, without the full logits.

Token t is predicted at position t−1. Only completion tokens are scored (prompt and padding are
masked), so only their hidden states go through the output layer: prompt positions never get
logits. Those positions are processed in chunks of `chunk_size` tokens, each chunk under
activation checkpointing, so at most one [chunk, vocab] block of logits exists at a time, in the
forward pass and again (recomputed) in the backward pass — the gradients stay exact. For a
152k vocabulary, 2k tokens of full fp32 logits would take 1.2 GB per sequence.

The chunked path computes `lm_head(hidden)`, so it is taken only where a one-time probe on the
model shows that this is exactly the model's own `model(...).logits`; logits that are more
(Gemma 2's soft cap, Cohere's `logit_scale`, Granite's `logits_scaling`, Falcon-H1's
`lm_head_multiplier`, or whatever the next family does) take the plain path, in one info line.
No scoring forward asks for the KV cache (`use_cache=False`): nothing reads it.
"""

from __future__ import annotations

import logging
import weakref
from typing import NamedTuple

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from prefopt.losses.base import CompletionLogps
from prefopt.model.attention import packed_attention_kwargs, packed_attention_mask

log = logging.getLogger("prefopt.models")

DEFAULT_CHUNK_SIZE = 512
"""At 152k vocabulary: 311 MB of fp32 logits per chunk (measured peak RSS for 4 pairs of 512
tokens: 1.9 GB at 512, 3.1 GB at 1024, 10.2 GB with full logits; benchmarks/step_benchmark.py)."""


def token_logps(logits: Tensor, labels: Tensor) -> Tensor:
    """log p(label) per position: logits [..., V], labels [...] -> [...] in fp32."""
    logits = logits.float()
    picked = logits.gather(-1, labels.unsqueeze(-1)).squeeze(-1)
    return picked - logits.logsumexp(-1)


def log_sum_squared_probs(logits: Tensor) -> Tensor:
    """log Σ_v p(v)² per position, in fp32 (WPO's alignment term): logsumexp(2z) − 2·logsumexp(z)."""
    logits = logits.float()
    return logits.mul(2).logsumexp(-1) - 2 * logits.logsumexp(-1)


def completion_logps(
    model: nn.Module,
    batch: dict[str, Tensor],
    chunk_size: int | None = DEFAULT_CHUNK_SIZE,
    *,
    shared_prefix: bool = False,
    wpo: bool = False,
) -> CompletionLogps:
    """Per-sequence summed log-probs of the completion tokens of `batch` under `model`.

    `batch` is a standard one (`collate_pairs`: one sequence per row) or a packed one
    (`prefopt.data.packing.pack_pairs`: several sequences per row, with explicit scoring tensors);
    the result has one entry per logical sequence either way. `chunk_size=None` computes the
    full [rows, seq, vocab] logits (the reference path the chunked one is tested against).

    Pairs only (the first half of the sequences chosen, the second rejected):
    `shared_prefix=True` also sums each sequence's first min(len_chosen, len_rejected) tokens
    (`shared_summed`, LD-DPO); `wpo=True` also sums log π(y_t) − log Σ_v π(v)² without
    gradient (`wpo_summed`, WPO), which needs every scored position's whole distribution.
    """
    inputs = _model_inputs(model, batch)
    rows, positions, labels, sequences, token_counts = _scoring(batch)
    parts = _split_model(model) if chunk_size else None
    if parts is None:
        logits = model(**inputs).logits[rows, positions]
        flat = token_logps(logits, labels)
        alignment = _no_grad(log_sum_squared_probs, logits) if wpo else None
    else:
        body, head = parts
        hidden = body(**inputs).last_hidden_state
        states = hidden[rows, positions]  # [M, H]: the positions that predict completion tokens
        # Checkpointing only matters when a backward pass will need the chunk's logits again.
        score = _chunk_logps_checkpointed if torch.is_grad_enabled() else _chunk_logps
        chunks = [
            score(
                head.weight, head.bias, states[i : i + chunk_size], labels[i : i + chunk_size], wpo
            )
            for i in range(0, states.shape[0], chunk_size)
        ]
        empty = hidden.new_zeros(0, dtype=torch.float32)
        flat = torch.cat([c[0] for c in chunks]) if chunks else empty
        alignment = (torch.cat([c[1] for c in chunks]) if chunks else empty) if wpo else None
    out = CompletionLogps(
        summed=_per_sequence(flat, sequences, token_counts), token_counts=token_counts
    )
    if shared_prefix:
        shared = (
            _ranks_in_sequence(sequences, positions, len(token_counts))
            < _pair_shared_lengths(token_counts)[sequences]
        )
        out.shared_summed = _per_sequence(flat * shared, sequences, token_counts)
    if alignment is not None:
        out.wpo_summed = _per_sequence((flat - alignment).detach(), sequences, token_counts)
    return out


def _per_sequence(values: Tensor, sequences: Tensor, token_counts: Tensor) -> Tensor:
    summed = torch.zeros(token_counts.shape[0], dtype=torch.float32, device=values.device)
    return summed.index_add(0, sequences, values)


def _no_grad(function, *args):
    with torch.no_grad():
        return function(*args)


def _pair_shared_lengths(token_counts: Tensor) -> Tensor:
    """min(len_chosen, len_rejected) for every sequence: sequence i and i + n form a pair."""
    n = token_counts.shape[0] // 2
    chosen, rejected = token_counts[:n], token_counts[n:]
    shared = torch.minimum(chosen, rejected)
    return torch.cat([shared, shared])


def _ranks_in_sequence(sequences: Tensor, positions: Tensor, n_sequences: int) -> Tensor:
    """Each scored token's index within its own sequence (0 for its first completion token),
    whatever order the scoring tensors list the tokens in (packed rows hold several)."""
    if sequences.numel() == 0:
        return sequences
    order = (sequences * (int(positions.max()) + 1) + positions).argsort()
    counts = torch.bincount(sequences, minlength=n_sequences)
    starts = counts.cumsum(0) - counts
    ranks = torch.empty_like(sequences)
    ranks[order] = torch.arange(len(order), device=sequences.device) - starts[sequences[order]]
    return ranks


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
    if "position_ids" not in batch:
        return {
            "input_ids": batch["input_ids"],
            "attention_mask": batch["attention_mask"],
            "use_cache": False,
        }
    # Packed, several sequences per row: a boolean 4-D mask (sdpa, eager), or the layout's
    # groups and branches, from which a sparse model builds its own (`attention.py`).
    extras = {}  # flash varlen: the sequences' boundaries across rows (`attention.py`)
    if "attention_mask" in batch:
        mask = model_attention_mask(model, batch["attention_mask"])
    else:
        try:
            mask = packed_attention_mask(model, batch)
        except ValueError as error:
            raise UnsupportedModel(str(error)) from None
        extras = packed_attention_kwargs(model, batch)
    return {
        "input_ids": batch["input_ids"],
        "attention_mask": mask,
        "position_ids": batch["position_ids"],
        "use_cache": False,
        **extras,
    }


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


def _chunk_logps(
    weight: Tensor, bias: Tensor | None, states: Tensor, labels: Tensor, wpo: bool = False
) -> tuple[Tensor] | tuple[Tensor, Tensor]:
    logits = nn.functional.linear(states, weight, bias)
    if not wpo:
        return (token_logps(logits, labels),)
    return token_logps(logits, labels), _no_grad(log_sum_squared_probs, logits)


def _chunk_logps_checkpointed(
    weight: Tensor, bias: Tensor | None, states: Tensor, labels: Tensor, wpo: bool = False
) -> tuple[Tensor] | tuple[Tensor, Tensor]:
    return checkpoint(_chunk_logps, weight, bias, states, labels, wpo, use_reentrant=False)


def _split_model(model: nn.Module) -> tuple[nn.Module, nn.Linear] | None:
    """(transformer body, output layer) when logits are exactly `head(body(...))`, else None."""
    if hasattr(model, "get_base_model"):  # PEFT: adapters live inside the wrapped model
        model = model.get_base_model()
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    body = getattr(model, "base_model", None)
    if not isinstance(head, nn.Linear) or body is None or body is model:
        return None
    if model not in _HEAD_VERDICTS:
        _HEAD_VERDICTS[model] = _head_gives_the_logits(model, body, head)
        if not _HEAD_VERDICTS[model]:
            log.info(
                "completion log-probs: %s's logits are not its output layer applied to its "
                "hidden states (a soft cap or a logit scale): scoring through its full logits, "
                "model.logits_chunk_size does not apply",
                type(model).__name__,
            )
    return (body, head) if _HEAD_VERDICTS[model] else None


_HEAD_VERDICTS: weakref.WeakKeyDictionary[nn.Module, bool] = weakref.WeakKeyDictionary()
"""Per model (the PEFT-unwrapped one): whether the chunked path computes its own logits."""

HEAD_PROBE_TOLERANCE = {torch.float32: 1e-5, torch.float64: 1e-9}
"""Allowed |head(body(x)) − model(x).logits| relative to the logits' largest magnitude: the same
arithmetic run twice, so a scale or a cap (off by tens of percent) is far outside it. Half
precision: 1e-2."""


def _head_gives_the_logits(model: nn.Module, body: nn.Module, head: nn.Linear) -> bool:
    """Run eight tokens through `model` and through `head(body(...))`, in eval mode (no dropout),
    without gradient, in the weights' own dtype even under autocast (the verdict is kept per
    model, whichever context asks first: `packing.probe`), and without touching the random
    state the training goes on with."""
    device = head.weight.device
    ids = torch.arange(8, device=device).remainder(head.weight.shape[0]).unsqueeze(0)
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "use_cache": False}
    was_training = model.training
    model.eval()
    devices = [device] if device.type == "cuda" else []
    try:
        with (
            torch.no_grad(),
            torch.random.fork_rng(devices=devices),
            torch.autocast(device.type, enabled=False),
        ):
            expected = model(**inputs).logits.float()
            hidden = body(**inputs).last_hidden_state
            got = nn.functional.linear(hidden, head.weight, head.bias).float()
    except (AttributeError, TypeError, ValueError, RuntimeError):
        return False  # a body that cannot run on its own: its model's own forward can
    finally:
        model.train(was_training)
    if got.shape != expected.shape:
        return False
    tolerance = HEAD_PROBE_TOLERANCE.get(head.weight.dtype, 1e-2) * expected.abs().max().item()
    return bool(((got - expected).abs() <= tolerance).all())
