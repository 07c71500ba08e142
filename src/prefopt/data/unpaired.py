"""Unpaired preference data for KTO: (prompt, completion, label) examples.

Two ways in:

- unpaired rows: `prompt`, `completion` (strings, or message lists for chat data) and a boolean
  `label` (true = desirable);
- paired rows of any layout (`split_pairs`): each pair gives a desirable example (chosen) and an
  undesirable one (rejected). They are shuffled with a seed so batches mix both labels; left in
  order, each pair's two examples would sit side by side and the label pattern would repeat in
  every batch.

Examples are tokenized with the same rules as pairs (`tokenize.PairTokenizer`), each on its own.
A batch holds 2N rows: rows 0..N-1 are the examples, rows N..2N-1 pair prompt i with the
completion of example (i+1) mod N — the mismatched pairs from which KTO estimates its KL
reference point, drawn from the batch's own completions. Those rows are joined at the id level
(prompt ids + completion ids): they only feed a detached estimate, and tokenizing every
combination together would cost a tokenizer call per batch row.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypedDict

import torch

from prefopt.data.collate import pad_sequences, with_index
from prefopt.data.formats import Message, Pair, check_not_empty
from prefopt.data.sources import Rows
from prefopt.data.tokenize import DROPPED_TOO_LONG, PairTokenizer
from prefopt.data.validate import InvalidRows
from prefopt.errors import RowError

UNPAIRED_COLUMNS = ("prompt", "completion", "label")
_TRUE, _FALSE = {"true", "1", "yes"}, {"false", "0", "no"}


@dataclass(frozen=True)
class Example:
    prompt: str | list[Message]
    completion: str | list[Message]
    desirable: bool
    where: str

    @property
    def conversational(self) -> bool:
        return isinstance(self.prompt, list)


class TokenizedExample(TypedDict):
    input_ids: list[int]
    prompt_length: int
    prompt_input_ids: list[int]
    desirable: bool


def is_unpaired(row: dict[str, Any]) -> bool:
    return "completion" in row and "label" in row and "chosen" not in row


def normalise_unpaired(rows: Rows, invalid: InvalidRows | None = None) -> list[Example]:
    """Every row as an `Example`; a bad row raises `RowError` or goes to `invalid` (skip mode)."""
    examples = []
    for i, row in enumerate(rows.rows):
        try:
            examples.append(example_from_row(row, rows.where(i)))
        except RowError as error:
            if invalid is None:
                raise
            invalid.record(error)
    return examples


def example_from_row(row: dict[str, Any], where: str) -> Example:
    """One unpaired row as an `Example` (a bad row raises `RowError`)."""
    missing = [c for c in UNPAIRED_COLUMNS if c not in row]
    if missing:
        raise RowError(
            f"{where}: missing column(s) {missing}; found {sorted(row)}; unpaired data needs "
            "prompt, completion and a boolean label (rename with data.columns)",
            reason="missing_column",
            field=missing[0],
        )
    prompt, completion = row["prompt"], row["completion"]
    for key, value in (("prompt", prompt), ("completion", completion)):
        if not isinstance(value, (str, list)):
            raise RowError(
                f"{where}: field {key!r} is a {type(value).__name__}, expected a string or a "
                "list of messages",
                reason="wrong_type",
                field=key,
            )
    if isinstance(prompt, str) != isinstance(completion, str):
        if isinstance(prompt, list) and isinstance(completion, str):
            completion = [{"role": "assistant", "content": completion}]
        else:
            raise RowError(
                f"{where}: 'prompt' and 'completion' must both be strings or both messages",
                reason="wrong_type",
                field="completion",
            )
    check_not_empty(where, prompt)
    return Example(prompt, completion, _label(row["label"], where), where)


def _label(value: Any, where: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE  # csv cells are text
    raise RowError(
        f"{where}: field 'label' is {value!r}; it must be a boolean (true = desirable, false = undesirable)",
        reason="bad_label",
        field="label",
    )


def split_pairs(pairs: Sequence[Pair], seed: int) -> list[Example]:
    """One desirable and one undesirable example per pair, shuffled so batches mix labels."""
    examples = [Example(p.prompt, p.chosen, True, p.where) for p in pairs]
    examples += [Example(p.prompt, p.rejected, False, p.where) for p in pairs]
    random.Random(seed).shuffle(examples)
    return examples


class ExampleTokenizer(PairTokenizer):
    """Tokenizes single examples with the pair rules (joint tokenization, BOS/EOS once)."""

    def __call__(self, example: Example) -> tuple[TokenizedExample | None, str | None]:
        prompt_text = self._prompt_text(example.prompt, example.where)
        full_text = self._full_text(example.prompt, prompt_text, example.completion, example.where)
        [(ids, prompt_length)] = self._encode_many([full_text], [len(prompt_text)])
        ids, prompt_length = self._with_specials(ids, prompt_length, not example.conversational)
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
