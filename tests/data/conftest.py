"""Tiny tokenizers built locally (nothing is downloaded), and `prepare_rows`: a few rows sent
through the production pipeline.

A byte-level BPE trained on a few sentences, so that tokens merge across a prompt/completion
boundary exactly as in real GPT-style tokenizers (" there" is one token).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

from prefopt.config.schema import DataConfig
from prefopt.data.cache import SplitReport
from prefopt.data.examples import ExampleTable
from prefopt.data.prepare import prepare_data

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


def prepare_rows(
    folder: Path, tokenizer: Any, records: list[dict], *, paired: bool = True, **settings
) -> tuple[list[dict], SplitReport]:
    """`records` through the production pipeline (`prepare_data`): written to `data.jsonl` in
    `folder`, read, mapped in batches, tokenized. The file serves as both splits; the
    validation split's examples are returned (it keeps `prompt_input_ids`), without their
    index, with its report. `settings`: DataConfig fields (max_length 64 and max_prompt_length
    32 unless given)."""
    path = folder / "data.jsonl"
    path.write_text("".join(json.dumps(record) + "\n" for record in records))
    settings = {"max_length": 64, "max_prompt_length": 32, **settings}
    cfg = DataConfig(source="local", path=str(path), val_path=str(path), cache=False, **settings)
    prepared = prepare_data(cfg, tokenizer, paired=paired)
    examples = [{k: v for k, v in e.items() if k != "index"} for e in ExampleTable(prepared.val)]
    return examples, prepared.reports["val"]


class WithoutOffsets:
    """A fast tokenizer seen as a slow one (`is_fast` False, so no character offsets): the
    prompt/completion boundary then comes from the common prefix of the ids, as for slow
    tokenizers. Everything else is the wrapped tokenizer's."""

    is_fast = False

    def __init__(self, tokenizer: Any):
        self.__dict__["wrapped"] = tokenizer

    def __getattr__(self, name: str) -> Any:
        return getattr(self.__dict__["wrapped"], name)

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self.__dict__["wrapped"], name, value)

    def __call__(self, *args, **kwargs):
        return self.__dict__["wrapped"](*args, **kwargs)
