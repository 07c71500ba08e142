"""Load raw preference rows for training and validation, as Arrow tables on disk.

Where rows come from is this module's only concern: local files, a Hugging Face dataset, or the
toy world. What the rows mean is `formats.py`'s. Every row keeps where it came from (file and
line or row number) so that a bad row further down the pipeline can be named in the error.

Rows never become one Python list: a file is streamed into an Arrow file in a scratch folder and
memory-mapped as a `datasets.Dataset` (a Hugging Face dataset already is one). Text files
(jsonl, json, csv) are stored one JSON text per row and parsed where they are used, batch by
batch, so rows of any shape (a column missing here, messages with extra keys there) fit one
table and a bad line is still named by its number. Parquet files and datasets keep their columns.

Files are parsed with json, csv and pyarrow only: never pickle, which would run code from the file.
"""

from __future__ import annotations

import atexit
import codecs
import csv
import gzip
import itertools
import json
import os
import random
import shutil
import socket
import tempfile
import zlib
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pyarrow as pa
from tqdm.auto import tqdm

from prefopt.config.schema import DataConfig
from prefopt.errors import PrefoptError

FILE_FORMATS = ("jsonl", "json", "parquet", "csv")
JSON_COLUMN = "__json__"
"""The one column of a table read from a text file: each row as its JSON text."""
_WRITE_BATCH = 8192
_PROGRESS_MIN_BYTES = 64 << 20  # below this, reading takes a blink and a bar is noise


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

    def records(self) -> list[dict[str, Any]]:
        """Every row as a dict, in a list: for small data and tests only."""
        return list(self.rows)

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
        for start in range(0, len(self), _WRITE_BATCH):
            yield from self._rows.decode(self._rows.table[start : start + _WRITE_BATCH], start)


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


class ToyWorldFiles(Protocol):
    """What the data pipeline needs from the toy world: its train and validation pair files."""

    train_path: str | Path
    val_path: str | Path


# ---------------------------------------------------------------------------------------------
# Arrow tables in a scratch folder


def scratch_dir() -> Path:
    """A fresh folder for this process's Arrow files, under the prefopt cache (not /tmp, which
    may be memory). Removed when the process exits; folders of processes of this host that
    died without cleaning up are removed by the next one (the cache may be shared by hosts)."""
    root = os.environ.get("PREFOPT_CACHE")
    base = (Path(root) if root else Path.home() / ".cache" / "prefopt") / "data" / "scratch"
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


class _TableWriter:
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
    return _json_text_table("rows", ((i, json.dumps(r)) for i, r in enumerate(records)))[0]


def _json_text_table(origin: str, numbered: Iterable[tuple[int, str | bytes]]):
    """(`datasets.Dataset` of one `JSON_COLUMN`, the line numbers) from (number, JSON text)
    pairs, written in batches so that no more than one batch is ever in memory. Bytes go into
    Arrow strings as they are, which checks them as UTF-8: a bad line is named."""
    writer = _TableWriter(pa.schema([(JSON_COLUMN, pa.large_string())]))
    numbers: list[int] = []
    while batch := list(itertools.islice(numbered, _WRITE_BATCH)):
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
                f"{origin} line {number}: not UTF-8 text ({e}); re-encode the file as UTF-8"
            ) from None
    raise PrefoptError(f"{origin}: not UTF-8 text; re-encode the file as UTF-8")


# ---------------------------------------------------------------------------------------------
# Local files


def read_file(path: str | Path) -> Rows:
    """Read a jsonl/json/parquet/csv file, optionally gzip-compressed (`.jsonl.gz`, ...)."""
    path = Path(path)
    if not path.is_file():
        raise PrefoptError(
            f"{path}: no such file (data.path / data.val_path must name a data file)"
        )
    suffixes = [s.lower() for s in path.suffixes]
    compressed = bool(suffixes) and suffixes[-1] == ".gz"
    if compressed:
        suffixes = suffixes[:-1]
    kind = suffixes[-1].lstrip(".") if suffixes else ""
    readers = {"jsonl": _read_jsonl, "json": _read_json, "parquet": _read_parquet, "csv": _read_csv}
    if kind not in readers:
        raise PrefoptError(
            f"{path}: unknown file type {kind or '(no extension)'!r}; "
            f"expected one of {', '.join(FILE_FORMATS)} (optionally .gz)"
        )
    try:
        return readers[kind](path, compressed)
    except (OSError, EOFError, zlib.error) as e:  # unreadable, or a truncated .gz
        raise PrefoptError(
            f"{path}: cannot read the file ({type(e).__name__}: {e}); it may be truncated or "
            "corrupt: copy or download it again"
        ) from None
    except UnicodeDecodeError as e:
        raise PrefoptError(f"{path}: not UTF-8 text ({e}); re-encode the file as UTF-8") from None


