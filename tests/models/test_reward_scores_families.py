"""Reward scores at the last real token on real families' tiny checkpoints, pad == EOS.

Each checkpoint (a causal LM of `FAMILIES`, built here) loads as a one-output sequence
classifier the way `task=reward` loads it (`prefopt.reward.build.load_classifier`, a new score
head), padded with its EOS id: the rows end in that EOS, and the score must be the one the row
gets alone, unpadded (the classifier's own forward on a batch of one reads its last position).
"""

import pytest
import torch
from omegaconf import OmegaConf

from prefopt.config.schema import ModelConfig
from prefopt.reward.build import load_classifier
from prefopt.reward.scores import sequence_scores

from .conftest import build_checkpoint

EOS = 2
ROWS = [[1, 5, 6, 7, 8, 9, EOS], [1, 5, 6, 10, EOS], [1, 11, 12, 13, 14, 15, 16, 17, 18, EOS]]


@pytest.mark.parametrize("name", ["llama", "qwen2", "gpt2"])
@torch.no_grad()
def test_scores_are_read_at_the_eos_that_ends_each_row_when_pad_is_eos(name, tmp_path):
    family = build_checkpoint(name, tmp_path)
    torch.manual_seed(0)
    model_cfg = OmegaConf.structured(ModelConfig(path=str(family.path)))
    model = load_classifier(str(family.path), model_cfg, pad_token_id=EOS).eval()
    width = max(map(len, ROWS))
    input_ids = torch.full((len(ROWS), width), EOS)
    attention_mask = torch.zeros_like(input_ids)
    for i, row in enumerate(ROWS):
        input_ids[i, : len(row)], attention_mask[i, : len(row)] = torch.tensor(row), 1
    scores = sequence_scores(model, input_ids, attention_mask)

    model.config.pad_token_id = None  # alone: a batch of one is read at its last position
    alone = torch.tensor([model(input_ids=torch.tensor([row])).logits[0, 0].item() for row in ROWS])
    before_eos = [model(input_ids=torch.tensor([row[:-1]])).logits[0, 0].item() for row in ROWS]
    model.config.pad_token_id = EOS
    torch.testing.assert_close(scores, alone, rtol=1e-4, atol=1e-5)
    # The classifier's own forward on the padded batch reads the token before each EOS.
    own = model(input_ids=input_ids, attention_mask=attention_mask).logits[:, 0]
    torch.testing.assert_close(own, torch.tensor(before_eos), rtol=1e-4, atol=1e-5)
    assert model.config.pad_token_id == EOS  # saved with an export, for the judge
