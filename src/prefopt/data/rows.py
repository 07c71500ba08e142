"""Raw rows as Arrow tables on disk, each row keeping where it came from.

Rows never become one Python list: a file is streamed into an Arrow file in a scratch folder and
memory-mapped as a `datasets.Dataset` (a Hugging Face dataset already is one). Text files
(jsonl, json, csv) are stored one JSON text per row and parsed where they are used, batch by
batch, so rows of any shape (a column missing here, messages with extra keys there) fit one
table and a bad line is still named by its number. Parquet files and datasets keep their columns.
"""

from __future__ import annotations

import atexit
import itertools
import json
import os
import shutil
import socket
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from prefopt.errors import PrefoptError
from prefopt.files import cache_root

JSON_COLUMN = "__json__"
"""The one column of a table read from a text file: each row as its JSON text."""
WRITE_BATCH = 8192


class Rows:
    """Raw rows in an Arrow table, plus where each came from, for error messages."""

    def __init__(
        self,
        origin: str,
        table: Any,
        numbers: Sequence[int],
        unit: str = "row",
        columns: dict[str, str] | None = None,
    ):
        """`table`: a `datasets.Dataset` (either one `JSON_COLUMN` or the rows' own columns), or
        a list of row dicts (small, in-memory data)."""
        self.origin = origin
        self.table = table if not isinstance(table, list) else _json_table(table)
        self.numbers = np.asarray(numbers, dtype=np.int64)
        """Per row: its line in a text file (1-based) or its index in a table."""
        self.unit = unit
        """What `numbers` count: `line` or `row`."""
        self.columns = dict(columns or {})
        """Renames applied as rows are read: {canonical: source_name} (data.columns)."""

    def __len__(self) -> int:
        return len(self.table)

    def where(self, i: int) -> str:
        return f"{self.origin} {self.unit} {self.numbers[i]}"

    def subset(self, indices: Sequence[int]) -> Rows:
        indices = list(indices)
        return Rows(
            self.origin, self.table.select(indices), self.numbers[indices], self.unit, self.columns
        )

    def renamed(self, columns: dict[str, str]) -> Rows:
        return Rows(self.origin, self.table, self.numbers, self.unit, columns)

    @property
    def rows(self) -> RowView:
        """The rows as dicts, decoded on access (for probing a few rows, and for small data)."""
        return RowView(self)

    def decode(self, batch: dict[str, list], first: int) -> list[dict[str, Any]]:
        """The rows of a batch of `table` (as `datasets` hands it out) that starts at row `first`."""
        return decode_rows(batch, self.numbers[first : first + _batch_length(batch)], self.spec())

    def spec(self) -> RowSpec:
        """What a worker process needs to decode rows (picklable, without the table)."""
        return RowSpec(self.origin, self.unit, self.columns)


class RowSpec:
    """How to turn a table batch into row dicts and name a row: picklable for worker processes."""

    def __init__(self, origin: str, unit: str, columns: dict[str, str]):
        self.origin, self.unit, self.columns = origin, unit, columns

    def where(self, number: int) -> str:
        return f"{self.origin} {self.unit} {number}"


class RowView(Sequence):
    """`rows.rows`: a read-only sequence of row dicts over the Arrow table."""

    def __init__(self, rows: Rows):
        self._rows = rows

    def __len__(self) -> int:
        return len(self._rows)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        if i < 0:
            i += len(self)
        return self._rows.decode(self._rows.table[i : i + 1], i)[0]

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for start in range(0, len(self), WRITE_BATCH):
            yield from self._rows.decode(self._rows.table[start : start + WRITE_BATCH], start)


def _batch_length(batch: dict[str, list]) -> int:
    return len(next(iter(batch.values()))) if batch else 0


