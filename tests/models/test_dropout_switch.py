"""`model.disable_dropout`: on by default (the matrix checks every family), and `false` keeps
the checkpoint's dropout, both as modules and as the floats attention passes to SDPA."""

import torch
from torch.utils.data import DataLoader

from prefopt.config.schema import ModelConfig, OptimConfig
from prefopt.losses import DPOLoss
from prefopt.model.loading import load_causal_lm
from prefopt.reference.online import OnlineReference
from prefopt.training.module import PreferenceModule

from ..conftest import quiet_trainer
from .conftest import DROPOUT, build_checkpoint, pair_batch


def test_disable_dropout_false_keeps_the_checkpoints_dropout(tmp_path):
    path = str(build_checkpoint("gpt2", tmp_path).path)
    kept = load_causal_lm(path, ModelConfig(path=path, disable_dropout=False))
    off = load_causal_lm(path, ModelConfig(path=path))

    def probabilities(model):
        return {m.p for m in model.modules() if isinstance(m, torch.nn.Dropout)}

    assert probabilities(kept) == {DROPOUT}
    assert probabilities(off) == {0.0}
    assert kept.config.attn_pdrop == DROPOUT and off.config.attn_pdrop == 0.0


def test_gpt2s_first_logged_rewards_are_exactly_zero(tmp_path):
    """GPT-2 ships dropout 0.1: with it on, the first step logged rewards of a few thousandths
    although policy and reference are the same model."""
    path = str(build_checkpoint("gpt2", tmp_path).path)
    cfg = ModelConfig(path=path)
    module = PreferenceModule(
        load_causal_lm(path, cfg),
        DPOLoss(beta=0.1),
        OptimConfig(lr=1e-3),
        OnlineReference(load_causal_lm(path, cfg)),
    )
    trainer = quiet_trainer(tmp_path, max_steps=1)
    trainer.fit(module, train_dataloaders=DataLoader([pair_batch()], batch_size=None))
    for side in ("chosen", "rejected"):
        assert trainer.callback_metrics[f"train/rewards/{side}"].item() == 0.0
