"""Tiny tokenizers built locally (nothing is downloaded).

A byte-level BPE trained on a few sentences, so that tokens merge across a prompt/completion
boundary exactly as in real GPT-style tokenizers (" there" is one token).
"""

from __future__ import annotations

import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

SPECIAL_TOKENS = ["<s>", "</s>", "<pad>", "<|user|>", "<|assistant|>", "<|end|>"]
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
CORPUS = [
    "Question: hi there, how are you?",
    "Answer: hello there friend, the weather is nice there.",
    "Human: what is the capital of France?\n\nAssistant: Paris is the capital.",
    "Human: hi\n\nAssistant: Hello there, how can I help?",
    "Assistant: Go away, I am busy with other things.",
    "the quick brown fox jumps over the lazy dog and there it is",
]


def build_tokenizer(*, add_bos: bool = True, pad: bool = True) -> PreTrainedTokenizerFast:
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(CORPUS * 20, trainer)
    steps = [processors.ByteLevel(trim_offsets=True)]
    if add_bos:
        bos_id = backend.token_to_id("<s>")
        steps.append(
            processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", bos_id)])
        )
    backend.post_processor = processors.Sequence(steps)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>" if pad else None,
        additional_special_tokens=["<|user|>", "<|assistant|>", "<|end|>"],
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


@pytest.fixture(scope="session")
def tokenizer() -> PreTrainedTokenizerFast:
    return build_tokenizer()


@pytest.fixture(scope="session")
def tokenizer_without_bos() -> PreTrainedTokenizerFast:
    return build_tokenizer(add_bos=False)


@pytest.fixture(autouse=True)
def datasets_cache_in_tmp(tmp_path_factory, monkeypatch):
    """Keep `datasets`' cache (written by load_dataset on a local folder) out of the home dir."""
    import datasets

    monkeypatch.setattr(
        datasets.config, "HF_DATASETS_CACHE", tmp_path_factory.getbasetemp() / "hf-datasets"
    )


@pytest.fixture
def tokenizer_without_pad() -> PreTrainedTokenizerFast:
    return build_tokenizer(pad=False)  # a fresh one: the data module sets its pad token
