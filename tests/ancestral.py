"""Pure ancestral sampling written out by hand: what prefopt's `generate` must equal, whatever
the checkpoint's own `generation_config` says (`tests/evaluation/test_pure_sampling.py`, and
over every model family in `tests/models/`)."""

from __future__ import annotations

import torch

from prefopt.evaluation.generation import cut_at_eos, left_pad

CHECKPOINT_SAMPLING = dict(
    repetition_penalty=1.5,
    no_repeat_ngram_size=2,
    min_p=0.2,
    top_k=4,
    top_p=0.5,
    typical_p=0.9,
    temperature=0.3,
    min_length=8,
    suppress_tokens=[3, 4],
    bad_words_ids=[[20]],
    forced_bos_token_id=21,
    do_sample=True,
)
"""What an Instruct checkpoint's `generation_config.json` may carry; none of it is π."""


@torch.no_grad()
def ancestral_samples(
    model,
    prompts: list[list[int]],
    seed: int,
    *,
    pad_token_id: int,
    eos_token_id: int,
    max_new_tokens: int,
    temperature: float,
) -> list[list[int]]:
    """Pure sampling written out: the full forward at every step, a draw from
    softmax(logits / T) for every row in one `torch.multinomial` call (as `generate` draws)."""
    model.eval()
    torch.manual_seed(seed)
    batch = left_pad(prompts, pad_token_id)
    ids, mask = batch["input_ids"], batch["attention_mask"]
    for _ in range(max_new_tokens):
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        logits = model(input_ids=ids, attention_mask=mask, position_ids=positions).logits
        probs = torch.softmax(logits[:, -1].float() / temperature, dim=-1)
        drawn = torch.multinomial(probs, num_samples=1)
        ids = torch.cat([ids, drawn], dim=1)
        mask = torch.cat([mask, torch.ones_like(drawn)], dim=1)
    new_tokens = ids[:, batch["input_ids"].shape[1] :].tolist()
    return [cut_at_eos(row, [eos_token_id]) for row in new_tokens]
