"""`ExampleTable`: tokenized examples in a memory-mapped Arrow table, read as dicts on demand.

The data module's `train_examples` / `val_examples`. A training batch reads its rows from the
table (one Arrow slice per batch, through `__getitems__`); nothing holds every example as
Python objects, so a dataset larger than memory trains as a small one does.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

_ITER_BATCH = 1024
_LENGTHS_BATCH = 16384


class ExampleTable(Sequence):
    """A read-only sequence of example dicts (`TokenizedPair` / `TokenizedExample`), each with
    its position in the split as `index` (which the reference cache looks rows up by)."""

    def __init__(self, dataset: Any):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return self.__getitems__(list(range(*i.indices(len(self)))))
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(i)
        return self.__getitems__([i])[0]

    def __getitems__(self, indices: Sequence[int]) -> list[dict[str, Any]]:
        """The examples at `indices`, read in one go (DataLoader fetches batches this way)."""
        indices = [int(i) for i in indices]
        if not indices:
            return []
        columns = self.dataset[indices]
        return _as_rows(columns, indices)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for start in range(0, len(self), _ITER_BATCH):
            stop = min(start + _ITER_BATCH, len(self))
            yield from _as_rows(self.dataset[start:stop], range(start, stop))

    def lengths(self) -> np.ndarray:
        """Per example, its longest sequence (a pair's longer side), from the Arrow columns'
        list lengths, read batch by batch as Arrow (never as Python lists)."""
        import pyarrow.compute as pc

        names = [
            n
            for n in ("chosen_input_ids", "rejected_input_ids", "input_ids")
            if n in self.dataset.column_names
        ]
        columns = self.dataset.select_columns(names).with_format("arrow")
        parts = [
            np.maximum.reduce([pc.list_value_length(batch[n]).to_numpy() for n in names])
            for batch in columns.iter(batch_size=_LENGTHS_BATCH)
        ]
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)


def _as_rows(columns: dict[str, list], indices) -> list[dict[str, Any]]:
    names = list(columns)
    rows = [dict(zip(names, values)) for values in zip(*(columns[n] for n in names))]
    for row, index in zip(rows, indices):
        row["index"] = index
    return rows
