"""Local, tiny tokenizers and models for the evaluation tests (nothing is downloaded)."""

from __future__ import annotations

import pytest
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

SPECIALS = ["<pad>", "<bos>", "<eos>", "<unk>"]
WORDS = (
    "review of the phone : it is great good bad awful and but very sound price design "
    "i loved hated . , not okay plain fine overall recommend"
).split()
"""28 words: with the 4 specials, 32 ids, the vocabulary size of `tests/conftest.tiny_llama`."""


def word_tokenizer() -> PreTrainedTokenizerFast:
    """One token per space-separated word; pad 0, bos 1 (prepended), eos 2 — tiny_llama's ids."""
    vocab = {word: i for i, word in enumerate(SPECIALS + WORDS)}
    assert len(vocab) == 32
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    backend.post_processor = processors.TemplateProcessing(
        single="<bos> $A", special_tokens=[("<bos>", 1)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token="<pad>",
        bos_token="<bos>",
        eos_token="<eos>",
        unk_token="<unk>",
        clean_up_tokenization_spaces=False,
    )


@pytest.fixture
def tokenizer() -> PreTrainedTokenizerFast:
    return word_tokenizer()
