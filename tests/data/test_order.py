"""Resumable batch order: the same batches as before, and a resumed epoch skips what was done."""

import torch
from torch.utils.data import DataLoader

from prefopt.data.datamodule import FixedBatches
from prefopt.data.order import ResumableBatches, ResumableLoader, ShuffledBatches


def test_shuffled_batches_are_what_a_seeded_shuffling_loader_yields_epoch_by_epoch():
    loader = DataLoader(
        list(range(37)), batch_size=5, shuffle=True, generator=torch.Generator().manual_seed(3)
    )
    sampler = ShuffledBatches(37, 5, seed=3)
    for _ in range(3):
        assert [b.tolist() for b in loader] == list(sampler)


def epochs(make_sampler, n_epochs=3):
    sampler = make_sampler()
    return [list(sampler) for _ in range(n_epochs)]


def loader(make_sampler, progress=lambda: 0):
    batches = ResumableBatches(make_sampler())
    return ResumableLoader(list(range(37)), batch_sampler=batches, progress=progress)


def test_a_resumed_loader_continues_where_the_checkpoint_was_taken():
    for make in (lambda: ShuffledBatches(37, 5, seed=3), lambda: FixedBatches(37, 5, seed=3)):
        expected = epochs(make)
        first = loader(make, progress=lambda: 2)
        seen = [[b.tolist() for b in first] for _ in range(2)]  # no set_epoch: epoch after epoch
        assert seen == expected[:2] and seen[0] != seen[1]
        state = first.position()
        assert state == {"epoch": 1, "batches_done": 2}

        resumed = loader(make)
        resumed.resume_from(state)
        assert [b.tolist() for b in resumed] == expected[1][2:]
        assert [b.tolist() for b in resumed] == expected[2]

        at_epoch_end = loader(make)
        at_epoch_end.resume_from({"epoch": 1, "batches_done": 8})
        assert [b.tolist() for b in at_epoch_end] == expected[2]


def test_lightning_s_set_epoch_picks_the_epoch():
    make = lambda: ShuffledBatches(37, 5, seed=3)  # noqa: E731
    expected = epochs(make)
    resumable = loader(make)
    resumable.batch_sampler.sampler.set_epoch(2)
    assert [b.tolist() for b in resumable] == expected[2]


def test_a_position_given_after_the_iterator_was_made_counts_until_the_first_batch():
    """Lightning makes the loader's iterator before it restores the position with FSDP: the
    batches (here drawn for a worker process) start only with the first one asked for."""
    make = lambda: ShuffledBatches(37, 5, seed=3)  # noqa: E731
    expected = epochs(make)
    batches = ResumableBatches(make())
    resumable = ResumableLoader(
        list(range(37)), batch_sampler=batches, progress=lambda: 0, num_workers=1
    )
    iterator = iter(resumable)
    resumable.resume_from({"epoch": 1, "batches_done": 3})
    assert [b.tolist() for b in iterator] == expected[1][3:]
