"""A data path that names something other than a data file, as an adversary would give it: each
is one `PrefoptError` line naming the file (and the line, where one is to blame) and the fix,
never a traceback from `datasets`, pyarrow or a codec."""

from __future__ import annotations

import gzip
import json
import os
import zipfile

import pytest
from omegaconf import OmegaConf

from prefopt.config.checks import check_data_paths
from prefopt.config.schema import DataConfig
from prefopt.data.prepare import prepare_data
from prefopt.data.sources import load_rows
from prefopt.errors import PrefoptError

RECORDS = [{"prompt": f"Q{i}? é", "chosen": f"good {i}", "rejected": f"bad {i}"} for i in range(6)]
TEXT = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in RECORDS)


def one_line_error(fn, *args) -> str:
    with pytest.raises(PrefoptError) as error:
        fn(*args)
    message = str(error.value)
    assert "\n" not in message, message
    return message


def local(path, **keys) -> DataConfig:
    return OmegaConf.structured(DataConfig(source="local", path=str(path), **keys))


def prepared(cfg, tokenizer):
    check_data_paths(cfg)  # as the run does, before anything is read
    return prepare_data(cfg, tokenizer, None, True)


@pytest.mark.parametrize(
    "name, content, expected",
    [
        (
            "pairs.jsonl",
            bytes(range(256)) * 4,
            "a binary file (it holds NUL bytes), not jsonl text",
        ),
        (
            "pairs.jsonl",
            gzip.compress(TEXT.encode()),
            "is gzip-compressed, not a jsonl file; add .gz",
        ),
        ("pairs.jsonl.gz", TEXT.encode(), "named .gz but not gzip-compressed; drop .gz"),
        (
            "pairs.jsonl",
            TEXT.encode("utf-16"),
            "is UTF-16 text, not a jsonl file; re-encode it as UTF-8",
        ),
        (
            "pairs.jsonl",
            TEXT.encode("latin-1"),
            "pairs.jsonl line 1: not UTF-8 text ('utf-8' codec can't decode byte 0xe9 in position "
            "16: invalid continuation byte); re-encode the file as UTF-8 (e.g. iconv -f latin1",
        ),
        (
            "pairs.csv",
            b"PAR1\x15\x04",
            "the file is a parquet file, not a csv file; name it .parquet",
        ),
        ("pairs.parquet", b"not parquet", "cannot read as parquet (Parquet magic bytes not found"),
        ("pairs.tar", b"x", "a tar archive, which prefopt does not open; extract it"),
    ],
)
def test_a_file_whose_content_is_not_its_name_is_one_line(tmp_path, name, content, expected):
    path = tmp_path / name
    path.write_bytes(content)
    message = one_line_error(load_rows, local(path))
    assert message.startswith(str(path)) and expected in message, message


def test_zip_archives_are_refused_with_the_fix(tmp_path):
    archive = tmp_path / "pairs.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("pairs.jsonl", TEXT)
    assert "a zip archive, which prefopt does not open; extract it and give the data file" in (
        one_line_error(load_rows, local(archive))
    )
    renamed = tmp_path / "pairs.jsonl"
    renamed.write_bytes(archive.read_bytes())
    assert one_line_error(load_rows, local(renamed)) == (
        f"{renamed}: the file is a zip archive, not a jsonl file; unzip it and give the data file "
        "inside"
    )


def test_folders_without_data_files_are_one_line(tmp_path):
    """`datasets` raised DataFilesNotFoundError ("No task.toml or instruction.md files found")
    or EmptyDatasetError; as a validation path too, and for a hub source's local folder."""
    empty, notes = tmp_path / "empty", tmp_path / "notes"
    empty.mkdir()
    notes.mkdir()
    (notes / "README.md").write_text("my data")
    good = tmp_path / "pairs.jsonl"
    good.write_text(TEXT)
    for cfg, folder in (
        (local(empty), empty),
        (local(notes), notes),
        (local(good, val_path=str(notes)), notes),
        (OmegaConf.structured(DataConfig(source="hub", path=str(notes))), notes),
    ):
        assert one_line_error(load_rows, cfg) == (
            f"{folder}: a folder with no data files (jsonl, json, parquet, csv) and no dataset "
            "saved with save_to_disk; give data.path (or data.val_path) a data file, or a folder "
            "holding some"
        )


def test_a_file_given_as_a_hub_dataset_names_data_local(tmp_path):
    path = tmp_path / "my pairs é.jsonl"  # spaces and non-ASCII in the name are fine
    path.write_text(TEXT)
    assert len(load_rows(local(path, val_fraction=0.5))[0]) == 3
    hub = OmegaConf.structured(DataConfig(source="hub", path=str(path)))
    assert one_line_error(load_rows, hub).endswith(
        f"use data=local data.path={path}".replace("use", "read a file with")
    )


def test_empty_files_are_one_line(tmp_path, tokenizer):
    empty, good = tmp_path / "empty.jsonl", tmp_path / "pairs.jsonl"
    empty.write_text("\n\n")
    good.write_text(TEXT)
    assert one_line_error(prepared, local(empty), tokenizer) == (
        f"{empty}: no training rows (the file or split is empty); give data.path data with a row "
        "per pair (or per example, data.format=unpaired)"
    )
    assert one_line_error(prepared, local(good, val_path=str(empty)), tokenizer).startswith(
        f"{empty}: no validation rows (the file is empty); give data.val_path a file with rows"
    )


def test_a_csv_with_other_columns_names_its_columns_and_data_columns(tmp_path, tokenizer):
    path = tmp_path / "pairs.csv"
    path.write_text("question,good,bad\nq,a,b\nq2,a2,b2\n")
    message = one_line_error(prepared, local(path), tokenizer)
    assert message.startswith(f"{path} line ")
    assert "found columns ['bad', 'good', 'question']" in message
    assert "data.columns={prompt: ..., chosen: ..., rejected: ...}" in message


def test_a_symlink_to_nothing_says_so(tmp_path):
    link = tmp_path / "pairs.jsonl"
    link.symlink_to(tmp_path / "gone" / "pairs.jsonl")
    assert one_line_error(check_data_paths, local(link)) == (
        f"data.path={link}: a symbolic link to {tmp_path / 'gone' / 'pairs.jsonl'}, which does "
        "not exist; give the path of a data file (jsonl, json, parquet or csv, optionally .gz) or "
        f"a dataset folder, or fix the link (ln -sf <the real path> {link})"
    )


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads every file")
def test_an_unreadable_file_says_permission(tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_text(TEXT)
    path.chmod(0)
    assert "no permission to read it" in one_line_error(load_rows, local(path))
