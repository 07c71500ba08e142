"""Training batch order that a checkpoint can resume in the middle of an epoch.

Batch samplers here draw each epoch's order from a generator seeded once, at the start of the
epoch, so epoch e's batches depend only on the seed and e. `ResumableBatches` wraps such a
sampler: to resume at (epoch e, batch k) it replays the orders of epochs 0..e-1 (permutations
only, no data is loaded) and skips the first k batches of epoch e. The data module saves the
loader's position (epoch, batches done) in its `state_dict`, which Lightning writes with each
checkpoint and hands back on resume (`ResumableLoader`). Any deterministic batch sampler can be wrapped, e.g. a rank's shard.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

import torch
from torch.utils.data import DataLoader, Sampler


class ShuffledBatches(Sampler[list[int]]):
    """What `DataLoader(shuffle=True, generator=Generator().manual_seed(seed))` yields, epoch by
    epoch: per epoch the loader's iterator draws a base seed from the generator, then
    `RandomSampler` draws the permutation and a second one for its (empty) remainder. All are
    drawn when the epoch starts, so an epoch left half-way does not shift the next ones.

    With `world` ranks, rank r gets its share of the batches one process would draw with
    `world × batch_size`: items r, r + world, … of each global batch. Every example comes once
    per epoch, with no duplicates, and the global batches (hence the gradient steps) are those of
    one process with the whole batch. A last global batch with fewer than `world` examples is
    left out.
    """

    def __init__(self, n: int, batch_size: int, seed: int, rank: int = 0, world: int = 1):
        self.n, self.batch_size, self.rank, self.world = n, batch_size, rank, world
        self.generator = torch.Generator().manual_seed(seed)

    def __iter__(self):
        torch.empty((), dtype=torch.int64).random_(generator=self.generator)
        order = torch.randperm(self.n, generator=self.generator).tolist()
        torch.randperm(self.n, generator=self.generator)
        step = self.batch_size * self.world
        for start in range(0, self.n, step):
            global_batch = order[start : start + step]
            if len(global_batch) >= self.world:
                yield global_batch[self.rank :: self.world]

    def __len__(self) -> int:
        full, rest = divmod(self.n, self.batch_size * self.world)
        return full + (rest >= self.world)


class _Epoch:
    """What Lightning calls `set_epoch` on (it looks for `batch_sampler.sampler`)."""

    def __init__(self) -> None:
        self.epoch: int | None = None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch


class ResumableBatches(Sampler[list[int]]):
    def __init__(self, batches: Iterable[list[int]]):
        """`batches`: a batch sampler whose successive iterations are deterministic epochs."""
        self.batches = batches
        self.sampler = _Epoch()
        self.current_epoch = -1
        self._epochs_drawn = 0
        self._resume_at: tuple[int, int] | None = None

    def resume_at(self, epoch: int, batches_done: int) -> None:
        self._resume_at = (epoch, batches_done)

    def __iter__(self):
        """The epoch Lightning set (`set_epoch`), else the one after the last (plain loops)."""
        if self._resume_at is not None:
            epoch, skip = self._resume_at
        elif self.sampler.epoch is not None:
            epoch, skip = self.sampler.epoch, 0
        else:
            epoch, skip = self.current_epoch + 1, 0
        self._resume_at, self.sampler.epoch = None, None
        if epoch < self._epochs_drawn:
            raise RuntimeError(f"epoch {epoch} was drawn already; build a new loader to go back")
        while self._epochs_drawn < epoch:  # replay earlier epochs' draws
            for _ in self.batches:
                pass
            self._epochs_drawn += 1
        self._epochs_drawn += 1
        self.current_epoch = epoch
        for i, batch in enumerate(self.batches):
            if i >= skip:
                yield batch

    def __len__(self) -> int:
        return len(self.batches)


class ResumableLoader(DataLoader):
    """A DataLoader over `ResumableBatches` that reports and takes a position in the epoch.

    `progress()` is the number of batches of the current epoch the trainer has finished
    (prefetching means the loader itself has handed out more than that). The data module saves
    `position()` with each checkpoint and gives it back to `resume_from` on resume.
    """

    def __init__(self, *args, progress: Callable[[], int], **kwargs):
        super().__init__(*args, **kwargs)
        self.progress = progress

    def position(self) -> dict[str, int]:
        epoch = max(self.batch_sampler.current_epoch, 0)
        return {"epoch": epoch, "batches_done": int(self.progress())}

    def resume_from(self, position: dict[str, int]) -> None:
        """Start the next iteration at `position`; before the first batch is drawn."""
        epoch, done = position["epoch"], position["batches_done"]
        if done >= len(self.batch_sampler):  # saved at the end of an epoch: the next one
            epoch, done = epoch + 1, 0
        self.batch_sampler.resume_at(epoch, done)

    def __iter__(self):
        # Lightning asks for the iterator as soon as it builds the loader, which with FSDP is
        # before the checkpoint's position arrives, and worker processes would draw the first
        # batches at once: the real iterator starts with the first batch asked for.
        return _StartsOnFirstBatch(super().__iter__)


class _StartsOnFirstBatch:
    def __init__(self, start: Callable[[], Iterator]):
        self._start, self._iterator = start, None

    def __iter__(self):
        return self

    def __next__(self):
        if self._iterator is None:
            self._iterator = self._start()
        return next(self._iterator)
