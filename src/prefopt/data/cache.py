"""The prepared-data cache: its key, its folder, and reading an entry back.

The key is a fingerprint of everything that decides the token ids: the content of the data
files (or the dataset's fingerprint), the tokenizer, and the data settings. An entry is a folder
of the mapped Arrow files as they were written, the kept rows' indices where some were dropped,
and `meta.json`, sealed with `manifest.json` (every file's size and hash, written last); it
is checked against the manifest and read back memory-mapped, never whole. An entry that fails
the check is moved aside with a one-line warning and prepared again.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from prefopt.config.schema import DataConfig
from prefopt.data.batch_job import BOOKKEEPING
from prefopt.data.sources import ToyWorldFiles, load_split
from prefopt.data.tokenize import adds_bos
from prefopt.errors import PrefoptError
from prefopt.files import cache_root, hash_file, seal_problem, set_aside

PREPARE_VERSION = 3
"""Bump when preparation changes its output for the same input: old cache entries then miss.
(2: examples keep the prompt as written, `original_prompt`; 3: pairs that truncation leaves
identical are counted as `truncated_identical`, apart from `too_long`.)"""


@dataclass
class SplitReport:
    """What preparing one split found, kept with the cache so a hit can log it again."""

    rows: int
    kept: int
    dropped: dict[str, int] = field(default_factory=dict)
    first: dict[str, str] = field(default_factory=dict)
    """Per reason, the message of the first row dropped for it (data.on_invalid=skip)."""
    empty_completions: int = 0
    desirable: int | None = None
    """KTO examples: how many are desirable."""


@dataclass
class PreparedData:
    train: Any
    """`datasets.Dataset` of tokenized pairs (or KTO examples), memory-mapped."""
    val: Any
    layout: str
    reports: dict[str, SplitReport]
    key: str
    """The cache key: a fingerprint of everything that decides these token ids."""


def load_verified(folder: Path) -> PreparedData | None:
    """The cached entry in `folder` once its files match their manifest; None when there is
    none yet, or when it was corrupt (then it is moved aside, to be prepared again)."""
    try:
        inode = folder.stat().st_ino
    except FileNotFoundError:
        return None
    problem = seal_problem(folder)
    if problem is None:
        try:
            return load_prepared(folder)
        except Exception as error:  # sealed but unreadable: written by another version
            problem = f"unreadable: {type(error).__name__}: {str(error).splitlines()[0][:120]}"
    set_aside(folder, problem, inode)
    return None


def load_prepared(folder: Path) -> PreparedData | None:
    """The prepared data in `folder`, memory-mapped; None if there is none (yet)."""
    if not (folder / "meta.json").is_file():
        return None
    import datasets

    meta = json.loads((folder / "meta.json").read_text())
    splits = {}
    for split, entry in meta["splits"].items():
        parts = [datasets.Dataset.from_file(str(folder / name)) for name in entry["files"]]
        if not parts:
            splits[split] = None
            continue
        data = datasets.concatenate_datasets(parts) if len(parts) > 1 else parts[0]
        if entry["kept"]:
            data = data.select(np.load(folder / f"{split}.kept.npy"))
        splits[split] = data.remove_columns(BOOKKEEPING)
    train = splits["train"]
    if splits["val"] is None:  # nothing to validate on
        splits["val"] = empty_dataset(train.features)
    return PreparedData(
        train=train,
        val=splits["val"],
        layout=meta["layout"],
        reports={split: SplitReport(**report) for split, report in meta["reports"].items()},
        key=meta["key"],
    )


def empty_dataset(features):
    import datasets

    return datasets.Dataset.from_dict({name: [] for name in features}, features=features)


def prepared_root(cfg: DataConfig) -> Path:
    """Where prepared data is kept: `data.cache_dir`, else under the prefopt cache root."""
    if cfg.cache_dir:
        return Path(cfg.cache_dir)
    return cache_root() / "data" / "prepared"


def data_key(cfg: DataConfig, tokenizer: Any, toy_world: ToyWorldFiles | None, paired: bool) -> str:
    """A fingerprint of every input of preparation: data content, tokenizer, settings."""
    settings = {
        "version": PREPARE_VERSION,
        "paired": paired,
        **{
            name: getattr(cfg, name)
            for name in (
                "source",
                "split",
                "val_split",
                "val_fraction",
                "format",
                "apply_chat_template",
                "max_length",
                "max_prompt_length",
                "max_rows",
                "on_invalid",
                "seed",
            )
        },  # fmt: skip
        "columns": dict(cfg.columns),
        "tokenizer": tokenizer_fingerprint(tokenizer),
    }
    if cfg.source == "toy":
        if toy_world is not None:
            settings["data"] = [file_digest(toy_world.train_path), file_digest(toy_world.val_path)]
    else:
        settings["data"] = source_fingerprint(cfg.path, cfg.split) if cfg.path else None
        settings["val_data"] = (
            source_fingerprint(cfg.val_path, cfg.val_split or cfg.split) if cfg.val_path else None
        )
        if cfg.val_split and cfg.path:
            settings["val_data_split"] = source_fingerprint(cfg.path, cfg.val_split)
    text = json.dumps(settings, sort_keys=True, default=str)
    return hashlib.blake2b(text.encode(), digest_size=16).hexdigest()


def source_fingerprint(path_or_name: str, split: str) -> str:
    """A file's or folder's content hash; for a hub dataset name, the dataset's own fingerprint
    (`datasets` derives it from the files it downloaded)."""
    path = Path(path_or_name)
    if path.is_file():
        return file_digest(path)
    if path.is_dir():
        digest = hashlib.blake2b(digest_size=16)
        for file in sorted(p for p in path.rglob("*") if p.is_file()):
            digest.update(str(file.relative_to(path)).encode())
            digest.update(file_digest(file).encode())
        return digest.hexdigest()
    try:
        return f"{path_or_name}:{split}:{dataset_fingerprint(load_split(path_or_name, split))}"
    except PrefoptError:
        raise
    except Exception:
        return f"{path_or_name}:{split}:unreadable"  # loading it again will say why


def dataset_fingerprint(dataset: Any) -> str:
    """The fingerprint `datasets` keeps for a dataset (derived from the files it was loaded
    from). `datasets` has no public accessor for it: this is the one place that reads the
    private attribute, and a test fails loudly when `datasets` renames it."""
    fingerprint = getattr(dataset, "_fingerprint", None)
    if not isinstance(fingerprint, str) or not fingerprint:
        raise PrefoptError(
            f"datasets {_datasets_version()} no longer keeps a dataset's fingerprint in "
            "`_fingerprint`; prefopt.data.cache.dataset_fingerprint must be updated"
        )
    return fingerprint


def _datasets_version() -> str:
    import datasets

    return datasets.__version__


def file_digest(path: str | Path) -> str:
    return hash_file(path).hexdigest()


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """What decides the ids the tokenizer gives: its vocabulary, merges, normalisation and
    added tokens (the fast tokenizer's whole definition), chat template and special tokens."""
    digest = hashlib.blake2b(digest_size=16)
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        digest.update(backend.to_str().encode())
    else:
        from datasets.fingerprint import Hasher

        digest.update(Hasher.hash(tokenizer).encode())
    digest.update(
        json.dumps(
            [
                type(tokenizer).__name__,
                getattr(tokenizer, "chat_template", None),
                tokenizer.bos_token_id,
                tokenizer.eos_token_id,
                adds_bos(tokenizer),
            ],
            default=str,
        ).encode()
    )
    return digest.hexdigest()
