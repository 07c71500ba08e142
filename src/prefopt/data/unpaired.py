"""Unpaired preference data for KTO: (prompt, completion, label) examples, tokenized and batched.

Two ways in (reading rows is `formats.py`'s): unpaired rows, one example each; paired rows of
any layout, each pair giving a desirable example (chosen) and an undesirable one (rejected),
shuffled with a seed when prepared (`prepare.py`) so batches mix both labels; left in order,
each pair's two examples would sit side by side and the label pattern would repeat in every
batch.

Examples are tokenized with the same rules as pairs (`tokenize.PairTokenizer`), each on its own.
A batch holds 2N rows: rows 0..N-1 are the examples, rows N..2N-1 pair prompt i with the
completion of example (i+1) mod N — the mismatched pairs from which KTO estimates its KL
reference point, drawn from the batch's own completions. Those rows are joined at the id level
(prompt ids + completion ids): they only feed a detached estimate, and tokenizing every
combination together would cost a tokenizer call per batch row.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypedDict

import torch

from prefopt.data.collate import pad_sequences, with_index
from prefopt.data.layouts import Example
from prefopt.data.tokenize import (
    DROPPED_TOO_LONG,
    PairTokenizer,
    as_assistant_turn,
    as_user_turn,
)


class TokenizedExample(TypedDict):
    input_ids: list[int]
    prompt_length: int
    prompt_input_ids: list[int]
    desirable: bool


class ExampleTokenizer(PairTokenizer):
    """Tokenizes single examples with the pair rules (joint tokenization, BOS/EOS once)."""

    def __call__(self, example: Example) -> tuple[TokenizedExample | None, str | None]:
        prompt, completion = example.prompt, example.completion
        if self.text_as_chat and not example.conversational:
            prompt, completion = as_user_turn(prompt), as_assistant_turn(completion)
        prompt_text = self._prompt_text(prompt, example.where)
        full_text = self._full_text(prompt, prompt_text, completion, example.where)
        [(ids, prompt_length)] = self._encode_many([full_text], [len(prompt_text)])
        ids, prompt_length = self._with_specials(ids, prompt_length, not self.templated(example))
        prompt_ids = self._with_bos(self._ids(prompt_text))
        if len(ids) > self.max_length:
            ids, prompt_length = self._truncate(ids, prompt_length)
            if len(ids) == prompt_length:
                return None, DROPPED_TOO_LONG
            prompt_ids = self._keep_end(prompt_ids)
        return TokenizedExample(
            input_ids=ids,
            prompt_length=prompt_length,
            prompt_input_ids=prompt_ids,
            desirable=example.desirable,
        ), None


def collate_unpaired(
    examples: Sequence[TokenizedExample], pad_token_id: int
) -> dict[str, torch.Tensor]:
    """2N rows: the examples, then each prompt with the next example's completion."""
    n = len(examples)
    sequences = [(e["input_ids"], e["prompt_length"]) for e in examples]
    for i, example in enumerate(examples):
        other = examples[(i + 1) % n]  # with one example this is itself: a KL estimate of 0-ish
        prompt = example["input_ids"][: example["prompt_length"]]
        completion = other["input_ids"][other["prompt_length"] :]
        sequences.append((prompt + completion, len(prompt)))
    batch = with_index(pad_sequences(sequences, pad_token_id), examples)
    batch["desirable"] = torch.tensor([e["desirable"] for e in examples], dtype=torch.bool)
    return batch
