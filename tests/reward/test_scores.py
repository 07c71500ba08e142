"""A reward model's score is read at each row's last real token, whatever the padding.

Transformers' sequence classifiers locate that token as the rightmost id that is not
`config.pad_token_id`; with pad == EOS and rows that end in the EOS they were trained with,
that rule reads the token before the EOS. `sequence_scores` reads the last attended position.
The truth each test compares with: the classifier's own forward on the row alone, unpadded, with
no pad id (a batch of one reads its last position).
"""

import pytest
import torch
from transformers import LlamaForSequenceClassification

from prefopt.errors import PrefoptError
from prefopt.reward.scores import last_real_token, sequence_scores

from ..conftest import tiny_llama_config

PAD_IS_EOS = 2


def tiny_classifier(pad_token_id=PAD_IS_EOS) -> LlamaForSequenceClassification:
    torch.manual_seed(0)
    config = tiny_llama_config(num_labels=1, pad_token_id=pad_token_id, eos_token_id=2)
    return LlamaForSequenceClassification(config).eval()


def right_padded(rows: list[list[int]], pad: int) -> dict[str, torch.Tensor]:
    width = max(map(len, rows))
    ids = torch.full((len(rows), width), pad)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, : len(row)], mask[i, : len(row)] = torch.tensor(row), 1
    return {"input_ids": ids, "attention_mask": mask}


@torch.no_grad()
def alone(model, row: list[int]) -> float:
    """The classifier's own score of the row unpadded and alone (no pad id: its last token)."""
    pad = model.config.pad_token_id
    model.config.pad_token_id = None
    try:
        return model(input_ids=torch.tensor([row])).logits[0, 0].item()
    finally:
        model.config.pad_token_id = pad


# A pair that ends in EOS, its completions different lengths; an EOS also inside the prompt
# (a chat template that ends the system turn with it).
CHOSEN = [1, 5, 6, 2, 7, 8, 9, 2]
REJECTED = [1, 5, 6, 2, 7, 10, 2]


@torch.no_grad()
def test_the_score_is_read_at_the_last_real_token_with_right_padding():
    model = tiny_classifier()
    batch = right_padded([CHOSEN, REJECTED], PAD_IS_EOS)
    scores = sequence_scores(model, **batch)
    torch.testing.assert_close(
        scores, torch.tensor([alone(model, CHOSEN), alone(model, REJECTED)]), rtol=1e-5, atol=1e-6
    )


@torch.no_grad()
def test_pad_equal_to_eos_reads_the_eos_not_the_token_before_it():
    """The classifier's own forward on the padded batch reads each row at the token before its
    final EOS (the rightmost id that is not the pad id): not the score training and the judge
    read. `sequence_scores` reads the EOS."""
    model = tiny_classifier()
    batch = right_padded([CHOSEN, REJECTED], PAD_IS_EOS)
    own = model(**batch).logits[:, 0]
    before_eos = torch.tensor([alone(model, CHOSEN[:-1]), alone(model, REJECTED[:-1])])
    torch.testing.assert_close(own, before_eos, rtol=1e-5, atol=1e-6)  # the trap, as it is
    ours = sequence_scores(model, **batch)
    assert not torch.allclose(ours, own, rtol=1e-3, atol=1e-4)
    assert ours[0].item() == pytest.approx(alone(model, CHOSEN), rel=1e-5, abs=1e-6)


@torch.no_grad()
def test_chosen_and_rejected_that_share_everything_but_the_end_score_apart():
    """Two rows identical up to their last token before the EOS (and padded with the EOS):
    read at the EOS they score apart, each as when alone."""
    model = tiny_classifier()
    a, b = [1, 5, 6, 7, 2], [1, 5, 6, 8, 2]
    scores = sequence_scores(model, **right_padded([a, b, [1, 5, 2]], PAD_IS_EOS))
    assert scores[0].item() != pytest.approx(scores[1].item(), abs=1e-6)
    assert scores[0].item() == pytest.approx(alone(model, a), rel=1e-5, abs=1e-6)
    assert scores[1].item() == pytest.approx(alone(model, b), rel=1e-5, abs=1e-6)


@torch.no_grad()
def test_scores_do_not_change_with_batch_size_or_padding():
    model = tiny_classifier()
    rows = [CHOSEN, REJECTED, [1, 9, 2], [1, 5, 6, 7, 8, 9, 10, 11, 12, 2]]
    together = sequence_scores(model, **right_padded(rows, PAD_IS_EOS))
    one_by_one = torch.cat([sequence_scores(model, **right_padded([r], PAD_IS_EOS)) for r in rows])
    extra_padding = sequence_scores(model, **right_padded([*rows, [1] * 20], PAD_IS_EOS))[:4]
    torch.testing.assert_close(together, one_by_one, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(extra_padding, one_by_one, rtol=1e-5, atol=1e-6)


def test_rows_must_be_right_padded():
    with pytest.raises(ValueError, match="right-padded"):
        last_real_token(torch.tensor([[0, 1, 1]]))
    with pytest.raises(ValueError, match="no real token"):
        last_real_token(torch.tensor([[0, 0]]))
    assert last_real_token(torch.tensor([[1, 1, 0], [1, 1, 1]])).tolist() == [1, 2]


class HeadlessClassifier(torch.nn.Module):
    """A classifier without a `score` head: only its own forward can score it."""

    def __init__(self, inner):
        super().__init__()
        self.inner, self.config = inner, inner.config

    def forward(self, **kwargs):
        return self.inner(**kwargs)


@torch.no_grad()
def test_a_classifier_without_a_score_head_is_refused_where_its_forward_would_misread():
    model = HeadlessClassifier(tiny_classifier())
    with pytest.raises(PrefoptError, match="pad token id 2 also occurs among the real tokens"):
        sequence_scores(model, **right_padded([CHOSEN, REJECTED], PAD_IS_EOS))
    # With a pad id of its own, its forward reads the right token.
    model.config.pad_token_id = 0
    batch = right_padded([CHOSEN, REJECTED], 0)
    torch.testing.assert_close(
        sequence_scores(model, **batch), sequence_scores(model.inner, **batch), rtol=1e-5, atol=1e-6
    )
