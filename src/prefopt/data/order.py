"""Training batch order that a checkpoint can resume in the middle of an epoch.

The order of every epoch is a pure function of (seed, epoch), so a resumed run replays the
interrupted epoch exactly and skips the batches it had already trained on. Lightning saves the
loader's `state_dict` (epoch, batches done) with each checkpoint and hands it back on resume.

`shuffled_batches` reproduces what `DataLoader(shuffle=True, generator=Generator().manual_seed(seed))`
yields in its `epoch`-th iteration (per iteration the loader draws a base seed from the
generator, then `RandomSampler` draws its permutation from it), so runs keep the order they had before
batches became resumable.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.utils.data import DataLoader, Sampler


def _draw(generator: torch.Generator) -> int:
    return int(torch.empty((), dtype=torch.int64).random_(generator=generator).item())


def shuffled_batches(n: int, batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    generator = torch.Generator().manual_seed(seed)
    for _ in range(epoch):  # earlier epochs: a base seed, the permutation, and a second
        _draw(generator)  # permutation RandomSampler draws for its (empty) remainder
        torch.randperm(n, generator=generator)
        torch.randperm(n, generator=generator)
    _draw(generator)
    order = torch.randperm(n, generator=generator).tolist()
    return [order[i : i + batch_size] for i in range(0, n, batch_size)]


def fixed_batches(n: int, batch_size: int, seed: int, epoch: int | None) -> list[list[int]]:
    """Batches drawn once from a seeded permutation; their order reshuffled per epoch
    (`epoch=None`: in their drawn order). KTO's batches, whose mismatched rows must not change."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    batches = [order[i : i + batch_size] for i in range(0, n, batch_size)]
    if epoch is None:
        return batches
    generator = torch.Generator().manual_seed(seed + 1)
    for _ in range(epoch):
        torch.randperm(len(batches), generator=generator)
    return [batches[i] for i in torch.randperm(len(batches), generator=generator).tolist()]


class _Epoch:
    """What Lightning calls `set_epoch` on (it looks for `batch_sampler.sampler`)."""

    def __init__(self) -> None:
        self.epoch: int | None = None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch


class ResumableBatches(Sampler[list[int]]):
    def __init__(self, make_batches: Callable[[int], list[list[int]]], num_batches: int):
        self.make_batches = make_batches
        self.num_batches = num_batches
        self.sampler = _Epoch()
        self.current_epoch = -1
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
        self.current_epoch = epoch
        yield from self.make_batches(epoch)[skip:]

    def __len__(self) -> int:
        return self.num_batches


class ResumableLoader(DataLoader):
    """A DataLoader over `ResumableBatches` with Lightning's stateful-loader interface.

    `progress()` is the number of batches of the current epoch the trainer has finished
    (prefetching means the loader itself has handed out more than that).
    """

    def __init__(self, *args, progress: Callable[[], int], **kwargs):
        super().__init__(*args, **kwargs)
        self.progress = progress

    def state_dict(self) -> dict[str, int]:
        epoch = max(self.batch_sampler.current_epoch, 0)
        return {"epoch": epoch, "batches_done": int(self.progress())}

    def load_state_dict(self, state: dict[str, int]) -> None:
        epoch, done = state["epoch"], state["batches_done"]
        if done >= len(self.batch_sampler):  # saved at the end of an epoch: the next one
            epoch, done = epoch + 1, 0
        self.batch_sampler.resume_at(epoch, done)
