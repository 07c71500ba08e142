"""Batch tokenized pairs for ONE concatenated forward pass of chosen and rejected.

Rows 0..B-1 are the chosen sequences, rows B..2B-1 the rejected ones in the same order, so a
single forward serves both and `logps[:B]`, `logps[B:]` line up pair by pair.

`completion_mask` marks the TOKENS that are scored (completion tokens, not prompt, not padding).
The log-prob of token t is predicted from position t-1; that shift belongs to the log-prob code,
not here.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from prefopt.data.tokenize import TokenizedPair


def collate_pairs(examples: Sequence[TokenizedPair], pad_token_id: int) -> dict[str, torch.Tensor]:
    """`input_ids`, `attention_mask` (long) and `completion_mask` (bool), each [2B, T], right padded."""
    sequences = [(e["chosen_input_ids"], e["chosen_prompt_length"]) for e in examples]
    sequences += [(e["rejected_input_ids"], e["rejected_prompt_length"]) for e in examples]
    return with_index(pad_sequences(sequences, pad_token_id), examples)


def longest_first_batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Index batches of examples of similar length (`lengths`: each example's longest
    sequence), longest first, for a pass whose order does not matter (scoring every example
    once): little padding to run through the model, and a batch too large for memory fails at
    once rather than at the end."""
    order = sorted(range(len(lengths)), key=lambda i: -int(lengths[i]))
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def with_index(batch: dict[str, torch.Tensor], examples: Sequence[dict]) -> dict[str, torch.Tensor]:
    """Add each example's position in its split (`example_index`), when the data module set it."""
    if examples and "index" in examples[0]:
        batch["example_index"] = torch.tensor([e["index"] for e in examples], dtype=torch.long)
    return batch


def pad_sequences(
    sequences: Sequence[tuple[list[int], int]], pad_token_id: int
) -> dict[str, torch.Tensor]:
    """Right-pad (ids, prompt_length) rows into `input_ids`, `attention_mask`, `completion_mask`."""
    width = max(len(ids) for ids, _ in sequences)
    input_ids = torch.full((len(sequences), width), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(sequences), width), dtype=torch.long)
    completion_mask = torch.zeros((len(sequences), width), dtype=torch.bool)
    for row, (ids, prompt_length) in enumerate(sequences):
        input_ids[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        attention_mask[row, : len(ids)] = 1
        completion_mask[row, prompt_length : len(ids)] = True
    return {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "completion_mask": completion_mask,
    }
