"""`PreferenceDataModule`: load -> normalise -> tokenize once, then batch for the trainer."""

from __future__ import annotations

import functools
import logging
from collections import Counter
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader, Sampler

from prefopt.config import DataConfig
from prefopt.data.collate import collate_pairs, longest_first_batches
from prefopt.data.formats import detect_format, normalise
from prefopt.data.order import ResumableBatches, ResumableLoader, ShuffledBatches
from prefopt.data.sources import Rows, ToyWorldFiles, load_rows
from prefopt.data.tokenize import (
    DROPPED_IDENTICAL,
    DROPPED_TOO_LONG,
    PairTokenizer,
    TokenizedPair,
    tokenize_pairs,
)
from prefopt.data.unpaired import (
    ExampleTokenizer,
    TokenizedExample,
    collate_unpaired,
    is_unpaired,
    normalise_unpaired,
    split_pairs,
)
from prefopt.data.validate import InvalidRows
from prefopt.errors import PrefoptError, RowError

log = logging.getLogger("prefopt.data")


class PreferenceDataModule(L.LightningDataModule):
    """Preference pairs from the configured source as batches for one concatenated forward.

    After `setup`, `train_examples` / `val_examples` hold the tokenized pairs (evaluation reads
    their `prompt_input_ids`), and `stats` counts rows, kept pairs and dropped pairs per split,
    for the trainer to log.
    """

    def __init__(
        self,
        cfg: DataConfig,
        tokenizer: Any,
        toy_world: ToyWorldFiles | None = None,
        paired: bool = True,
    ):
        """`paired=False` (KTO) yields labelled examples: unpaired rows as they are, paired rows
        split into a desirable and an undesirable example each (see `unpaired.py`)."""
        super().__init__()
        self.cfg = cfg
        self.paired = paired
        self.tokenizer = tokenizer
        self.toy_world = toy_world
        if tokenizer.pad_token_id is None:
            if tokenizer.eos_token_id is None:
                raise PrefoptError(
                    "the tokenizer has neither a pad nor an eos token; give it a pad token"
                )
            # Padding is masked out everywhere, so any id works; eos is the customary stand-in,
            # and setting it on the tokenizer keeps generation and export consistent with training.
            tokenizer.pad_token = tokenizer.eos_token
            log.info("tokenizer has no pad token; using eos %r as pad", tokenizer.eos_token)
        self.pad_token_id: int = tokenizer.pad_token_id
        self.train_examples: list[TokenizedPair] | list[TokenizedExample] | None = None
        self.val_examples: list[TokenizedPair] | list[TokenizedExample] | None = None
        self.stats: dict[str, int] = {}

    def setup(self, stage: str | None = None) -> None:
        if self.train_examples is not None:
            return  # fit, validate and test all call setup; the data is built once
        train_rows, val_rows = load_rows(self.cfg, self.toy_world)
        if len(train_rows) == 0:
            raise PrefoptError(f"{train_rows.origin}: no training rows")
        layout = self._layout(train_rows)
        stats: dict[str, int] = {}
        examples = {}
        for split, rows in (("train", train_rows), ("val", val_rows)):
            invalid = InvalidRows(self.cfg.on_invalid, split)
            if self.paired:
                kept, _ = self._tokenize_pairs(split, rows, layout, invalid)
                stats.update(_split_stats(split, len(rows), len(kept), invalid.counts))
            else:
                kept, _ = self._tokenize_examples(split, rows, layout, invalid)
                stats.update(
                    _split_stats(split, len(rows), len(kept), invalid.counts, unit="examples")
                )
                stats[f"{split}_desirable"] = sum(e["desirable"] for e in kept)
                stats[f"{split}_undesirable"] = len(kept) - stats[f"{split}_desirable"]
            self._log_dropped(split, len(rows), invalid.counts)
            invalid.report(len(rows))
            examples[split] = kept
        if not examples["train"]:
            dropped = {k: v for k, v in stats.items() if k.startswith("train_dropped_") and v}
            raise PrefoptError(
                f"{train_rows.origin}: no training data left after filtering "
                f"({len(train_rows)} rows, dropped: {dropped or 'none'}); check the data "
                "(see the log), or raise data.max_length if the rows are too long"
            )
        for kept in examples.values():
            for index, example in enumerate(kept):
                example["index"] = index  # lets a reference cache look rows up
        self.train_examples, self.val_examples = examples["train"], examples["val"]
        self.stats = stats
        log.info("data (%s layout): %s", layout, stats)

    def _layout(self, rows: Rows) -> str:
        if self.cfg.format == "unpaired" or (
            self.cfg.format == "auto" and len(rows) and is_unpaired(rows.rows[0])
        ):
            if self.paired:
                raise PrefoptError(
                    f"{rows.origin}: holds unpaired (prompt, completion, label) rows, but this loss "
                    "trains on pairs (prompt, chosen, rejected); use loss=kto or paired data"
                )
            return "unpaired"
        if self.cfg.format != "auto":
            return self.cfg.format
        try:
            return detect_format(rows, tolerant=self.cfg.on_invalid == "skip")
        except RowError as error:
            InvalidRows(self.cfg.on_invalid).record(error)  # raises, with the hint to skip
            raise

    def _tokenize_pairs(self, split: str, rows: Rows, layout: str, invalid: InvalidRows):
        pair_tokenizer = PairTokenizer(
            self.tokenizer, self.cfg.max_length, self.cfg.max_prompt_length
        )
        pairs = normalise(rows, layout, invalid)
        return tokenize_pairs(pairs, pair_tokenizer, desc=f"tokenizing {split}", invalid=invalid)

    def _tokenize_examples(self, split: str, rows: Rows, layout: str, invalid: InvalidRows):
        if layout == "unpaired":
            examples = normalise_unpaired(rows, invalid)
        else:
            examples = split_pairs(normalise(rows, layout, invalid), seed=self.cfg.seed)
        example_tokenizer = ExampleTokenizer(
            self.tokenizer, self.cfg.max_length, self.cfg.max_prompt_length
        )
        return tokenize_pairs(
            examples, example_tokenizer, desc=f"tokenizing {split}", invalid=invalid
        )

    def _log_dropped(self, split: str, total: int, dropped: Counter[str]) -> None:
        if dropped[DROPPED_TOO_LONG]:
            log.warning(
                "%s: dropped %d of %d pairs that do not fit max_length=%d (max_prompt_length=%d) "
                "with a completion left that tells chosen from rejected",
                split,
                dropped[DROPPED_TOO_LONG],
                total,
                self.cfg.max_length,
                self.cfg.max_prompt_length,
            )
        if dropped[DROPPED_IDENTICAL]:
            log.warning(
                "%s: dropped %d of %d pairs whose chosen and rejected are identical",
                split,
                dropped[DROPPED_IDENTICAL],
                total,
            )

    def _collate(self):
        # A partial of a module-level function pickles, so worker processes can receive it.
        collate = collate_pairs if self.paired else collate_unpaired
        return functools.partial(collate, pad_token_id=self.pad_token_id)

    def train_dataloader(self) -> DataLoader:
        """Batches in an order fixed by (data.seed, epoch), resumable mid-epoch (`order.py`)."""
        self._require_setup()
        n, size, seed = len(self.train_examples), self.cfg.batch_size, self.cfg.seed
        rank, world = self._rank_and_world()
        if not self.paired:
            # KTO pairs each prompt with another completion of its batch; fixed batches make
            # those mismatched rows the same every epoch, so their reference log-probs can be
            # cached. Batch order is still reshuffled each epoch.
            batches = FixedBatches(n, size, seed, rank=rank, world=world)
        else:
            batches = ShuffledBatches(n, size, seed, rank, world)
        return ResumableLoader(
            self.train_examples,
            batch_sampler=ResumableBatches(batches),
            collate_fn=self._collate(),
            num_workers=self.cfg.num_workers,
            progress=self._batches_done,
        )

    def _batches_done(self) -> int:
        """Training batches the trainer has finished in the current epoch."""
        return self.trainer.fit_loop.epoch_loop.batch_progress.current.processed

    def val_dataloader(self) -> DataLoader | list:
        self._require_setup()
        if not self.val_examples:
            return []  # Lightning skips validation for an empty list
        rank, world = self._rank_and_world()
        if world == 1:
            return self._loader(self.val_examples, batch_size=self.cfg.eval_batch_size)
        # Whole single-process batches, dealt out to the ranks (KTO's mismatched rows, and so
        # its cached reference log-probs, depend on the batch); no padding, no duplicates:
        # metrics are reduced as sums and counts (MetricSums).
        n, size = len(self.val_examples), self.cfg.eval_batch_size
        batches = [list(range(i, min(i + size, n))) for i in range(0, n, size)]
        if len(batches) < world:  # every rank needs a batch: split by example instead
            batches = [list(range(i, n, world)) for i in range(world)]
        return self._loader(self.val_examples, batch_sampler=batches[rank::world])

    def _rank_and_world(self) -> tuple[int, int]:
        trainer = getattr(self, "trainer", None)
        if trainer is None:
            return 0, 1
        return trainer.global_rank, trainer.world_size

    def reference_loaders(self) -> dict[str, DataLoader]:
        """Unshuffled loaders over every train and val example, batched as training batches
        them where that matters (KTO's mismatched rows), for precomputing reference log-probs."""
        self._require_setup()
        size = self.cfg.eval_batch_size
        if not self.paired:
            batches = FixedBatches(
                len(self.train_examples), self.cfg.batch_size, self.cfg.seed, shuffle=False
            )
            loaders = {"train": self._loader(self.train_examples, batch_sampler=batches)}
            if self.val_examples:
                loaders["val"] = self._loader(self.val_examples, batch_size=size)
            return loaders
        # Paired examples are scored independently of their batch: batch them by length.
        return {
            split: self._loader(examples, batch_sampler=longest_first_batches(examples, size))
            for split, examples in (("train", self.train_examples), ("val", self.val_examples))
            if examples
        }

    def _loader(self, examples: list, **kwargs) -> DataLoader:
        return DataLoader(
            examples, collate_fn=self._collate(), num_workers=self.cfg.num_workers, **kwargs
        )

    def _require_setup(self) -> None:
        if self.train_examples is None:
            raise RuntimeError(
                "PreferenceDataModule.setup() must run before asking for dataloaders"
            )