def _open_binary(path: Path, compressed: bool):
    return gzip.open(path, "rb") if compressed else open(path, "rb")


def _lines(path: Path, compressed: bool) -> Iterator[tuple[int, bytes]]:
    """(line number, bytes) of every line, with a progress bar over the bytes of a large file."""
    size = path.stat().st_size
    with (
        _open_binary(path, compressed) as raw,
        tqdm(
            total=None if compressed else size,  # a .gz is read by its uncompressed bytes
            unit="B",
            unit_scale=True,
            desc=f"reading {path.name}",
            disable=size < _PROGRESS_MIN_BYTES,
        ) as bar,
    ):
        done = 0
        for number, line in enumerate(raw, start=1):
            if number == 1 and line.startswith(codecs.BOM_UTF8):
                line = line[len(codecs.BOM_UTF8) :]  # some editors write one
            done += len(line)
            if number % 4096 == 0:
                bar.update(done - bar.n)
            yield number, line
        bar.update(done - bar.n)


def _read_jsonl(path: Path, compressed: bool) -> Rows:
    """Lines are stored as they are and parsed where used: in parallel, when preparing."""
    lines = ((n, line) for n, line in _lines(path, compressed) if line.strip())
    table, numbers = _json_text_table(str(path), lines)
    return Rows(str(path), table, numbers, unit="line")


def _read_json(path: Path, compressed: bool) -> Rows:
    with _open_binary(path, compressed) as raw:
        text = raw.read().decode("utf-8-sig")
    origin = str(path)
    try:
        content = json.loads(text)
    except json.JSONDecodeError as e:
        # Many datasets ship JSON Lines under a .json name; "Extra data" is the tell-tale.
        if e.msg == "Extra data":
            return _read_jsonl(path, compressed)
        raise PrefoptError(f"{origin}: invalid JSON ({e})") from None
    if isinstance(content, dict):
        # Accept the common {"data": [...]} wrapper when there is exactly one list inside.
        lists = [v for v in content.values() if isinstance(v, list)]
        if len(lists) != 1:
            raise PrefoptError(
                f"{origin}: expected a JSON list of objects (or an object holding exactly one such list), "
                f"found an object with keys {sorted(content)}"
            )
        content = lists[0]
    if not isinstance(content, list):
        raise PrefoptError(
            f"{origin}: expected a JSON list of objects, got {type(content).__name__}"
        )
    for i, row in enumerate(content):
        if not isinstance(row, dict):
            raise PrefoptError(
                f"{origin} row {i}: expected a JSON object, got {type(row).__name__}"
            )
    return Rows(origin, list(content), range(len(content)), unit="row")


def _read_parquet(path: Path, compressed: bool) -> Rows:
    import pyarrow.parquet as pq

    source: Any = path
    if compressed:
        folder = scratch_dir()
        source = folder / "file.parquet"
        with gzip.open(path, "rb") as raw, open(source, "wb") as out:
            shutil.copyfileobj(raw, out)
    try:
        parquet = pq.ParquetFile(source)
        writer = _TableWriter(parquet.schema_arrow)
        for batch in parquet.iter_batches(batch_size=_WRITE_BATCH):
            writer.write(batch)
    except pa.ArrowException as e:
        raise PrefoptError(f"{path}: cannot read as parquet ({e})") from None
    table = writer.finish()
    return Rows(str(path), table, range(len(table)), unit="row")


def _read_csv(path: Path, compressed: bool) -> Rows:
    origin = str(path)
    reader = csv.DictReader(line.decode("utf-8") for _, line in _lines(path, compressed))

    def rows() -> Iterator[tuple[int, str]]:
        for row in reader:
            # DictReader puts surplus cells under the key None; such a row is malformed.
            if None in row:
                raise PrefoptError(
                    f"{origin} line {reader.line_num}: more cells than the header's {len(reader.fieldnames or [])} columns"
                )
            # line_num is the last physical line read: a multi-line quoted cell's end.
            yield reader.line_num, json.dumps(row)

    table, numbers = _json_text_table(origin, rows())
    return Rows(origin, table, numbers, unit="line")


# ---------------------------------------------------------------------------------------------
# Hugging Face datasets


def read_dataset(name_or_path: str, split: str, max_rows: int | None = None) -> Rows:
    """A split of a Hugging Face dataset: a hub name, a local dataset repo directory (data files
    found by `load_dataset`), or a directory written by `save_to_disk`. The dataset stays
    memory-mapped; `max_rows` selects its first rows without reading the others.
    """
    dataset = load_split(name_or_path, split)
    if max_rows is not None:
        dataset = dataset.select(range(min(max_rows, len(dataset))))
    return Rows(f"{name_or_path} [{split}]", dataset, range(len(dataset)), unit="row")