def decode_rows(
    batch: dict[str, list], numbers: Sequence[int], spec: RowSpec
) -> list[dict[str, Any]]:
    """Row dicts from a table batch: JSON texts parsed, native columns zipped, `columns` renamed.

    A line that is not a JSON object is an error about the file (`PrefoptError`), not a bad row.
    """
    if JSON_COLUMN in batch:
        rows = []
        for text, number in zip(batch[JSON_COLUMN], numbers):
            try:
                row = json.loads(text)
            except json.JSONDecodeError as e:
                raise PrefoptError(f"{spec.where(number)}: invalid JSON ({e})") from None
            if not isinstance(row, dict):
                raise PrefoptError(
                    f"{spec.where(number)}: expected a JSON object per line, got {type(row).__name__}"
                )
            rows.append(row)
    else:
        names = list(batch)
        rows = [dict(zip(names, values)) for values in zip(*(batch[n] for n in names))]
    if spec.columns:
        rows = [_rename(row, spec, number) for row, number in zip(rows, numbers)]
    return rows


def _rename(row: dict[str, Any], spec: RowSpec, number: int) -> dict[str, Any]:
    missing = [source for source in spec.columns.values() if source not in row]
    if missing:
        raise PrefoptError(
            f"{spec.where(number)}: data.columns maps to {missing} but the row has columns "
            f"{sorted(row)}; fix data.columns ({{canonical: your_column}})"
        )
    sources = set(spec.columns.values())
    new = {k: v for k, v in row.items() if k not in sources}
    new.update({canonical: row[source] for canonical, source in spec.columns.items()})
    return new


# ---------------------------------------------------------------------------------------------
# Arrow tables in a scratch folder


def scratch_dir() -> Path:
    """A fresh folder for this process's Arrow files, under the prefopt cache (not /tmp, which
    may be memory). Removed when the process exits; folders of processes of this host that
    died without cleaning up are removed by the next one (the cache may be shared by hosts)."""
    base = cache_root() / "data" / "scratch"
    base.mkdir(parents=True, exist_ok=True)
    host = socket.gethostname().replace("-", "_")
    for stale in base.iterdir():
        owner_host, _, owner = stale.name.partition("-")
        owner = owner.split("-", 1)[0]
        if owner_host == host and owner.isdigit() and int(owner) != os.getpid():
            if not _alive(int(owner)):
                shutil.rmtree(stale, ignore_errors=True)
    path = Path(tempfile.mkdtemp(prefix=f"{host}-{os.getpid()}-", dir=base))
    atexit.register(shutil.rmtree, path, True)
    return path


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class TableWriter:
    """Writes record batches to an Arrow stream file and memory-maps it as a `datasets.Dataset`."""

    def __init__(self, schema: pa.Schema):
        self.folder = scratch_dir()
        self.path = self.folder / "rows.arrow"
        self.writer = pa.ipc.new_stream(str(self.path), schema)

    def write(self, batch: pa.RecordBatch | pa.Table) -> None:
        self.writer.write(batch)

    def finish(self):
        import datasets

        self.writer.close()
        return datasets.Dataset.from_file(str(self.path))


def _json_table(records: Sequence[dict[str, Any]]):
    return json_text_table("rows", ((i, json.dumps(r)) for i, r in enumerate(records)))[0]


def json_text_table(origin: str, numbered: Iterable[tuple[int, str | bytes]]):
    """(`datasets.Dataset` of one `JSON_COLUMN`, the line numbers) from (number, JSON text)
    pairs, written in batches so that no more than one batch is ever in memory. Bytes go into
    Arrow strings as they are, which checks them as UTF-8: a bad line is named."""
    writer = TableWriter(pa.schema([(JSON_COLUMN, pa.large_string())]))
    numbers: list[int] = []
    while batch := list(itertools.islice(numbered, WRITE_BATCH)):
        texts = [text for _, text in batch]
        try:
            array = pa.array(texts, pa.large_string())
        except pa.ArrowInvalid:
            _raise_not_utf8(origin, batch)
        writer.write(pa.record_batch([array], names=[JSON_COLUMN]))
        numbers += [number for number, _ in batch]
    return writer.finish(), numbers


def _raise_not_utf8(origin: str, batch: list[tuple[int, bytes]]) -> None:
    for number, line in batch:
        try:
            line.decode("utf-8")
        except UnicodeDecodeError as e:
            raise PrefoptError(
                f"{origin} line {number}: not UTF-8 text ({e}); re-encode the file as UTF-8 "
                "(e.g. iconv -f latin1 -t utf-8 in.jsonl > out.jsonl)"
            ) from None
    raise PrefoptError(f"{origin}: not UTF-8 text; re-encode the file as UTF-8")
