"""A word-level tokenizer for the toy language: one token per space-separated word.

It prepends BOS (never EOS) when called, like the tokenizers of most causal LMs, so the data
pipeline's "add BOS/EOS only when missing" logic is exercised by the default run.
"""

from __future__ import annotations

from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

from prefopt.toy.language import VOCAB

PAD, BOS, EOS, UNK = "<pad>", "<bos>", "<eos>", "<unk>"
MODEL_MAX_LENGTH = 128


def build_tokenizer() -> PreTrainedTokenizerFast:
    vocab = {word: i for i, word in enumerate([PAD, BOS, EOS, UNK, *VOCAB])}
    backend = Tokenizer(models.WordLevel(vocab, unk_token=UNK))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    backend.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A $B", special_tokens=[(BOS, vocab[BOS])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token=PAD,
        bos_token=BOS,
        eos_token=EOS,
        unk_token=UNK,
        model_max_length=MODEL_MAX_LENGTH,
        # The default clean-up would glue " ." to the previous word and break the round trip.
        clean_up_tokenization_spaces=False,
    )
