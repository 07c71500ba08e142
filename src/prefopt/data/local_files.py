"""Read local data files (jsonl, json, parquet, csv, each optionally gzip-compressed) as `Rows`.

Files are parsed with json, csv and pyarrow only: never pickle, which would run code from the file.
"""

from __future__ import annotations

import codecs
import csv
import gzip
import json
import shutil
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
from tqdm.auto import tqdm

from prefopt.data.rows import WRITE_BATCH, Rows, TableWriter, json_text_table, scratch_dir
from prefopt.errors import PrefoptError

FILE_FORMATS = ("jsonl", "json", "parquet", "csv")
_PROGRESS_MIN_BYTES = 64 << 20  # below this, reading takes a blink and a bar is noise


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
    table, numbers = json_text_table(str(path), lines)
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
        writer = TableWriter(parquet.schema_arrow)
        for batch in parquet.iter_batches(batch_size=WRITE_BATCH):
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

    table, numbers = json_text_table(origin, rows())
    return Rows(origin, table, numbers, unit="line")
