"""Reading rows from every supported source, validation hold-out, row caps, column remapping."""

from __future__ import annotations

import csv
import gzip
import json
from types import SimpleNamespace

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from prefopt.config.schema import DataConfig
from prefopt.data.local_files import read_file
from prefopt.data.rows import Rows
from prefopt.data.sources import hold_out, load_rows, read_dataset

RECORDS = [{"prompt": f"Q{i}?", "chosen": f"good {i}", "rejected": f"bad {i}"} for i in range(10)]


def as_dicts(rows: Rows) -> list[dict]:
    """Every row as a dict."""
    return list(rows.rows)


def write_jsonl(path, records, compress=False):
    text = "".join(json.dumps(r) + "\n" for r in records)
    if compress:
        path.write_bytes(gzip.compress(text.encode()))
    else:
        path.write_text(text)
    return path


def write_csv(path, records):
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(records[0]))
        writer.writeheader()
        writer.writerows(records)
    return path


def test_jsonl_keeps_line_numbers(tmp_path):
    path = tmp_path / "prefs.jsonl"
    path.write_text(json.dumps(RECORDS[0]) + "\n\n" + json.dumps(RECORDS[1]) + "\n")
    rows = read_file(path)
    assert as_dicts(rows) == RECORDS[:2]
    assert rows.where(1) == f"{path} line 3"  # the blank line counts


def test_jsonl_gz(tmp_path):
    assert (
        as_dicts(read_file(write_jsonl(tmp_path / "prefs.jsonl.gz", RECORDS, compress=True)))
        == RECORDS
    )


def test_json_list_and_wrapped_list(tmp_path):
    (tmp_path / "list.json").write_text(json.dumps(RECORDS))
    (tmp_path / "wrapped.json").write_text(json.dumps({"version": 1, "data": RECORDS}))
    assert as_dicts(read_file(tmp_path / "list.json")) == RECORDS
    assert as_dicts(read_file(tmp_path / "wrapped.json")) == RECORDS


def test_json_lines_named_json(tmp_path):
    assert as_dicts(read_file(write_jsonl(tmp_path / "prefs.json", RECORDS))) == RECORDS


def test_parquet_with_nested_messages(tmp_path):
    nested = [
        {"chosen": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "a"}],
         "rejected": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "b"}]}
    ]  # fmt: skip
    pq.write_table(pa.Table.from_pylist(nested), tmp_path / "prefs.parquet")
    assert as_dicts(read_file(tmp_path / "prefs.parquet")) == nested


def test_csv_and_csv_gz(tmp_path):
    path = write_csv(tmp_path / "prefs.csv", RECORDS)
    assert as_dicts(read_file(path)) == RECORDS
    (tmp_path / "prefs.csv.gz").write_bytes(gzip.compress(path.read_bytes()))
    assert as_dicts(read_file(tmp_path / "prefs.csv.gz")) == RECORDS


def test_bad_json_line_is_named(tmp_path):
    path = tmp_path / "prefs.jsonl"
    path.write_text(json.dumps(RECORDS[0]) + "\n{not json\n")
    rows = read_file(path)  # lines are parsed where they are used (in parallel, when preparing)
    with pytest.raises(ValueError, match=r"prefs.jsonl line 2: invalid JSON"):
        as_dicts(rows)


def test_unknown_extension_and_missing_file(tmp_path):
    (tmp_path / "prefs.txt").write_text("x")
    with pytest.raises(ValueError, match=r"unknown file type 'txt'.*jsonl, json, parquet, csv"):
        read_file(tmp_path / "prefs.txt")
    with pytest.raises(ValueError, match="no such file"):
        read_file(tmp_path / "absent.jsonl")


def test_saved_dataset_and_dataset_dict(tmp_path):
    datasets.Dataset.from_list(RECORDS).save_to_disk(tmp_path / "single")
    assert as_dicts(read_dataset(str(tmp_path / "single"), split="train")) == RECORDS
    splits = datasets.DatasetDict(
        {
            "train": datasets.Dataset.from_list(RECORDS[:7]),
            "test": datasets.Dataset.from_list(RECORDS[7:]),
        }
    )
    splits.save_to_disk(tmp_path / "dict")
    assert as_dicts(read_dataset(str(tmp_path / "dict"), split="test")) == RECORDS[7:]
    assert as_dicts(read_dataset(str(tmp_path / "dict"), split="train", max_rows=3)) == RECORDS[:3]
    with pytest.raises(
        ValueError, match=r"no split 'validation'; splits found: \['test', 'train'\]"
    ):
        read_dataset(str(tmp_path / "dict"), split="validation")


@pytest.mark.parametrize("kind", ["parquet", "jsonl"])
def test_local_dataset_repo_directory(tmp_path, kind):
    repo = tmp_path / "repo"
    (repo / "data").mkdir(parents=True)
    for split, records in (("train", RECORDS[:7]), ("test", RECORDS[7:])):
        path = repo / "data" / f"{split}-00000-of-00001.{kind}"
        if kind == "parquet":
            pq.write_table(pa.Table.from_pylist(records), path)
        else:
            write_jsonl(path, records)
    assert as_dicts(read_dataset(str(repo), split="train")) == RECORDS[:7]
    assert as_dicts(read_dataset(str(repo), split="test")) == RECORDS[7:]