def _split_stats(
    split: str, rows: int, kept: int, dropped: Counter[str], unit: str = "pairs"
) -> dict[str, int]:
    stats = {
        f"{split}_rows": rows,
        f"{split}_{unit}": kept,
        f"{split}_dropped_too_long": dropped[DROPPED_TOO_LONG],
        f"{split}_dropped_identical": dropped[DROPPED_IDENTICAL],
    }
    stats.update({f"{split}_dropped_{reason}": n for reason, n in sorted(dropped.items())})
    return stats


class FixedBatches(Sampler[list[int]]):
    """Batches drawn once from a seeded permutation; only their order changes per epoch.

    With `world` ranks, each step takes `world` batches of the shuffled order, one per rank
    (the last < `world` batches of an epoch are left out, differently each epoch).
    """

    def __init__(
        self,
        n: int,
        batch_size: int,
        seed: int,
        shuffle: bool = True,
        rank: int = 0,
        world: int = 1,
    ):
        order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
        self.batches = [order[i : i + batch_size] for i in range(0, n, batch_size)]
        self.shuffle = shuffle
        self.generator = torch.Generator().manual_seed(seed + 1)
        self.rank, self.world = rank, world

    def __iter__(self):
        order = (
            torch.randperm(len(self.batches), generator=self.generator).tolist()
            if self.shuffle
            else list(range(len(self.batches)))
        )
        order = order[: len(self) * self.world]
        for i in order[self.rank :: self.world]:
            yield self.batches[i]

    def __len__(self) -> int:
        return len(self.batches) // self.world
