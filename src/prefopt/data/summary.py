"""What a run trained and validated on, split by split: where the rows came from, the prepared
data's key, the counts of preparation and the mean token lengths. `PreferenceDataModule.
summaries()` gives them; tracking records them as the run's datasets."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from prefopt.config.schema import DataConfig
from prefopt.data.sources import ToyWorldFiles

_BATCH = 16384


@dataclass(frozen=True)
class DataOrigin:
    """Where a split's rows were read."""

    kind: str
    """`toy` (a toy world's file), `file` (a local file or dataset folder) or `hub` (a Hugging
    Face dataset by name)."""
    location: str
    """The absolute path, or the hub dataset's name."""
    split: str | None = None
    """The dataset split read (hub datasets and dataset folders); None for a file."""
    held_out: float | None = None
    """Validation carved out of the training rows (`data.val_fraction`): that fraction."""
    toy_world: str | None = None
    """The toy world's cache key (the name of its folder)."""


@dataclass(frozen=True)
class SplitSummary:
    split: str
    """`train` or `val`."""
    origin: DataOrigin
    key: str
    """The prepared data's cache key (both splits share it): changes whenever any token id could."""
    layout: str
    """The row layout the data was read in (explicit, conversational, unpaired, ...)."""
    counts: dict[str, int] = field(default_factory=dict)
    """The split's `stats` without its prefix: rows, pairs (or examples), dropped_<reason>, ..."""
    mean_tokens: dict[str, float] = field(default_factory=dict)
    """Mean tokens per kept pair or example: prompt, chosen, rejected (or completion)."""


def split_origins(cfg: DataConfig, toy_world: ToyWorldFiles | None) -> dict[str, DataOrigin]:
    """Where `sources.load_rows` reads the train and val rows of `cfg` (same decisions)."""
    if cfg.source == "toy":  # setup has failed already without a toy world
        key = Path(toy_world.train_path).parent.name
        return {
            split: DataOrigin("toy", str(Path(path).resolve()), toy_world=key)
            for split, path in (("train", toy_world.train_path), ("val", toy_world.val_path))
        }
    train = _origin(cfg.source, cfg.path or "", cfg.split)
    if cfg.val_path:
        val = _origin(cfg.source, cfg.val_path, cfg.val_split or cfg.split)
    elif cfg.val_split:
        val = _origin(cfg.source, cfg.path or "", cfg.val_split)
    else:
        val = DataOrigin(train.kind, train.location, train.split, held_out=cfg.val_fraction)
    return {"train": train, "val": val}


def _origin(source: str, path_or_name: str, split: str) -> DataOrigin:
    path = Path(path_or_name)
    if path.is_file():
        return DataOrigin("file", str(path.resolve()))
    if path.is_dir():
        return DataOrigin("file", str(path.resolve()), split)
    return DataOrigin("hub" if source == "hub" else "file", path_or_name, split)


def split_counts(stats: dict[str, int], split: str) -> dict[str, int]:
    """The data module's `stats` of one split, without the `<split>_` prefix."""
    prefix = f"{split}_"
    return {k[len(prefix) :]: v for k, v in stats.items() if k.startswith(prefix)}


def mean_token_lengths(dataset: Any) -> dict[str, float]:
    """Mean prompt and completion tokens of a prepared split (a `datasets.Dataset`), read from
    the Arrow columns batch by batch; {} for an empty split."""
    import pyarrow.compute as pc

    if len(dataset) == 0:
        return {}
    paired = "chosen_input_ids" in dataset.column_names
    sides = ("chosen", "rejected") if paired else ("",)
    names = []
    for side in sides:
        prefix = f"{side}_" if side else ""
        names += [f"{prefix}input_ids", f"{prefix}prompt_length"]
    totals = dict.fromkeys(["prompt", *(side or "completion" for side in sides)], 0)
    columns = dataset.select_columns(names).with_format("arrow")
    for batch in columns.iter(batch_size=_BATCH):
        for side in sides:
            prefix = f"{side}_" if side else ""
            prompt = batch[f"{prefix}prompt_length"].to_numpy()
            total = pc.list_value_length(batch[f"{prefix}input_ids"]).to_numpy()
            totals[side or "completion"] += int(np.sum(total - prompt))
            if side != "rejected":  # a pair's prompt counts once
                totals["prompt"] += int(np.sum(prompt))
    return {name: round(total / len(dataset), 2) for name, total in totals.items()}


def length_spread(dataset: Any, max_length: int, max_prompt_length: int) -> dict[str, Any]:
    """How a prepared split's token lengths sit against the length budget: the longest and the
    95th-percentile sequence (a pair's longer side, or a KTO example), and how many reached
    `max_length` or have a prompt of `max_prompt_length` tokens. Truncation leaves a sequence at
    one of those two caps (the completion is cut to fill `max_length`, or the prompt was cut to
    `max_prompt_length` first), so `at_a_cap` counts every truncated pair, and also a pair that
    was exactly that long already: an upper bound on truncation. {} for an empty split."""
    import pyarrow.compute as pc

    if len(dataset) == 0:
        return {}
    paired = "chosen_input_ids" in dataset.column_names
    sides = ("chosen_", "rejected_") if paired else ("",)
    names = [f"{side}{column}" for side in sides for column in ("input_ids", "prompt_length")]
    longest, at_cap, prompt_at_cap = [], 0, 0
    for batch in dataset.select_columns(names).with_format("arrow").iter(batch_size=_BATCH):
        total = np.max(
            [pc.list_value_length(batch[f"{side}input_ids"]).to_numpy() for side in sides], axis=0
        )
        prompt = np.max([batch[f"{side}prompt_length"].to_numpy() for side in sides], axis=0)
        longest.append(total)
        full, cut = total >= max_length, prompt >= max_prompt_length
        at_cap += int(np.sum(full | cut))
        prompt_at_cap += int(np.sum(cut))
    lengths = np.concatenate(longest)
    return {
        "longest_tokens": int(lengths.max()),
        "p95_tokens": int(np.percentile(lengths, 95, method="higher")),
        "at_a_cap": at_cap,
        "prompt_at_max_prompt_length": prompt_at_cap,
    }
