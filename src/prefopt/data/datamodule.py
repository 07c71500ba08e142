"""`PreferenceDataModule`: prepared (tokenized, cached) data, batched for the trainer."""

from __future__ import annotations

import functools
import logging
from collections import Counter
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader, Sampler

from prefopt.config.schema import DataConfig
from prefopt.data.cache import SplitReport
from prefopt.data.collate import collate_pairs, longest_first_batches
from prefopt.data.examples import ExampleTable
from prefopt.data.order import ResumableBatches, ResumableLoader, ShuffledBatches
from prefopt.data.packing import collate_packed_pairs
from prefopt.data.prepare import prepare_data
from prefopt.data.sources import ToyWorldFiles
from prefopt.data.summary import SplitSummary, mean_token_lengths, split_counts, split_origins
from prefopt.data.tokenize import (
    DROPPED_IDENTICAL,
    DROPPED_TOO_LONG,
    DROPPED_TRUNCATED_IDENTICAL,
)
from prefopt.data.unpaired import collate_unpaired
from prefopt.data.validate import InvalidRows
from prefopt.errors import PrefoptError

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
        self.train_examples: ExampleTable | None = None
        self.val_examples: ExampleTable | None = None
        self.stats: dict[str, int] = {}
        self.packed_layout: dict[str, bool] | None = None
        """Set by `pack_batches`: paired batches also carry their packed layout."""
        self.fingerprint: str | None = None
        """The prepared data's cache key: changes whenever any token id could."""
        self.layout: str | None = None
        """The row layout the data was read in (set by `setup`)."""
        self._train_loader: ResumableLoader | None = None
        self._resume_position: dict[str, int] | None = None

    def setup(self, stage: str | None = None) -> None:
        if self.train_examples is not None:
            return  # fit, validate and test all call setup; the data is built once
        prepared = prepare_data(self.cfg, self.tokenizer, self.toy_world, self.paired)
        self.stats = {}
        for split, report in prepared.reports.items():
            self.stats.update(_split_stats(split, report, self.paired))
            self._log_report(split, report)
        self.train_examples = ExampleTable(prepared.train)
        self.val_examples = ExampleTable(prepared.val)
        self.fingerprint = prepared.key
        self.layout = prepared.layout
        log.info("data (%s layout): %s", prepared.layout, self.stats)

    def summaries(self) -> list[SplitSummary]:
        """What each split is (train, then val): where its rows came from, the prepared data's
        key, its counts and mean token lengths; for the record of what a run trained on."""
        self._require_setup()
        origins = split_origins(self.cfg, self.toy_world)
        return [
            SplitSummary(
                split=split,
                origin=origins[split],
                key=self.fingerprint,
                layout=self.layout,
                counts=split_counts(self.stats, split),
                mean_tokens=mean_token_lengths(examples.dataset),
            )
            for split, examples in (("train", self.train_examples), ("val", self.val_examples))
        ]

    def _log_report(self, split: str, report: SplitReport) -> None:
        dropped = Counter(report.dropped)
        if dropped[DROPPED_TOO_LONG]:
            log.warning(
                "%s: dropped %d of %d pairs that do not fit max_length=%d (max_prompt_length=%d) "
                "with a completion left that tells chosen from rejected",
                split,
                dropped[DROPPED_TOO_LONG],
                report.rows,
                self.cfg.max_length,
                self.cfg.max_prompt_length,
            )
        if dropped[DROPPED_TRUNCATED_IDENTICAL]:
            # They would cost −log σ(0) and teach nothing, whatever the model does.
            log.warning(
                "%s: dropped %d of %d pairs whose chosen and rejected are the same text once "
                "truncated to max_length=%d (ln 2 and no gradient); raise data.max_length",
                split,
                dropped[DROPPED_TRUNCATED_IDENTICAL],
                report.rows,
                self.cfg.max_length,
            )
        if dropped[DROPPED_IDENTICAL]:
            log.warning(
                "%s: dropped %d of %d pairs whose chosen and rejected are identical",
                split,
                dropped[DROPPED_IDENTICAL],
                report.rows,
            )
        if report.empty_completions:
            log.info(
                "%s: %d empty completions (kept: trained as EOS alone, a preference for saying "
                "nothing)",
                split,
                report.empty_completions,
            )
        InvalidRows.report_counts(split, report.rows, dropped, report.first)

    def pack_batches(self, shared_prefix: bool, padding_free: bool) -> None:
        """Paired batches also carry their packed layout (`packing.collate_packed_pairs`),
        computed with the batch: in the DataLoader's workers when there are some, not in the
        training step. Set once the policy is known to take packed pairs."""
        if self.paired:
            self.packed_layout = {
                "shared_prefix": shared_prefix,
                "padding_free": padding_free,
                "row_tokens": self.cfg.packing_row_tokens,
            }

    def collate_fn(self):
        """How this data's examples become a batch (padded, packed or unpaired): the loaders' and
        the online rounds' `collate_fn`."""
        # A partial of a module-level function pickles, so worker processes can receive it.
        if not self.paired:
            return functools.partial(collate_unpaired, pad_token_id=self.pad_token_id)
        if self.packed_layout:
            return functools.partial(
                collate_packed_pairs, pad_token_id=self.pad_token_id, **self.packed_layout
            )
        return functools.partial(collate_pairs, pad_token_id=self.pad_token_id)

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
        self._train_loader = ResumableLoader(
            self.train_examples,
            batch_sampler=ResumableBatches(batches),
            collate_fn=self.collate_fn(),
            num_workers=self.cfg.num_workers,
            progress=self._batches_done,
        )
        if self._resume_position is not None:
            self._train_loader.resume_from(self._resume_position)
            self._resume_position = None
        return self._train_loader

    def state_dict(self) -> dict[str, Any]:
        """The training loader's position in its epoch; Lightning saves it with a checkpoint."""
        if self._train_loader is None:
            return {}
        return {"train_position": self._train_loader.position()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """The saved position, handed back by Lightning on resume before it asks for the
        training loader (with FSDP after it, but before the loader's first batch)."""
        self._resume_position = state_dict.get("train_position")
        if self._train_loader is not None and self._resume_position is not None:
            self._train_loader.resume_from(self._resume_position)
            self._resume_position = None

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
        # metrics are means over every rank's examples (training/metrics.py).
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
            split: self._loader(
                examples, batch_sampler=longest_first_batches(examples.lengths(), size)
            )
            for split, examples in (("train", self.train_examples), ("val", self.val_examples))
            if examples
        }

    def _loader(self, examples: list, **kwargs) -> DataLoader:
        return DataLoader(
            examples, collate_fn=self.collate_fn(), num_workers=self.cfg.num_workers, **kwargs
        )

    def _require_setup(self) -> None:
        if self.train_examples is None:
            raise RuntimeError(
                "PreferenceDataModule.setup() must run before asking for dataloaders"
            )


def _split_stats(split: str, report: SplitReport, paired: bool) -> dict[str, int]:
    dropped = Counter(report.dropped)
    stats = {
        f"{split}_rows": report.rows,
        f"{split}_{'pairs' if paired else 'examples'}": report.kept,
        f"{split}_dropped_too_long": dropped[DROPPED_TOO_LONG],
        f"{split}_dropped_identical": dropped[DROPPED_IDENTICAL],
    }
    stats.update({f"{split}_dropped_{reason}": n for reason, n in sorted(dropped.items())})
    stats[f"{split}_empty_completions"] = report.empty_completions
    if not paired:
        stats[f"{split}_desirable"] = report.desirable or 0
        stats[f"{split}_undesirable"] = report.kept - stats[f"{split}_desirable"]
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
