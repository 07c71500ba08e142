"""The toy reference model: a tiny Llama trained by supervised fine-tuning on grammar samples.

Plain PyTorch on purpose: a few hundred CPU steps do not need a Trainer, and keeping Lightning
out of the world build keeps the cache independent of the framework it feeds.
"""

from __future__ import annotations

import math
import random
from typing import TYPE_CHECKING

import torch
from tqdm.auto import tqdm
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from prefopt.toy.language import sample_completion
from prefopt.toy.tokenizer import MODEL_MAX_LENGTH

if TYPE_CHECKING:
    from prefopt.config.schema import ToyWorldConfig

_WARMUP_FRACTION = 0.05


def build_model(cfg: ToyWorldConfig, tokenizer: PreTrainedTokenizerFast) -> LlamaForCausalLM:
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=cfg.hidden_size,
        intermediate_size=4 * cfg.hidden_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_heads,
        max_position_embeddings=MODEL_MAX_LENGTH,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    model = LlamaForCausalLM(config)
    generation = model.generation_config
    generation.pad_token_id = tokenizer.pad_token_id
    generation.bos_token_id = tokenizer.bos_token_id
    generation.eos_token_id = tokenizer.eos_token_id
    return model


def sft_examples(rng: random.Random, prompts: list[str], n: int) -> list[tuple[str, str]]:
    """`n` (prompt, completion) pairs: random prompts, each with a fresh grammar sample."""
    return [(rng.choice(prompts), sample_completion(rng)) for _ in range(n)]


def _encode(
    tokenizer: PreTrainedTokenizerFast, examples: list[tuple[str, str]]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ids of prompt + completion + EOS, and labels that score only the completion."""
    texts = [prompt + completion for prompt, completion in examples]
    full = tokenizer(texts)["input_ids"]
    prompt_lengths = [len(ids) for ids in tokenizer([p for p, _ in examples])["input_ids"]]
    width = max(len(ids) for ids in full) + 1
    input_ids = torch.full((len(full), width), tokenizer.pad_token_id)
    labels = torch.full((len(full), width), -100)
    for row, (ids, n_prompt) in enumerate(zip(full, prompt_lengths, strict=True)):
        ids = ids + [tokenizer.eos_token_id]
        input_ids[row, : len(ids)] = torch.tensor(ids)
        labels[row, n_prompt : len(ids)] = torch.tensor(ids[n_prompt:])
    return input_ids, labels


def train_sft(
    model: LlamaForCausalLM,
    tokenizer: PreTrainedTokenizerFast,
    examples: list[tuple[str, str]],
    cfg: ToyWorldConfig,
    progress: bool = True,
) -> float:
    """Train in place; returns the mean loss of the last 10% of steps."""
    input_ids, labels = _encode(tokenizer, examples)
    lengths = (input_ids != tokenizer.pad_token_id).sum(dim=1)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.sft_lr, weight_decay=0.01)
    warmup = max(1, int(_WARMUP_FRACTION * cfg.sft_steps))

    def schedule(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        done = (step - warmup) / max(1, cfg.sft_steps - warmup)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * done))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    generator = torch.Generator().manual_seed(cfg.seed)
    order = torch.randperm(len(examples), generator=generator)
    cursor, tail_losses = 0, []
    model.train()
    for step in tqdm(range(cfg.sft_steps), desc="toy world: SFT", disable=not progress):
        if cursor + cfg.sft_batch_size > len(order):
            order, cursor = torch.randperm(len(examples), generator=generator), 0
        index = order[cursor : cursor + cfg.sft_batch_size]
        cursor += cfg.sft_batch_size
        # Trim to the batch's longest row: padding columns cost time but teach nothing.
        width = int(lengths[index].max())
        ids = input_ids[index, :width]
        loss = model(
            input_ids=ids,
            attention_mask=(ids != tokenizer.pad_token_id).long(),
            labels=labels[index, :width],
            use_cache=False,
        ).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        if step >= cfg.sft_steps - max(1, cfg.sft_steps // 10):
            tail_losses.append(loss.item())
    model.eval()
    return sum(tail_losses) / max(1, len(tail_losses))
