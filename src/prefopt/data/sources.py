"""Training and validation rows for a config: local files, a Hugging Face dataset, or the toy world.

Where rows come from is this module's only concern (reading a file is `local_files.py`'s, the
Arrow tables rows live in are `rows.py`'s); what the rows mean is `formats.py`'s. Every row
keeps where it came from (file and line or row number) so that a bad row further down the
pipeline can be named in the error.
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Protocol

from prefopt.config.schema import DataConfig
from prefopt.data.local_files import read_file
from prefopt.data.rows import Rows
from prefopt.errors import PrefoptError


class ToyWorldFiles(Protocol):
    """What the data pipeline needs from the toy world: its train and validation pair files."""

    train_path: str | Path
    val_path: str | Path


# ---------------------------------------------------------------------------------------------
# Local path or hub name

LOCAL_SUFFIXES = (
    *(f".{kind}" for kind in ("jsonl", "json", "parquet", "csv", "tsv", "arrow", "txt", "gz")),
    *(".zip", ".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".gguf"),
)
"""File name endings that only a local file has: a name ending so is never a hub id."""


def looks_local(name: str) -> bool:
    """Whether `name` (a data or model path) can only mean something on this machine, so that
    it must exist here and is never sent to the Hugging Face hub: it exists, starts with `/`,
    `.` or `~`, has a file suffix (`pairs.jsonl`), a backslash, or more than one `/` (a hub
    id is `name` or `owner/name`, so one `/` alone says nothing)."""
    if Path(name).exists():
        return True
    if name.startswith(("/", ".", "~")) or "\\" in name or name.count("/") > 1:
        return True
    return name.lower().endswith(LOCAL_SUFFIXES)


def missing_local_path(name: str, what: str, key: str | None = None) -> PrefoptError:
    """The one-line error for a local-looking `name` (given as config `key`, when known) that
    does not exist; `what` says what it should have named."""
    where = Path(name).absolute().parent
    given = f"{key}={name}" if key else name
    if Path(name).is_symlink():
        target = os.readlink(name)
        return PrefoptError(
            f"{given}: a symbolic link to {target}, which does not exist; give the path of "
            f"{what}, or fix the link (ln -sf <the real path> {name})"
        )
    return PrefoptError(
        f"{given}: no such file or folder (looked in {where}); give the path of {what}, "
        "absolute or relative to the folder you start from"
    )


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
    if looks_local(name_or_path) and not path.exists():
        # load_dataset would take it for a hub name and spend its retries on the network.
        raise missing_local_path(name_or_path, "a data file or dataset folder")
    if path.is_file():
        raise PrefoptError(
            f"{path}: a file, where a dataset (a hub name or a dataset folder) was expected; "
            f"read a file with data=local data.path={path}"
        )
    if path.is_dir():
        return _load_local_folder(path, split)
    return datasets.load_dataset(name_or_path, split=split)


def _load_local_folder(path: Path, split: str):
    """A folder of data files, read by `load_dataset`; a folder holding none is said in one
    line (`datasets` raises one of several exceptions, with another library's vocabulary)."""
    import datasets
    from datasets.exceptions import DataFilesNotFoundError

    try:
        return datasets.load_dataset(str(path), split=split)
    except (DataFilesNotFoundError, datasets.data_files.EmptyDatasetError, FileNotFoundError):
        raise PrefoptError(
            f"{path}: a folder with no data files (jsonl, json, parquet, csv) and no dataset "
            "saved with save_to_disk; give data.path (or data.val_path) a data file, or a "
            "folder holding some"
        ) from None


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
