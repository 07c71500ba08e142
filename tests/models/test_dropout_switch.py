"""`model.disable_dropout`: on by default (the matrix checks every family), and `false` keeps
the checkpoint's dropout, both as modules and as the floats attention passes to SDPA."""

import torch

from prefopt.config.schema import ModelConfig
from prefopt.model.loading import load_causal_lm

from .conftest import DROPOUT, build_checkpoint


def test_disable_dropout_false_keeps_the_checkpoints_dropout(tmp_path):
    path = str(build_checkpoint("gpt2", tmp_path).path)
    kept = load_causal_lm(path, ModelConfig(path=path, disable_dropout=False))
    off = load_causal_lm(path, ModelConfig(path=path))

    def probabilities(model):
        return {m.p for m in model.modules() if isinstance(m, torch.nn.Dropout)}

    assert probabilities(kept) == {DROPOUT}
    assert probabilities(off) == {0.0}
    assert kept.config.attn_pdrop == DROPOUT and off.config.attn_pdrop == 0.0
