"""Prepare preference data once: rows -> pairs (or KTO examples) -> token ids, cached on disk.

The rows of a split are mapped in batches (`datasets.Dataset.map(batched=True, num_proc=...)`):
each batch is parsed, normalised and sent through the fast tokenizer in one call. Nothing is
raised inside a worker: a bad row becomes a `problem` on its output row, and the main process
then handles the problems in file order under `data.on_invalid` (the first one stops the run,
or all are dropped and counted), exactly as a row-by-row pass would.

The result is cached under a key of everything that decides it: the content of the data files
(or the dataset's fingerprint), the tokenizer, and the data settings. The next job of a sweep,
and every rank but the first, reads the cache instead of preparing again; the first process to
take the key's file lock prepares, the others wait and read. A cache hit never reads the rows.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import os
import random
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from prefopt.config.schema import DataConfig
from prefopt.data.formats import check_not_empty, detect_format, is_empty, to_pair
from prefopt.data.sources import (
    Rows,
    RowSpec,
    ToyWorldFiles,
    decode_rows,
    load_rows,
    load_split,
    scratch_dir,
)
from prefopt.data.tokenize import (
    PairTokenizer,
    adds_bos,
    dropped_row_error,
    untokenizable_error,
)
from prefopt.data.unpaired import (
    Example,
    ExampleTokenizer,
    example_from_row,
    is_unpaired,
)
from prefopt.data.validate import InvalidRows
from prefopt.errors import PrefoptError, RowError
from prefopt.files import file_lock, hash_file

log = logging.getLogger("prefopt.data")

PREPARE_VERSION = 1
"""Bump when preparation changes its output for the same input: old cache entries then miss."""
MAP_BATCH = 512
PARALLEL_MIN_ROWS = 4000
"""Below this, worker processes cost more to start than they save."""
PROGRESS_MIN_ROWS = 2000
"""Below this, tokenizing takes a blink and a progress bar is noise."""

# Stages of a problem: the order in which a row-by-row pass would meet them.
FILE, ROW, TOKENS = 0, 1, 2


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
    folder = cache_root(cfg) / key
    prepared = load_prepared(folder)
    if prepared is not None:
        log.info("data: prepared data from the cache (%s)", folder)
        return prepared
    with file_lock(folder.with_name(f"{key}.lock")):  # another rank or job may be at it
        prepared = load_prepared(folder)
        if prepared is None:
            # Written into a staging folder, then renamed into place: readers see all or nothing.
            staging = folder.with_name(f".{key}.{os.getpid()}.tmp")
            shutil.rmtree(staging, ignore_errors=True)
            try:
                _prepare_into(staging, cfg, tokenizer, toy_world, paired, key)
                os.replace(staging, folder)
            finally:
                shutil.rmtree(staging, ignore_errors=True)
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
        raise PrefoptError(f"{train_rows.origin}: no training rows")
    layout = _layout(cfg, train_rows, paired)
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
        splits[split] = data.remove_columns(_BOOKKEEPING)
    train = splits["train"]
    if splits["val"] is None:  # nothing to validate on
        splits["val"] = _empty(train.features)
    return PreparedData(
        train=train,
        val=splits["val"],
        layout=meta["layout"],
        reports={split: SplitReport(**report) for split, report in meta["reports"].items()},
        key=meta["key"],
    )


def _empty(features):
    import datasets

    return datasets.Dataset.from_dict({name: [] for name in features}, features=features)


def _layout(cfg: DataConfig, rows: Rows, paired: bool) -> str:
    if cfg.format == "unpaired" or (
        cfg.format == "auto" and len(rows) and is_unpaired(rows.rows[0])
    ):
        if paired:
            raise PrefoptError(
                f"{rows.origin}: holds unpaired (prompt, completion, label) rows, but this loss "
                "trains on pairs (prompt, chosen, rejected); use loss=kto or paired data"
            )
        return "unpaired"
    if cfg.format != "auto":
        return cfg.format
    try:
        return detect_format(rows, tolerant=cfg.on_invalid == "skip")
    except RowError as error:
        InvalidRows(cfg.on_invalid).record(error)  # raises, with the hint to skip
        raise


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
    if paired:
        encoder = PairTokenizer(tokenizer, cfg.max_length, cfg.max_prompt_length, with_prompt_ids)
    else:
        encoder = ExampleTokenizer(tokenizer, cfg.max_length, cfg.max_prompt_length)
    job = _BatchJob(rows.spec(), rows.numbers, layout, encoder, paired)
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


_BOOKKEEPING = [
    "problem", "problem_reason", "problem_field", "problem_stage", "pair", "side", "empty_completions"
]  # fmt: skip


def _map(rows: Rows, job: _BatchJob, split: str, cfg: DataConfig, key: str, folder: Path):
    import datasets

    num_proc = cfg.num_proc
    if num_proc is None:
        num_proc = (os.cpu_count() or 1) if len(rows) >= PARALLEL_MIN_ROWS else 1
    num_proc = max(1, min(num_proc, len(rows) // MAP_BATCH or 1))
    features = _features(job.paired)
    if len(rows) == 0:
        return _empty(features)
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


def _features(paired: bool):
    from datasets import Features, Sequence, Value

    ids = Sequence(Value("int32"))
    columns = (
        {
            "chosen_input_ids": ids,
            "chosen_prompt_length": Value("int32"),
            "rejected_input_ids": ids,
            "rejected_prompt_length": Value("int32"),
            "prompt_input_ids": ids,
        }
        if paired
        else {
            "input_ids": ids,
            "prompt_length": Value("int32"),
            "prompt_input_ids": ids,
            "desirable": Value("bool"),
        }
    )
    columns.update(
        empty_completions=Value("int8"),
        problem=Value("string"),
        problem_reason=Value("string"),
        problem_field=Value("string"),
        problem_stage=Value("int8"),
        pair=Value("int64"),
        side=Value("int8"),
    )
    return Features(columns)


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
    all chosen ones first, shuffled with the seed, as `unpaired.split_pairs` orders them.
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


class _BatchJob:
    """The function `Dataset.map` runs on each batch of rows (picklable for worker processes)."""

    def __init__(self, spec: RowSpec, numbers, layout: str, encoder, paired: bool):
        self.spec, self.numbers, self.layout = spec, numbers, layout
        self.encoder, self.paired = encoder, paired
        self.schema = _features(paired).arrow_schema

    def __call__(self, batch: dict[str, list], indices: list[int]) -> dict[str, list]:
        numbers = self.numbers[indices]
        out = _Output(self.schema)
        try:
            rows = decode_rows(batch, numbers, self.spec)
        except PrefoptError:
            rows = None  # a line that is not JSON: find it row by row
        items = []
        for k, index in enumerate(indices):
            where = self.spec.where(int(numbers[k]))
            try:
                row = rows[k] if rows is not None else _decode_one(batch, k, numbers, self.spec)
            except PrefoptError as error:
                out.problem(index, FILE, error)
                continue
            try:
                items.extend(self._items(row, where, index))
            except RowError as error:
                out.problem(index, ROW, error)
        self._tokenize(items, out)
        return out.table()

    def _items(self, row: dict[str, Any], where: str, index: int) -> list[tuple]:
        """(pair index, side, Pair or Example) for each example this row gives."""
        if self.layout == "unpaired":
            return [(index, -1, example_from_row(row, where))]
        pair = to_pair(row, where, self.layout)
        check_not_empty(where, pair.prompt)
        if self.paired:
            return [(index, -1, pair)]
        return [
            (index, 0, Example(pair.prompt, pair.chosen, True, where)),
            (index, 1, Example(pair.prompt, pair.rejected, False, where)),
        ]

    def _tokenize(self, items: list[tuple], out: _Output) -> None:
        texts = []
        for index, side, item in items:
            try:
                texts.append(self.encoder.texts(item) if self.paired else None)
            except RowError as error:  # (no chat template at all is a PrefoptError: raised)
                out.problem(index, TOKENS, error, side)
                texts.append(None)
        ready = [
            (item, text) for (_, _, item), text in zip(items, texts) if text or not self.paired
        ]
        try:
            results = iter(self._encode_all(ready))
        except PrefoptError:
            raise
        except Exception:  # a text the tokenizer fails on: find it, one by one
            results = iter(self._encode_each(ready))
        for (index, side, item), text in zip(items, texts):
            if self.paired and text is None:
                continue
            example, reason = next(results)
            if isinstance(reason, RowError):
                out.problem(index, TOKENS, reason, side)
            elif example is None:
                out.problem(
                    index, TOKENS, dropped_row_error(item.where, reason, self.encoder), side
                )
            else:
                out.example(example, index, side, _empty_completions(item))

    def _encode_all(self, ready: list[tuple]) -> list[tuple]:
        if self.paired:
            return self.encoder.tokenize_texts(
                [text for _, text in ready], [not item.conversational for item, _ in ready]
            )
        results = []
        for example, _ in ready:  # KTO: one example at a time
            try:
                results.append(self.encoder(example))
            except RowError as error:  # its chat template fails
                results.append((None, error))
        return results

    def _encode_each(self, ready: list[tuple]) -> list[tuple]:
        results = []
        for item, text in ready:
            try:
                results.extend(self._encode_all([(item, text)]))
            except PrefoptError:
                raise
            except Exception as error:  # never a traceback from deep inside a tokenizer
                results.append((None, untokenizable_error(item.where, error)))
        return results


def _decode_one(batch: dict[str, list], k: int, numbers, spec: RowSpec) -> dict[str, Any]:
    return decode_rows(
        {name: values[k : k + 1] for name, values in batch.items()}, numbers[k : k + 1], spec
    )[0]


def _empty_completions(item) -> int:
    if isinstance(item, Example):
        return int(is_empty(item.completion))
    return int(is_empty(item.chosen)) + int(is_empty(item.rejected))


class _Output:
    """The columns of one mapped batch: a row per example, a row per problem."""

    def __init__(self, schema: pa.Schema):
        self.schema = schema
        # A problem row's example columns: empty ids, zero lengths, not desirable.
        self.blank = {
            f.name: []
            if pa.types.is_list(f.type)
            else (False if pa.types.is_boolean(f.type) else 0)
            for f in schema
            if f.name not in _BOOKKEEPING
        }
        self.columns: dict[str, list] = {f.name: [] for f in schema}

    def example(self, example: dict, pair: int, side: int, empty: int) -> None:
        for name in self.blank:
            self.columns[name].append(example[name])
        self._bookkeeping(None, pair, side, empty)

    def problem(self, pair: int, stage: int, error: PrefoptError, side: int = -1) -> None:
        for name, value in self.blank.items():
            self.columns[name].append(value)
        self._bookkeeping((stage, error), pair, side, 0)

    def table(self) -> pa.Table:
        """The columns as an Arrow table. Token ids go in through numpy, flattened: converting
        lists of Python ints one by one costs more than tokenizing them."""
        arrays = [
            _int32_lists(self.columns[f.name])
            if pa.types.is_list(f.type)
            else pa.array(self.columns[f.name], type=f.type)
            for f in self.schema
        ]
        return pa.Table.from_arrays(arrays, schema=self.schema)

    def _bookkeeping(self, problem, pair: int, side: int, empty: int) -> None:
        stage, error = problem if problem else (-1, None)
        self.columns["problem"].append(str(error) if error else None)
        self.columns["problem_reason"].append(getattr(error, "reason", None))
        self.columns["problem_field"].append(getattr(error, "field", None))
        self.columns["problem_stage"].append(stage)
        self.columns["pair"].append(pair)
        self.columns["side"].append(side)
        self.columns["empty_completions"].append(empty)


def _int32_lists(lists: list[list[int]]) -> pa.Array:
    lengths = np.fromiter(map(len, lists), dtype=np.int32, count=len(lists))
    offsets = np.zeros(len(lists) + 1, dtype=np.int32)
    np.cumsum(lengths, out=offsets[1:])
    values = np.fromiter(
        itertools.chain.from_iterable(lists), dtype=np.int32, count=int(offsets[-1])
    )
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(values))


# ---------------------------------------------------------------------------------------------
# The cache


def cache_root(cfg: DataConfig) -> Path:
    if cfg.cache_dir:
        return Path(cfg.cache_dir)
    root = os.environ.get("PREFOPT_CACHE")
    return (Path(root) if root else Path.home() / ".cache" / "prefopt") / "data" / "prepared"


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
        return f"{path_or_name}:{split}:{load_split(path_or_name, split)._fingerprint}"
    except PrefoptError:
        raise
    except Exception:
        return f"{path_or_name}:{split}:unreadable"  # loading it again will say why


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
