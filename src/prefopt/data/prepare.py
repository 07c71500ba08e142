"""Prepare preference data once: rows -> pairs (or KTO examples) -> token ids, cached on disk.

The rows of a split are mapped in batches (`datasets.Dataset.map(batched=True, num_proc=...)`):
each batch is parsed, read in its layout and tokenized in one call (`batch_job.py`). Nothing is
raised inside a worker: a bad row becomes a `problem` on its output row, and the main process
then handles the problems in file order under `data.on_invalid` (the first one stops the run,
or all are dropped and counted), exactly as a row-by-row pass would.

The result is cached (`cache.py`) under a key of everything that decides it: the content of the data files
(or the dataset's fingerprint), the tokenizer, and the data settings. The next job of a sweep,
and every rank but the first, reads the cache instead of preparing again; the first process to
take the key's file lock prepares, the others wait and read. A cache hit never reads the rows.
"""

from __future__ import annotations

import json
import logging
import os
import random
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from prefopt.config.schema import DataConfig
from prefopt.data.batch_job import FILE, BatchJob, mapped_features
from prefopt.data.cache import (
    PreparedData,
    SplitReport,
    data_key,
    empty_dataset,
    load_prepared,
    load_verified,
    prepared_root,
)
from prefopt.data.formats import resolve_layout
from prefopt.data.rows import Rows, scratch_dir
from prefopt.data.sources import ToyWorldFiles, load_rows
from prefopt.data.tokenize import PairTokenizer
from prefopt.data.unpaired import ExampleTokenizer
from prefopt.data.validate import InvalidRows
from prefopt.errors import PrefoptError, RowError
from prefopt.files import file_lock, staged_folder

log = logging.getLogger("prefopt.data")

MAP_BATCH = 512
PARALLEL_MIN_ROWS = 4000
"""Below this, worker processes cost more to start than they save."""
PROGRESS_MIN_ROWS = 2000
"""Below this, tokenizing takes a blink and a progress bar is noise."""


def prepare_data(
    cfg: DataConfig,
    tokenizer: Any,
    toy_world: ToyWorldFiles | None = None,
    paired: bool = True,
) -> PreparedData:
    """Tokenized train and val data for `cfg`: from the cache, or prepared (and cached)."""
    key = data_key(cfg, tokenizer, toy_world, paired)
    if not cfg.cache:
        folder = scratch_dir() / key
        _prepare_into(folder, cfg, tokenizer, toy_world, paired, key)
        return load_prepared(folder)
    folder = prepared_root(cfg) / key
    prepared = load_verified(folder)
    if prepared is not None:
        log.info("data: prepared data from the cache (%s)", folder)
        return prepared
    with file_lock(folder.with_name(f"{key}.lock")):  # another rank or job may be at it
        prepared = load_verified(folder)
        if prepared is None:
            # Built in a staging folder, sealed, renamed into place: all or nothing, checked.
            with staged_folder(folder, hint="set data.cache_dir to a larger disk") as staging:
                _prepare_into(staging, cfg, tokenizer, toy_world, paired, key)
            log.info("data: prepared data cached in %s", folder)
            prepared = load_prepared(folder)
        else:
            log.info("data: prepared data from the cache (%s)", folder)
    return prepared


