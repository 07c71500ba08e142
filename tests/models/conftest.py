"""The model-family matrix: a tiny random checkpoint of each family people bring, built here.

Each family is one line of `FAMILIES`: its config class and what makes it tiny (or what makes
it unlike Llama: a soft cap, a logit scale, a sliding window). Every checkpoint is built once
per session, with a tokenizer made here (no network), and saved with `save_pretrained`, so
the tests load it the way a run does (`prefopt.model.loading`). Every family's dropout is set
above zero in its config, as GPT-2, OPT and Phi ship it.

A new check over every family is one more test function that takes the `family` fixture
(as sampling purity and step-0 rewards in each precision did:
`test_family_sampling_and_precision.py`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import transformers as tf
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

VOCAB = 64
DROPOUT = 0.1
"""Every config field that names a dropout probability gets this: what the check of dropout
being off in training has to overcome."""

_LLAMA_LIKE = dict(
    hidden_size=16,
    intermediate_size=32,
    num_hidden_layers=1,
    num_attention_heads=2,
    num_key_value_heads=2,
    head_dim=8,
)

_SMALL_MAMBA = dict(
    mamba_d_ssm=16, mamba_n_heads=2, mamba_d_head=8, mamba_d_state=8, mamba_chunk_size=16
)

FAMILIES: dict[str, tuple[type, dict]] = {
    "llama": (tf.LlamaConfig, _LLAMA_LIKE),
    "qwen2": (tf.Qwen2Config, _LLAMA_LIKE),
    "qwen3": (tf.Qwen3Config, _LLAMA_LIKE),
    "mistral": (tf.MistralConfig, {**_LLAMA_LIKE, "sliding_window": 4}),
    "gemma2": (tf.Gemma2Config, {**_LLAMA_LIKE, "final_logit_softcapping": 0.5}),
    "gemma3": (tf.Gemma3TextConfig, {**_LLAMA_LIKE, "final_logit_softcapping": 0.5}),
    "phi3": (tf.Phi3Config, _LLAMA_LIKE),
    "gpt2": (tf.GPT2Config, dict(n_embd=16, n_layer=1, n_head=2, n_positions=64)),
    "opt": (tf.OPTConfig, {**_LLAMA_LIKE, "ffn_dim": 32, "word_embed_proj_dim": 16}),
    "gpt_neox": (tf.GPTNeoXConfig, {**_LLAMA_LIKE, "rotary_pct": 0.5}),
    "olmo2": (tf.Olmo2Config, _LLAMA_LIKE),
    "granite": (tf.GraniteConfig, {**_LLAMA_LIKE, "logits_scaling": 4.0}),
    "cohere": (tf.CohereConfig, {**_LLAMA_LIKE, "logit_scale": 4.0}),
    "falcon_h1": (tf.FalconH1Config, {**_LLAMA_LIKE, **_SMALL_MAMBA, "lm_head_multiplier": 4.0}),
}
"""name -> (config class, overrides): adding a family is adding a line."""

LORA_TARGETS = {"falcon_h1": ["q_proj", "v_proj"]}
"""Families whose LoRA cannot take `all-linear`: PEFT refuses Falcon-H1's Mamba projections."""


@dataclass(frozen=True)
class Family:
    name: str
    path: Path
    """The saved checkpoint (config, weights and tokenizer)."""
    config: object

    @property
    def lora_targets(self):
        return LORA_TARGETS.get(self.name, "all-linear")


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    """A word-level tokenizer over a few words, made here: the checkpoints need one to load
    and export the way a run does; the tests' token ids are drawn directly."""
    words = ["<pad>", "<s>", "</s>", "<unk>"] + "the cat sat on a mat and dog ran".split()
    backend = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token="<pad>",
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
    )


def build_checkpoint(name: str, folder: Path) -> Family:
    config_class, overrides = FAMILIES[name]
    config = config_class(
        vocab_size=VOCAB,
        max_position_embeddings=64,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        **overrides,
    )
    for key in list(config.to_dict()):
        if key.endswith(("dropout", "pdrop")) and isinstance(getattr(config, key), float):
            setattr(config, key, DROPOUT)
    torch.manual_seed(0)
    model = tf.AutoModelForCausalLM.from_config(config)
    path = folder / name
    model.save_pretrained(path)
    tiny_tokenizer().save_pretrained(path)
    return Family(name, path, config)


@pytest.fixture(scope="session", params=list(FAMILIES))
def family(request, tmp_path_factory) -> Family:
    return build_checkpoint(request.param, tmp_path_factory.mktemp("families"))


@pytest.fixture
def family_batch() -> dict[str, torch.Tensor]:
    return pair_batch()


def pair_batch() -> dict[str, torch.Tensor]:
    """Two pairs with prompts and completions of different lengths, right-padded (id 0),
    chosen rows first; long enough (12 tokens) to cross Mistral's 4-token window."""
    generator = torch.Generator().manual_seed(1)
    lengths = [(3, 9), (2, 5), (3, 4), (2, 10)]  # (prompt, completion) per row
    width = max(p + c for p, c in lengths)
    input_ids = torch.zeros(len(lengths), width, dtype=torch.long)
    attention_mask = torch.zeros_like(input_ids)
    completion_mask = torch.zeros_like(input_ids, dtype=torch.bool)
    for row, (prompt, completion) in enumerate(lengths):
        ids = torch.randint(3, VOCAB, (prompt + completion,), generator=generator)
        if row >= 2:  # a pair's rejected shares its chosen's prompt
            ids[:prompt] = input_ids[row - 2, :prompt]
        input_ids[row, : prompt + completion] = ids
        attention_mask[row, : prompt + completion] = 1
        completion_mask[row, prompt : prompt + completion] = True
    return {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "completion_mask": completion_mask,
    }
