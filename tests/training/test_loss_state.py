"""A loss's running state (BCO's reward baseline) in the module: updated by training steps
only, averaged across ranks, and carried through a checkpoint so that a resumed run continues
with it."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader

from prefopt.config.schema import OptimConfig
from prefopt.losses import BCOPairLoss, DPOLoss, MixLoss
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
    ids = second["input_ids"]  # the same layout, other ordinary tokens (ids 5-16 -> 14-25)
    second["input_ids"] = torch.where(ids > 4, ids + 9, ids)
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


@pytest.mark.numerics
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


def test_a_mix_moves_and_checkpoints_the_baseline_of_its_bco_term():
    """`loss=mix` with a `bco_pair` term: the term gets `training` and the cross-rank mean, and
    its baseline travels through the checkpoint under `bco_pair/`; the DPO term adds nothing."""
    module = bco_module(MixLoss(terms={"bco_pair": {"weight": 1.0, "beta": 0.5}, "dpo": 0.5}))
    bco = module.loss.weighted[0][2]
    with torch.no_grad():
        module.compute_loss(hand_batch(), "val")
        assert bco.baseline_count == 0
        out = module.compute_loss(hand_batch(), "train")
    assert bco.baseline_count == 1
    assert out.metrics["bco_pair/reward_baseline"].item() == bco.baseline.item() != 0.0
    checkpoint = {}
    module.on_save_checkpoint(checkpoint)
    assert set(checkpoint["loss_state"]) == {"bco_pair/baseline", "bco_pair/baseline_count"}

    restored = bco_module(MixLoss(terms={"bco_pair": {"weight": 1.0, "beta": 0.5}, "dpo": 0.5}))
    restored.on_load_checkpoint(checkpoint)
    restored_bco = restored.loss.weighted[0][2]
    assert restored_bco.baseline_count == 1
    assert restored_bco.baseline.item() == bco.baseline.item()


def test_a_stateless_loss_adds_nothing_to_the_checkpoint():
    checkpoint = {}
    bco_module(DPOLoss()).on_save_checkpoint(checkpoint)
    assert checkpoint == {}


def test_the_baseline_is_the_same_on_two_ranks_and_averages_both():
    """Two gloo ranks (fresh interpreters, tests/bco_two_ranks.py) with different policies:
    after each step both hold the same δ, the running mean of the cross-rank batch means."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    script = Path(__file__).parents[1] / "bco_two_ranks.py"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [
        subprocess.Popen(
            [sys.executable, str(script), str(rank), str(port)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for rank in range(2)
    ]
    outputs = [proc.communicate(timeout=300) for proc in procs]
    for proc, (_, err) in zip(procs, outputs):
        assert proc.returncode == 0, err[-3000:]
    r0, r1 = (json.loads(out.strip().splitlines()[-1]) for out, _ in outputs)
    assert r0["baselines"] == pytest.approx(r1["baselines"], abs=1e-7)
    step_means = [(a + b) / 2 for a, b in zip(r0["local_means"], r1["local_means"], strict=True)]
    assert r0["baselines"][0] == pytest.approx(step_means[0], abs=1e-6)
    assert r0["baselines"][1] == pytest.approx(sum(step_means) / 2, abs=1e-6)
    assert r0["local_means"][0] != pytest.approx(r1["local_means"][0], abs=1e-4)  # not vacuous
