"""Summed log-probabilities of completion tokens under a causal LM.

Token t is predicted at position t−1, so logits are shifted by one against the labels; only
tokens marked in `completion_mask` count (prompt and padding are masked). Log-probs are taken
as logit[label] − logsumexp(logits) in fp32 so no second [batch, seq, vocab] tensor of
log-softmax values is built.
"""

from __future__ import annotations

from torch import Tensor, nn

from prefopt.losses.base import CompletionLogps


def token_logps(logits: Tensor, labels: Tensor) -> Tensor:
    """log p(label) per position: logits [N, T, V], labels [N, T] -> [N, T] in fp32."""
    logits = logits.float()
    picked = logits.gather(-1, labels.unsqueeze(-1)).squeeze(-1)
    return picked - logits.logsumexp(-1)


def completion_logps(model: nn.Module, batch: dict[str, Tensor]) -> CompletionLogps:
    """Per-sequence summed log-probs of the completion tokens of `batch` under `model`."""
    input_ids = batch["input_ids"]
    logits = model(input_ids=input_ids, attention_mask=batch["attention_mask"]).logits
    scored = batch["completion_mask"][:, 1:]
    labels = input_ids[:, 1:]
    logps = token_logps(logits[:, :-1], labels) * scored
    return CompletionLogps(summed=logps.sum(-1), token_counts=scored.sum(-1))
