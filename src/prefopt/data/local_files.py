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
    if kind in ARCHIVES:
        raise PrefoptError(
            f"{path}: a {kind} archive, which prefopt does not open; extract it and give the "
            f"data file inside ({', '.join(FILE_FORMATS)}, optionally .gz)"
        )
    if kind not in readers:
        raise PrefoptError(
            f"{path}: unknown file type {kind or '(no extension)'!r}; "
            f"expected one of {', '.join(FILE_FORMATS)} (optionally .gz)"
        )
    try:
        _check_content(path, kind, compressed)
        return readers[kind](path, compressed)
    except gzip.BadGzipFile:
        raise PrefoptError(
            f"{path}: named .gz but not gzip-compressed; drop .gz from its name"
        ) from None
    except PermissionError:
        raise PrefoptError(
            f"{path}: no permission to read it; make it readable (chmod a+r) or copy it"
        ) from None
    except (OSError, EOFError, zlib.error) as e:  # unreadable, or a truncated .gz
        raise PrefoptError(
            f"{path}: cannot read the file ({type(e).__name__}: {e}); it may be truncated or "
            "corrupt: copy or download it again"
        ) from None
    except UnicodeDecodeError as e:
        raise PrefoptError(f"{path}: not UTF-8 text ({e}); {REENCODE}") from None


ARCHIVES = ("zip", "tar", "tgz", "bz2", "xz", "zst", "7z", "rar")
"""Endings of archives and compressions other than gzip: refused with the fix, not misread."""
REENCODE = "re-encode the file as UTF-8 (e.g. iconv -f latin1 -t utf-8 in.jsonl > out.jsonl)"

_MAGIC = {  # first bytes of a file -> (what it is, the fix), where its name says otherwise
    b"\x1f\x8b": ("gzip-compressed", "add .gz to its name (e.g. pairs.jsonl.gz)"),
    b"PK\x03\x04": ("a zip archive", "unzip it and give the data file inside"),
    b"PAR1": ("a parquet file", "name it .parquet"),
    b"\xff\xfe": ("UTF-16 text", "re-encode it as UTF-8 (iconv -f utf-16 -t utf-8 in > out)"),
    b"\xfe\xff": ("UTF-16 text", "re-encode it as UTF-8 (iconv -f utf-16 -t utf-8 in > out)"),
}


def _check_content(path: Path, kind: str, compressed: bool) -> None:
    """The file's first bytes agree with its name: a gzip, zip or parquet file under a text
    name, UTF-16 or binary content would otherwise fail later as "not UTF-8" on some line."""
    with _open_binary(path, compressed) as raw:
        head = raw.read(8192)
    for magic, (what, fix) in _MAGIC.items():
        if head.startswith(magic) and not (magic == b"PAR1" and kind == "parquet"):
            raise PrefoptError(f"{path}: the file is {what}, not a {kind} file; {fix}")
    if kind != "parquet" and b"\x00" in head:
        raise PrefoptError(
            f"{path}: a binary file (it holds NUL bytes), not {kind} text; give data.path "
            f"a {', '.join(FILE_FORMATS)} file"
        )


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
        raise PrefoptError(
            f"{path}: cannot read as parquet ({e}); copy or download it again, or name it "
            "after its real format"
        ) from None
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