def test_hub_source_with_val_split(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    write_jsonl(repo / "train.jsonl", RECORDS[:7])
    write_jsonl(repo / "test.jsonl", RECORDS[7:])
    cfg = DataConfig(source="hub", path=str(repo), split="train", val_split="test")
    train, val = load_rows(cfg)
    assert (as_dicts(train), as_dicts(val)) == (RECORDS[:7], RECORDS[7:])


def test_hub_source_with_a_validation_file(tmp_path):
    datasets.Dataset.from_list(RECORDS[:7]).save_to_disk(tmp_path / "saved")
    val_path = write_jsonl(tmp_path / "val.jsonl", RECORDS[7:])
    train, val = load_rows(
        DataConfig(source="hub", path=str(tmp_path / "saved"), val_path=str(val_path))
    )
    assert (as_dicts(train), as_dicts(val)) == (RECORDS[:7], RECORDS[7:])


def test_hold_out_is_seeded_disjoint_and_complete(tmp_path):
    rows = read_file(write_jsonl(tmp_path / "prefs.jsonl", RECORDS))
    train, val = hold_out(rows, 0.3, seed=1)
    assert (len(train), len(val)) == (7, 3)
    prompts = lambda part: [r["prompt"] for r in as_dicts(part)]  # noqa: E731
    assert sorted(prompts(train) + prompts(val)) == sorted(r["prompt"] for r in RECORDS)
    assert prompts(hold_out(rows, 0.3, seed=1)[1]) == prompts(val)
    assert any(prompts(hold_out(rows, 0.3, seed=s)[1]) != prompts(val) for s in range(2, 6))
    assert train.numbers.tolist() == sorted(train.numbers.tolist())  # file order kept
    assert len(hold_out(rows, 0.01, seed=0)[1]) == 1  # a non-zero fraction yields a row
    assert len(hold_out(rows, 0.0, seed=0)[1]) == 0


def test_local_source_with_hold_out_and_max_rows(tmp_path):
    path = write_jsonl(tmp_path / "prefs.jsonl", RECORDS)
    cfg = DataConfig(source="local", path=str(path), val_fraction=0.2, max_rows=5, seed=0)
    train, val = load_rows(cfg)
    assert len(train) + len(val) == 5 and len(val) == 1
    assert {r["prompt"] for r in as_dicts(train) + as_dicts(val)} == {f"Q{i}?" for i in range(5)}


def test_local_source_with_val_path_caps_only_training(tmp_path):
    train_path = write_jsonl(tmp_path / "train.jsonl", RECORDS)
    val_path = write_csv(tmp_path / "val.csv", RECORDS[:4])
    cfg = DataConfig(source="local", path=str(train_path), val_path=str(val_path), max_rows=6)
    train, val = load_rows(cfg)
    assert (as_dicts(train), as_dicts(val)) == (RECORDS[:6], RECORDS[:4])


def test_toy_source_reads_the_worlds_files(tmp_path):
    world = SimpleNamespace(
        train_path=write_jsonl(tmp_path / "train.jsonl", RECORDS[:8]),
        val_path=write_jsonl(tmp_path / "val.jsonl", RECORDS[8:]),
    )
    train, val = load_rows(DataConfig(source="toy", max_rows=3), world)
    assert (as_dicts(train), as_dicts(val)) == (RECORDS[:3], RECORDS[8:])
    with pytest.raises(ValueError, match="toy world"):
        load_rows(DataConfig(source="toy"))


def test_column_remapping(tmp_path):
    renamed = [{"question": "Q?", "good": "yes", "bad": "no", "id": 7}]
    path = write_jsonl(tmp_path / "prefs.jsonl", renamed)
    columns = {"prompt": "question", "chosen": "good", "rejected": "bad"}
    cfg = DataConfig(source="local", path=str(path), val_path=str(path), columns=columns)
    train, _ = load_rows(cfg)
    assert as_dicts(train) == [{"prompt": "Q?", "chosen": "yes", "rejected": "no", "id": 7}]
    cfg.columns = {"prompt": "query", "chosen": "good", "rejected": "bad"}
    with pytest.raises(
        ValueError,
        match=r"line 1: data.columns maps to \['query'\].*\['bad', 'good', 'id', 'question'\]",
    ):
        as_dicts(load_rows(cfg)[0])  # renamed as rows are read


def test_config_errors(tmp_path):
    with pytest.raises(ValueError, match="data.source='web'"):
        load_rows(DataConfig(source="web", path="x"))
    with pytest.raises(ValueError, match="needs data.path"):
        load_rows(DataConfig(source="local"))
    path = write_jsonl(tmp_path / "prefs.jsonl", RECORDS)
    with pytest.raises(ValueError, match="set data.val_path"):
        load_rows(DataConfig(source="local", path=str(path), val_split="test"))


def test_scratch_folders_of_dead_processes_on_this_host_are_removed(tmp_path, monkeypatch):
    import socket

    from prefopt.data.rows import scratch_dir

    monkeypatch.setenv("PREFOPT_CACHE", str(tmp_path))
    mine = scratch_dir()
    host = socket.gethostname().replace("-", "_")
    dead = mine.parent / f"{host}-999999999-x"  # no such process
    elsewhere = mine.parent / "another_host-999999999-x"  # a cache shared by hosts
    dead.mkdir()
    elsewhere.mkdir()
    scratch_dir()
    assert mine.exists() and elsewhere.exists() and not dead.exists()


def test_one_cache_root_for_everything_prefopt_keeps(tmp_path, monkeypatch):
    from pathlib import Path

    from prefopt.data.cache import prepared_root
    from prefopt.files import cache_root
    from prefopt.reference.cached import default_cache_dir

    monkeypatch.setenv("PREFOPT_CACHE", str(tmp_path))
    assert cache_root() == tmp_path
    assert default_cache_dir() == tmp_path / "reference"
    assert prepared_root(DataConfig()) == tmp_path / "data" / "prepared"
    assert prepared_root(DataConfig(cache_dir=str(tmp_path / "mine"))) == tmp_path / "mine"
    monkeypatch.delenv("PREFOPT_CACHE")
    assert cache_root() == Path.home() / ".cache" / "prefopt"