def _prepare_into(folder: Path, cfg, tokenizer, toy_world, paired: bool, key: str) -> None:
    """Prepare both splits into `folder`: the mapped Arrow files as they were written (never
    read back whole), the kept rows' indices where some were dropped, and `meta.json`."""
    folder.mkdir(parents=True)
    train_rows, val_rows = load_rows(cfg, toy_world)
    if len(train_rows) == 0:
        raise PrefoptError(
            f"{train_rows.origin}: no training rows (the file or split is empty); give "
            "data.path data with a row per pair (or per example, data.format=unpaired)"
        )
    if len(val_rows) == 0 and cfg.val_path:
        raise PrefoptError(
            f"{val_rows.origin}: no validation rows (the file is empty); give data.val_path "
            "a file with rows, or leave it out to hold out data.val_fraction of the training rows"
        )
    layout = resolve_layout(cfg.format, train_rows, paired, cfg.on_invalid)
    check_chat_template(cfg.apply_chat_template, layout, tokenizer)
    meta: dict[str, Any] = {"layout": layout, "key": key, "reports": {}, "splits": {}}
    for split, rows in (("train", train_rows), ("val", val_rows)):
        mapped, kept, report = prepare_split(
            split, rows, layout, tokenizer, cfg, paired, key, folder
        )
        files = [Path(f["filename"]).name for f in mapped.cache_files]
        if kept is not None:
            np.save(folder / f"{split}.kept.npy", np.asarray(kept, dtype=np.int64))
        meta["splits"][split] = {"files": files, "kept": kept is not None}
        meta["reports"][split] = asdict(report)
        del mapped  # its files stay; it is read back from them
    train = meta["reports"]["train"]
    if train["kept"] == 0:
        dropped = {k: v for k, v in train["dropped"].items() if v}
        raise PrefoptError(
            f"{train_rows.origin}: no training data left after filtering "
            f"({len(train_rows)} rows, dropped: {dropped or 'none'}); check the data "
            "(see the log), or raise data.max_length if the rows are too long"
        )
    (folder / "meta.json").write_text(json.dumps(meta, indent=1))


# ---------------------------------------------------------------------------------------------
# One split: a parallel batched map, then the problems in file order


def prepare_split(
    split: str,
    rows: Rows,
    layout: str,
    tokenizer: Any,
    cfg: DataConfig,
    paired: bool,
    key: str,
    folder: Path,
) -> tuple[Any, list[int] | None, SplitReport]:
    """The split mapped into Arrow files in `folder` (a row per example or problem), the
    indices of the examples kept (None: all rows), and what was dropped."""
    # Only generation reads a prompt's own ids, and it samples validation prompts.
    with_prompt_ids = split != "train"
    text_as_chat = cfg.apply_chat_template is True
    if paired:
        encoder = PairTokenizer(
            tokenizer, cfg.max_length, cfg.max_prompt_length, with_prompt_ids, text_as_chat
        )
    else:
        encoder = ExampleTokenizer(
            tokenizer, cfg.max_length, cfg.max_prompt_length, text_as_chat=text_as_chat
        )
    job = BatchJob(rows.spec(), rows.numbers, layout, encoder, paired)
    mapped = _map(rows, job, split, cfg, key, folder)
    invalid = InvalidRows(cfg.on_invalid, split)
    order = np.arange(len(mapped))
    if not paired and layout != "unpaired":
        order = _split_pairs_order(mapped, cfg.seed)
    kept = _handle_problems(mapped, order, invalid)
    report = SplitReport(
        rows=len(rows),
        kept=len(kept),
        dropped=dict(invalid.counts),
        first=dict(invalid.first),
        empty_completions=int(_column(mapped, "empty_completions")[kept].sum()),
    )
    if not paired:
        report.desirable = int(_column(mapped, "desirable")[kept].sum())
    everything = kept == list(range(len(mapped)))
    return mapped, None if everything else kept, report


def _column(mapped, name: str) -> np.ndarray:
    """A column of a freshly mapped table (no selection on it yet) as a numpy array."""
    return mapped.data.column(name).to_numpy()


