"""A loss's running state (BCO's reward baseline) in the module: updated by training steps
only, averaged across ranks, and carried through a checkpoint so that a resumed run continues
with it."""

import torch
from torch.utils.data import DataLoader

from prefopt.config.schema import OptimConfig
from prefopt.losses import BCOPairLoss, DPOLoss
from prefopt.reference.online import OnlineReference
from prefopt.training.module import PreferenceModule

from ..conftest import hand_batch, quiet_trainer, tiny_llama


def bco_module(loss=None) -> PreferenceModule:
    return PreferenceModule(
        tiny_llama(seed=0),
        loss or BCOPairLoss(beta=0.5),
        # Constant lr: a run cut after one epoch takes the same steps as the first half of two.
        OptimConfig(lr=1e-2, warmup_ratio=0.0, scheduler="constant"),
        reference=OnlineReference(tiny_llama(seed=1)),
    )


def two_batches() -> DataLoader:
    second = hand_batch()
    second["input_ids"] = torch.where(second["input_ids"] > 4, second["input_ids"] + 9, 0)
    second["input_ids"][:, 0] = 1
    second["input_ids"][second["completion_mask"] & (second["input_ids"] == 0)] = 2
    return DataLoader([hand_batch(), second], batch_size=None)


def test_training_steps_move_the_baseline_across_ranks_and_validation_does_not(monkeypatch):
    module = bco_module()
    seen = []

    def across_ranks(value):
        seen.append(value.item())
        return value + 1.0  # as if the other ranks' mean were 2 higher, over 2 ranks

    monkeypatch.setattr(module, "_mean_across_devices", across_ranks)
    with torch.no_grad():
        val = module.compute_loss(hand_batch(), "val")
        assert module.loss.baseline_count == 0 and seen == []
        assert val.metrics["reward_baseline"].item() == 0.0
        train = module.compute_loss(hand_batch(), "train")
    assert len(seen) == 1 and module.loss.baseline_count == 1
    rewards = torch.cat([train.metrics["rewards/chosen"], train.metrics["rewards/rejected"]])
    assert seen[0] == rewards.mean().item()  # the local batch mean, then the cross-rank one
    assert train.metrics["reward_baseline"].item() == torch.tensor(seen[0] + 1.0).item()


def test_a_resumed_run_continues_with_the_baseline_of_the_checkpoint(tmp_path):
    """Two epochs in one go, and one epoch + a checkpoint + a resumed second epoch, end with the
    same baseline over the same 4 steps. A resume that lost it would average 2 steps only."""
    straight = bco_module()
    quiet_trainer(tmp_path / "a", max_epochs=2).fit(straight, train_dataloaders=two_batches())
    assert straight.loss.baseline_count == 4

    first = bco_module()
    trainer = quiet_trainer(tmp_path / "b", max_epochs=1)
    trainer.fit(first, train_dataloaders=two_batches())
    checkpoint = tmp_path / "epoch1.ckpt"
    trainer.save_checkpoint(checkpoint)
    saved = torch.load(checkpoint, weights_only=True)["loss_state"]
    assert int(saved["baseline_count"]) == 2
    assert saved["baseline"].item() == first.loss.baseline.item()

    resumed = bco_module()
    quiet_trainer(tmp_path / "c", max_epochs=2).fit(
        resumed, train_dataloaders=two_batches(), ckpt_path=checkpoint
    )
    assert resumed.loss.baseline_count == 4
    torch.testing.assert_close(resumed.loss.baseline, straight.loss.baseline, rtol=1e-6, atol=1e-7)
    assert straight.loss.baseline.item() != first.loss.baseline.item()  # the state did move


def test_a_stateless_loss_adds_nothing_to_the_checkpoint():
    checkpoint = {}
    bco_module(DPOLoss()).on_save_checkpoint(checkpoint)
    assert checkpoint == {}
