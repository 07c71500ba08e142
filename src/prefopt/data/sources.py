"""Load raw preference rows (plain dicts) for training and validation.

Where rows come from is this module's only concern: local files, a Hugging Face dataset, or the
toy world. What the rows mean is `formats.py`'s. Every row keeps where it came from (file and
line or row number) so that a bad row further down the pipeline can be named in the error.

Files are parsed with json, csv and pyarrow only: never pickle, which would run code from the file.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import random
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from prefopt.config import DataConfig
from prefopt.errors import PrefoptError

FILE_FORMATS = ("jsonl", "json", "parquet", "csv")


@dataclass
class Rows:
    """Raw rows plus where each came from, for error messages."""

    origin: str
    """A file path, or a dataset name with its split."""
    rows: list[dict[str, Any]]
    numbers: list[int]
    """Per row: its line in a text file (1-based) or its index in a table."""
    unit: str = "row"
    """What `numbers` count: `line` or `row`."""

    def __len__(self) -> int:
        return len(self.rows)

    def where(self, i: int) -> str:
        return f"{self.origin} {self.unit} {self.numbers[i]}"

    def subset(self, indices: list[int]) -> Rows:
        return Rows(
            self.origin,
            [self.rows[i] for i in indices],
            [self.numbers[i] for i in indices],
            self.unit,
        )


class ToyWorldFiles(Protocol):
    """What the data pipeline needs from the toy world: its train and validation pair files."""

    train_path: str | Path
    val_path: str | Path


# ---------------------------------------------------------------------------------------------
# Local files


def read_file(path: str | Path) -> Rows:
    """Read a jsonl/json/parquet/csv file, optionally gzip-compressed (`.jsonl.gz`, ...)."""
    path = Path(path)
    if not path.is_file():
        raise PrefoptError(f"{path}: no such file (data.path / data.val_path must name a data file)")
    suffixes = [s.lower() for s in path.suffixes]
    compressed = bool(suffixes) and suffixes[-1] == ".gz"
    if compressed:
        suffixes = suffixes[:-1]
    kind = suffixes[-1].lstrip(".") if suffixes else ""
    readers: dict[str, Callable[[bytes, str], Rows]] = {
        "jsonl": _parse_jsonl,
        "json": _parse_json,
        "parquet": _parse_parquet,
        "csv": _parse_csv,
    }
    if kind not in readers:
        raise PrefoptError(
            f"{path}: unknown file type {kind or '(no extension)'!r}; "
            f"expected one of {', '.join(FILE_FORMATS)} (optionally .gz)"
        )
    try:
        data = path.read_bytes()
        if compressed:
            data = gzip.decompress(data)
    except (OSError, EOFError, zlib.error) as e:  # unreadable, or a truncated .gz
        raise PrefoptError(
            f"{path}: cannot read the file ({type(e).__name__}: {e}); it may be truncated or "
            "corrupt: copy or download it again"
        ) from None
    return readers[kind](data, str(path))


def _decode(data: bytes, origin: str) -> str:
    try:
        # utf-8-sig drops the byte-order mark that some editors write at the start.
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise PrefoptError(f"{origin}: not UTF-8 text ({e}); re-encode the file as UTF-8") from None


def _parse_jsonl(data: bytes, origin: str) -> Rows:
    rows, numbers = [], []
    for line_number, line in enumerate(_decode(data, origin).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise PrefoptError(f"{origin} line {line_number}: invalid JSON ({e})") from None
        if not isinstance(row, dict):
            raise PrefoptError(
                f"{origin} line {line_number}: expected a JSON object per line, got {type(row).__name__}"
            )
        rows.append(row)
        numbers.append(line_number)
    return Rows(origin, rows, numbers, unit="line")


def _parse_json(data: bytes, origin: str) -> Rows:
    text = _decode(data, origin)
    try:
        content = json.loads(text)
    except json.JSONDecodeError as e:
        # Many datasets ship JSON Lines under a .json name; "Extra data" is the tell-tale.
        if e.msg == "Extra data":
            return _parse_jsonl(data, origin)
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
        raise PrefoptError(f"{origin}: expected a JSON list of objects, got {type(content).__name__}")
    for i, row in enumerate(content):
        if not isinstance(row, dict):
            raise PrefoptError(f"{origin} row {i}: expected a JSON object, got {type(row).__name__}")
    return Rows(origin, content, list(range(len(content))), unit="row")


def _parse_parquet(data: bytes, origin: str) -> Rows:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(pa.BufferReader(data))
    except pa.ArrowException as e:
        raise PrefoptError(f"{origin}: cannot read as parquet ({e})") from None
    rows = table.to_pylist()
    return Rows(origin, rows, list(range(len(rows))), unit="row")


def _parse_csv(data: bytes, origin: str) -> Rows:
    reader = csv.DictReader(io.StringIO(_decode(data, origin), newline=""))
    rows, numbers = [], []
    for row in reader:
        # DictReader puts surplus cells under the key None; such a row is malformed.
        if None in row:
            raise PrefoptError(
                f"{origin} line {reader.line_num}: more cells than the header's {len(reader.fieldnames or [])} columns"
            )
        rows.append(row)
        # line_num is the last physical line read, which for a multi-line quoted cell is its end.
        numbers.append(reader.line_num)
    return Rows(origin, rows, numbers, unit="line")


# ---------------------------------------------------------------------------------------------
# Hugging Face datasets


def read_dataset(name_or_path: str, split: str, max_rows: int | None = None) -> Rows:
    """A split of a Hugging Face dataset: a hub name, a local dataset repo directory (data files
    found by `load_dataset`), or a directory written by `save_to_disk`.

    `max_rows` selects before converting to Python objects, so a quick run on a large dataset
    does not pay for the whole split.
    """
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
        dataset = loaded
    else:
        dataset = datasets.load_dataset(name_or_path, split=split)
    if max_rows is not None:
        dataset = dataset.select(range(min(max_rows, len(dataset))))
    rows = dataset.to_list()
    return Rows(f"{name_or_path} [{split}]", rows, list(range(len(rows))), unit="row")


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
    return remap_columns(train, cfg.columns), remap_columns(val, cfg.columns)


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
    for row, number in zip(pairs.rows, pairs.numbers, strict=True):
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


def remap_columns(rows: Rows, columns: dict[str, str]) -> Rows:
    """Rename source columns to canonical names: `columns = {canonical: source_name}`."""
    if not columns or not rows.rows:
        return rows
    sources = set(columns.values())
    renamed = []
    for i, row in enumerate(rows.rows):
        missing = [source for source in columns.values() if source not in row]
        if missing:
            raise PrefoptError(
                f"{rows.where(i)}: data.columns maps to {missing} but the row has columns "
                f"{sorted(row)}; fix data.columns ({{canonical: your_column}})"
            )
        new = {k: v for k, v in row.items() if k not in sources}
        new.update({canonical: row[source] for canonical, source in columns.items()})
        renamed.append(new)
    return Rows(rows.origin, renamed, rows.numbers, rows.unit)