def load_split(name_or_path: str, split: str):
    """The `datasets.Dataset` of one split (see `read_dataset`)."""
    import datasets

    path = Path(name_or_path)
    if _is_saved_dataset(path):
        loaded = datasets.load_from_disk(str(path))
        if isinstance(loaded, datasets.DatasetDict):
            if split not in loaded:
                raise PrefoptError(
                    f"{path}: no split {split!r}; splits found: {sorted(loaded)} (set data.split / data.val_split)"
                )
            loaded = loaded[split]
        return loaded
    return datasets.load_dataset(name_or_path, split=split)


def _is_saved_dataset(path: Path) -> bool:
    # save_to_disk writes state.json (one Dataset) or dataset_dict.json (a DatasetDict).
    return path.is_dir() and (
        (path / "state.json").is_file() or (path / "dataset_dict.json").is_file()
    )


# ---------------------------------------------------------------------------------------------
# Putting it together: training and validation rows for a config


def load_rows(cfg: DataConfig, toy_world: ToyWorldFiles | None = None) -> tuple[Rows, Rows]:
    """Training and validation rows as the config asks, with column names remapped.

    Validation comes from `val_path` / `val_split` when given, otherwise from a seeded hold-out
    of `val_fraction` of the training rows. `max_rows` caps the rows read for training before
    that hold-out, so a quick run stays quick on both sides.
    """
    train, val = _load_train_and_val(cfg, toy_world)
    if val is None:
        train, val = hold_out(train, cfg.val_fraction, cfg.seed)
    return train.renamed(dict(cfg.columns)), val.renamed(dict(cfg.columns))


def _load_train_and_val(
    cfg: DataConfig, toy_world: ToyWorldFiles | None
) -> tuple[Rows, Rows | None]:
    cap = cfg.max_rows
    if cfg.source == "toy":
        if toy_world is None:
            raise PrefoptError(
                "data.source=toy needs the toy world; pass toy_world= to PreferenceDataModule"
            )
        train, val = _first(read_file(toy_world.train_path), cap), read_file(toy_world.val_path)
        if cfg.format == "unpaired":
            return toy_unpaired(train), toy_unpaired(val)
        return train, val
    if cfg.source not in ("local", "hub"):
        raise PrefoptError(f"data.source={cfg.source!r} is not one of: toy, local, hub")
    if cfg.path is None:
        raise PrefoptError(f"data.source={cfg.source} needs data.path (a file or dataset name)")
    read = read_dataset if cfg.source == "hub" else _read_local
    train = read(cfg.path, cfg.split, cap)
    if cfg.val_path:
        if Path(cfg.val_path).is_file():  # a validation file also serves a hub training set
            return train, read_file(cfg.val_path)
        return train, read(cfg.val_path, cfg.val_split or cfg.split, None)
    if cfg.val_split:
        if cfg.source == "local" and not Path(cfg.path).is_dir():
            raise PrefoptError(
                f"data.val_split={cfg.val_split!r} needs a dataset, but data.path={cfg.path} is a file; "
                "set data.val_path to a validation file instead"
            )
        return train, read(cfg.path, cfg.val_split, None)
    return train, None


def toy_unpaired(pairs: Rows) -> Rows:
    """The toy pairs as thumbs-up/down data: every sampled review on its own, desirable when
    its ground-truth reward is positive, undesirable when negative (reward 0 says neither)."""
    rows, numbers = [], []
    for row, number in zip(pairs.rows, pairs.numbers.tolist(), strict=True):
        for side in ("chosen", "rejected"):
            reward = row[f"{side}_reward"]
            if reward != 0:
                rows.append({"prompt": row["prompt"], "completion": row[side], "label": reward > 0})
                numbers.append(number)
    return Rows(pairs.origin, rows, numbers, pairs.unit)


def _read_local(path: str, split: str, cap: int | None) -> Rows:
    # A directory is a dataset (saved with save_to_disk, or a folder of data files).
    if Path(path).is_dir():
        return read_dataset(path, split, cap)
    return _first(read_file(path), cap)


def _first(rows: Rows, cap: int | None) -> Rows:
    return rows if cap is None or cap >= len(rows) else rows.subset(list(range(cap)))


def hold_out(rows: Rows, fraction: float, seed: int) -> tuple[Rows, Rows]:
    """Split off a seeded random `fraction` for validation; both parts keep file order."""
    if not 0.0 <= fraction < 1.0:
        raise PrefoptError(f"data.val_fraction={fraction} must be in [0, 1)")
    n_val = round(len(rows) * fraction)
    if fraction > 0 and len(rows) > 1:
        n_val = min(max(n_val, 1), len(rows) - 1)  # a non-zero fraction always yields a val row
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    val_indices = set(order[:n_val])
    train = [i for i in range(len(rows)) if i not in val_indices]
    return rows.subset(train), rows.subset(sorted(val_indices))
