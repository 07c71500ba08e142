"""How prefopt samples from a model: its own complete `GenerationConfig`, nothing of the
checkpoint's.

A checkpoint's `generation_config` is its authors' choice for chat: an Instruct model ships a
repetition penalty, `no_repeat_ngram_size`, `min_p`, `typical_p`, suppressed or forced tokens,
a `min_length`. Samples drawn with any of them are not samples of π, and what prefopt computes
from samples (`eval/kl_seq`, `round/kl`, online pairs) assumes they are. Passing a config to
`generate` is not enough: transformers 5 fills every field left None in the config it is given
from the model's `generation_config` (`GenerationMixin._prepare_generation_config`), and
several fields mean "off" only as None (`min_p`, `bad_words_ids`, `suppress_tokens`,
`forced_bos_token_id`...). So the model's own is set aside for the call.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from torch import nn
from transformers import GenerationConfig, GenerationMixin


def sampling_config(
    *, temperature: float, max_new_tokens: int, pad_token_id: int, stop_ids: list[int]
) -> GenerationConfig:
    """The whole of how prefopt samples: temperature > 0 = ancestral sampling at that
    temperature with no truncation (top-k, top-p off); 0 = greedy. Every other field keeps
    `GenerationConfig`'s neutral default (no penalties, no banned or forced tokens)."""
    if temperature > 0:
        mode = dict(do_sample=True, temperature=temperature, top_k=0, top_p=1.0)
    else:
        mode = dict(do_sample=False)
    return GenerationConfig(
        **mode,
        max_new_tokens=max_new_tokens,
        pad_token_id=pad_token_id,
        eos_token_id=list(stop_ids) or None,
        num_beams=1,
        use_cache=True,
    )


@contextlib.contextmanager
def checkpoint_generation_config_aside(model: nn.Module) -> Iterator[None]:
    """For the block, every generating module inside `model` (the model itself, or the model
    under a PEFT or `torch.compile` wrapper) holds a blank `GenerationConfig`, so `generate`
    fills nothing in from the checkpoint's; each gets its own back afterwards."""
    saved = [
        (module, module.generation_config)
        for module in model.modules()
        if isinstance(module, GenerationMixin) and hasattr(module, "generation_config")
    ]
    try:
        for module, _ in saved:
            module.generation_config = GenerationConfig()
        yield
    finally:
        for module, config in saved:
            module.generation_config = config
