"""The function `Dataset.map` runs on each batch of rows when data is prepared (`BatchJob`).

Each batch is parsed, read in its layout and sent through the fast tokenizer in one call.
Nothing is raised inside a worker: a bad row becomes a `problem` on its output row (with the
stage at which a row-by-row pass would have met it), for the main process to handle in file
order (`prepare.py`).
"""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np
import pyarrow as pa

from prefopt.data.formats import LAYOUTS, read_row
from prefopt.data.layouts import Example, is_empty
from prefopt.data.original_prompts import ORIGINAL_PROMPT, encode_prompt
from prefopt.data.rows import RowSpec, decode_rows
from prefopt.data.tokenize import dropped_row_error, untokenizable_error
from prefopt.errors import PrefoptError, RowError

# Stages of a problem: the order in which a row-by-row pass would meet them.
FILE, ROW, TOKENS = 0, 1, 2

BOOKKEEPING = [
    "problem", "problem_reason", "problem_field", "problem_stage", "pair", "side", "empty_completions"
]  # fmt: skip
"""Columns of a mapped table that say what happened to a row; dropped once it is prepared."""


def mapped_features(paired: bool):
    """The columns of a mapped table: the tokenized example's, then the bookkeeping."""
    from datasets import Features, Sequence, Value

    ids = Sequence(Value("int32"))
    columns = (
        {
            "chosen_input_ids": ids,
            "chosen_prompt_length": Value("int32"),
            "rejected_input_ids": ids,
            "rejected_prompt_length": Value("int32"),
            "prompt_input_ids": ids,
            ORIGINAL_PROMPT: Value("string"),
        }
        if paired
        else {
            "input_ids": ids,
            "prompt_length": Value("int32"),
            "prompt_input_ids": ids,
            ORIGINAL_PROMPT: Value("string"),
            "desirable": Value("bool"),
        }
    )
    columns.update(
        empty_completions=Value("int8"),
        problem=Value("string"),
        problem_reason=Value("string"),
        problem_field=Value("string"),
        problem_stage=Value("int8"),
        pair=Value("int64"),
        side=Value("int8"),
    )
    return Features(columns)


class BatchJob:
    """The function `Dataset.map` runs on each batch of rows (picklable for worker processes)."""

    def __init__(self, spec: RowSpec, numbers, layout: str, encoder, paired: bool):
        self.spec, self.numbers, self.layout = spec, numbers, layout
        self.encoder, self.paired = encoder, paired
        self.schema = mapped_features(paired).arrow_schema

    def __call__(self, batch: dict[str, list], indices: list[int]) -> dict[str, list]:
        numbers = self.numbers[indices]
        out = _Output(self.schema)
        try:
            rows = decode_rows(batch, numbers, self.spec)
        except PrefoptError:
            rows = None  # a line that is not JSON: find it row by row
        items = []
        for k, index in enumerate(indices):
            where = self.spec.where(int(numbers[k]))
            try:
                row = rows[k] if rows is not None else _decode_one(batch, k, numbers, self.spec)
            except PrefoptError as error:
                out.problem(index, FILE, error)
                continue
            try:
                items.extend(self._items(row, where, index))
            except RowError as error:
                out.problem(index, ROW, error)
        self._tokenize(items, out)
        return out.table()

    def _items(self, row: dict[str, Any], where: str, index: int) -> list[tuple]:
        """(pair index, side, Pair or Example) for each example this row gives."""
        item = read_row(row, where, self.layout)
        if self.paired or not LAYOUTS[self.layout].paired:
            return [(index, -1, item)]
        pair = item  # KTO on paired rows: a desirable and an undesirable example
        return [
            (index, 0, Example(pair.prompt, pair.chosen, True, where)),
            (index, 1, Example(pair.prompt, pair.rejected, False, where)),
        ]

    def _tokenize(self, items: list[tuple], out: _Output) -> None:
        texts = []
        for index, side, item in items:
            try:
                texts.append(self.encoder.texts(item) if self.paired else None)
            except RowError as error:  # (no chat template at all is a PrefoptError: raised)
                out.problem(index, TOKENS, error, side)
                texts.append(None)
        ready = [
            (item, text) for (_, _, item), text in zip(items, texts) if text or not self.paired
        ]
        try:
            results = iter(self._encode_all(ready))
        except PrefoptError:
            raise
        except Exception:  # a text the tokenizer fails on: find it, one by one
            results = iter(self._encode_each(ready))
        for (index, side, item), text in zip(items, texts):
            if self.paired and text is None:
                continue
            example, reason = next(results)
            if isinstance(reason, RowError):
                out.problem(index, TOKENS, reason, side)
            elif example is None:
                out.problem(
                    index, TOKENS, dropped_row_error(item.where, reason, self.encoder), side
                )
            else:
                example = {**example, ORIGINAL_PROMPT: encode_prompt(item.prompt)}
                out.example(example, index, side, _empty_completions(item))

    def _encode_all(self, ready: list[tuple]) -> list[tuple]:
        if self.paired:
            return self.encoder.tokenize_texts(
                [text for _, text in ready], [not self.encoder.templated(item) for item, _ in ready]
            )
        results = []
        for example, _ in ready:  # KTO: one example at a time
            try:
                results.append(self.encoder(example))
            except RowError as error:  # its chat template fails
                results.append((None, error))
        return results

    def _encode_each(self, ready: list[tuple]) -> list[tuple]:
        results = []
        for item, text in ready:
            try:
                results.extend(self._encode_all([(item, text)]))
            except PrefoptError:
                raise
            except Exception as error:  # never a traceback from deep inside a tokenizer
                results.append((None, untokenizable_error(item.where, error)))
        return results


