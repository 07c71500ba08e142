"""Resumable batch order: the same batches as before, and a resumed epoch skips what was done."""

import torch
from torch.utils.data import DataLoader

from prefopt.data.datamodule import FixedBatches
from prefopt.data.order import ResumableBatches, ResumableLoader, fixed_batches, shuffled_batches


def test_shuffled_batches_are_what_a_seeded_shuffling_loader_yields_epoch_by_epoch():
    loader = DataLoader(
        list(range(37)), batch_size=5, shuffle=True, generator=torch.Generator().manual_seed(3)
    )
    for epoch in range(3):
        assert [b.tolist() for b in loader] == shuffled_batches(37, 5, 3, epoch)


def test_fixed_batches_are_kto_s_batches_reshuffled_per_epoch():
    sampler = FixedBatches(37, 5, seed=3)
    for epoch in range(3):
        assert list(sampler) == fixed_batches(37, 5, 3, epoch)
    assert sorted(map(tuple, fixed_batches(37, 5, 3, 0))) == sorted(
        map(tuple, fixed_batches(37, 5, 3, 1))
    )


def test_a_resumed_loader_continues_where_the_checkpoint_was_taken():
    def make(progress):
        batches = ResumableBatches(lambda epoch: shuffled_batches(20, 4, 0, epoch), 5)
        return ResumableLoader(list(range(20)), batch_sampler=batches, progress=progress)

    first = make(lambda: 2)
    epoch0 = [b.tolist() for b in first]
    epoch1 = [b.tolist() for b in first]  # without Lightning's set_epoch: the next epoch
    assert epoch0 != epoch1
    state = first.state_dict()
    assert state == {"epoch": 1, "batches_done": 2}

    resumed = make(lambda: 0)
    resumed.load_state_dict(state)
    assert [b.tolist() for b in resumed] == epoch1[2:]

    at_epoch_end = make(lambda: 0)
    at_epoch_end.load_state_dict({"epoch": 0, "batches_done": 5})
    assert [b.tolist() for b in at_epoch_end] == epoch1