def _map(rows: Rows, job: BatchJob, split: str, cfg: DataConfig, key: str, folder: Path):
    import datasets

    num_proc = cfg.num_proc
    if num_proc is None:
        num_proc = (os.cpu_count() or 1) if len(rows) >= PARALLEL_MIN_ROWS else 1
    num_proc = max(1, min(num_proc, len(rows) // MAP_BATCH or 1))
    features = mapped_features(job.paired)
    if len(rows) == 0:
        return empty_dataset(features)
    previous = os.environ.get("TOKENIZERS_PARALLELISM")
    bars = datasets.utils.logging.is_progress_bar_enabled()
    if len(rows) < PROGRESS_MIN_ROWS:
        datasets.disable_progress_bars()  # a blink: a bar would be noise
    if num_proc > 1:
        # One process per core: the tokenizer's own threads would only compete with them.
        os.environ["TOKENIZERS_PARALLELISM"] = "false"
    try:
        return rows.table.map(
            job,
            batched=True,
            batch_size=MAP_BATCH,
            with_indices=True,
            num_proc=num_proc if num_proc > 1 else None,
            remove_columns=rows.table.column_names,
            features=features,
            cache_file_name=str(folder / f"{split}.arrow"),
            new_fingerprint=f"{key[:24]}{split}",
            load_from_cache_file=False,
            desc=f"tokenizing {split}",
        )
    finally:
        if bars:
            datasets.enable_progress_bars()
        if previous is None:
            os.environ.pop("TOKENIZERS_PARALLELISM", None)
        else:
            os.environ["TOKENIZERS_PARALLELISM"] = previous


def _handle_problems(mapped, order: np.ndarray, invalid: InvalidRows) -> list[int]:
    """Hand every problem to `invalid` as a row-by-row pass would meet it (file errors, then
    rows that cannot be read as pairs, then pairs the tokenizer drops, each in `order`); the
    indices in `order` that are left."""
    stages = _column(mapped, "problem_stage")[order]
    flagged = sorted((int(stages[i]), int(i)) for i in np.flatnonzero(stages >= 0))
    if flagged:
        picked = mapped.select([int(order[i]) for _, i in flagged])
        for stage, message, reason, field_ in zip(
            picked["problem_stage"],
            picked["problem"],
            picked["problem_reason"],
            picked["problem_field"],
        ):
            if stage == FILE:
                raise PrefoptError(message)
            invalid.record(RowError(message, reason=reason, field=field_ or None))
    return order[stages < 0].tolist()


def _split_pairs_order(mapped, seed: int) -> np.ndarray:
    """KTO on paired rows: each pair's desirable (chosen) and undesirable (rejected) example,
    all chosen ones first (in file order), then all rejected ones, shuffled with the seed.
    Rows that are not pairs at all (a problem before splitting) come first, in file order."""
    sides, pairs = _column(mapped, "side"), _column(mapped, "pair")
    unsplit = np.flatnonzero(sides < 0)
    chosen = np.flatnonzero(sides == 0)
    rejected = np.flatnonzero(sides == 1)
    chosen = chosen[np.argsort(pairs[chosen], kind="stable")]
    rejected = rejected[np.argsort(pairs[rejected], kind="stable")]
    examples = [*chosen.tolist(), *rejected.tolist()]
    random.Random(seed).shuffle(examples)
    return np.asarray([*unsplit.tolist(), *examples], dtype=np.int64)


def check_chat_template(apply_chat_template: bool | None, layout: str, tokenizer) -> None:
    """`data.apply_chat_template` against the data's layout and the tokenizer: a one-line error
    where they cannot go together, an info line where plain text meets a chat model."""
    has_template = getattr(tokenizer, "chat_template", None) is not None
    conversational = layout == "conversational"
    if apply_chat_template is False and conversational:
        raise PrefoptError(
            "data.apply_chat_template=false: conversational rows are rendered only through the "
            "chat template; set data.apply_chat_template=null, or use plain-text data"
        )
    if apply_chat_template is True and not has_template:
        raise PrefoptError(
            "data.apply_chat_template=true: this tokenizer has no chat template; "
            "set data.apply_chat_template=null (text as it is) or use a tokenizer with one"
        )
    if apply_chat_template is None and has_template and not conversational:
        log.info(
            "data: %s rows are plain text and go to the model as they are, without its chat "
            "template; data.apply_chat_template=true renders each prompt as a user turn and "
            "each completion as the assistant's reply",
            layout,
        )