def _decode_one(batch: dict[str, list], k: int, numbers, spec: RowSpec) -> dict[str, Any]:
    return decode_rows(
        {name: values[k : k + 1] for name, values in batch.items()}, numbers[k : k + 1], spec
    )[0]


def _empty_completions(item) -> int:
    if isinstance(item, Example):
        return int(is_empty(item.completion))
    return int(is_empty(item.chosen)) + int(is_empty(item.rejected))


class _Output:
    """The columns of one mapped batch: a row per example, a row per problem."""

    def __init__(self, schema: pa.Schema):
        self.schema = schema
        # A problem row's example columns: empty ids and text, zero lengths, not desirable.
        self.blank = {
            f.name: []
            if pa.types.is_list(f.type)
            else (False if pa.types.is_boolean(f.type) else "" if pa.types.is_string(f.type) else 0)
            for f in schema
            if f.name not in BOOKKEEPING
        }
        self.columns: dict[str, list] = {f.name: [] for f in schema}

    def example(self, example: dict, pair: int, side: int, empty: int) -> None:
        for name in self.blank:
            self.columns[name].append(example[name])
        self._bookkeeping(None, pair, side, empty)

    def problem(self, pair: int, stage: int, error: PrefoptError, side: int = -1) -> None:
        for name, value in self.blank.items():
            self.columns[name].append(value)
        self._bookkeeping((stage, error), pair, side, 0)

    def table(self) -> pa.Table:
        """The columns as an Arrow table. Token ids go in through numpy, flattened: converting
        lists of Python ints one by one costs more than tokenizing them."""
        arrays = [
            _int32_lists(self.columns[f.name])
            if pa.types.is_list(f.type)
            else pa.array(self.columns[f.name], type=f.type)
            for f in self.schema
        ]
        return pa.Table.from_arrays(arrays, schema=self.schema)

    def _bookkeeping(self, problem, pair: int, side: int, empty: int) -> None:
        stage, error = problem if problem else (-1, None)
        self.columns["problem"].append(str(error) if error else None)
        self.columns["problem_reason"].append(getattr(error, "reason", None))
        self.columns["problem_field"].append(getattr(error, "field", None))
        self.columns["problem_stage"].append(stage)
        self.columns["pair"].append(pair)
        self.columns["side"].append(side)
        self.columns["empty_completions"].append(empty)


def _int32_lists(lists: list[list[int]]) -> pa.Array:
    lengths = np.fromiter(map(len, lists), dtype=np.int32, count=len(lists))
    offsets = np.zeros(len(lists) + 1, dtype=np.int32)
    np.cumsum(lengths, out=offsets[1:])
    values = np.fromiter(
        itertools.chain.from_iterable(lists), dtype=np.int32, count=int(offsets[-1])
    )
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(values))
