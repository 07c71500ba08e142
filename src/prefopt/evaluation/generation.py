"""Sample completions for a fixed set of prompts and score them under any causal LM.

Prompts are token ids (`prompt_input_ids` of the data module's examples), batched with LEFT
padding so every row's completion starts at the same column. Sampling runs under a forked RNG
seeded with the eval seed: the same prompts get the same random stream at every evaluation,
and the training RNG is left exactly where it was.

Sampling is pure ancestral sampling from the model (`eval/kl_seq` and `round/kl` are unbiased
only for samples of π): see `prefopt.model.sampling`.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from prefopt.data.collate import pad_sequences
from prefopt.model.logprobs import completion_logps
from prefopt.model.sampling import checkpoint_generation_config_aside, sampling_config


@dataclass
class Samples:
    """Completions of one model for the eval prompts, row i answering prompt i."""

    completion_ids: list[list[int]]
    """Generated ids up to and including the first stop token (none if the budget ran out)."""
    texts: list[str]
    """The completions as text, as they follow the prompt's text."""

    def lengths(self, stop_ids: Collection[int]) -> list[int]:
        """Completion lengths in tokens, the final stop token (EOS) not counted."""
        return [len(ids) - (1 if ids and ids[-1] in stop_ids else 0) for ids in self.completion_ids]


def left_pad(prompts: list[list[int]], pad_token_id: int) -> dict[str, Tensor]:
    width = max(len(ids) for ids in prompts)
    input_ids = torch.full((len(prompts), width), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, ids in enumerate(prompts):
        input_ids[row, width - len(ids) :] = torch.tensor(ids, dtype=torch.long)
        attention_mask[row, width - len(ids) :] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask}


def cut_at_eos(ids: list[int], stop_ids: Collection[int]) -> list[int]:
    """Keep tokens up to and including the first stop token; what `generate` pads after it is
    dropped."""
    for position, token in enumerate(ids):
        if token in stop_ids:
            return ids[: position + 1]
    return ids


def stop_token_ids(tokenizer, model: nn.Module) -> list[int]:
    """The tokenizer's EOS and the model's own (chat models end a turn with a token of their
    own, e.g. `<|im_end|>`, listed in their generation config)."""
    ids = [tokenizer.eos_token_id]
    config_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids += config_eos if isinstance(config_eos, list) else [config_eos]
    return list(dict.fromkeys(i for i in ids if i is not None))


@torch.no_grad()
def generate(
    model: nn.Module,
    prompts: list[list[int]],
    *,
    pad_token_id: int,
    stop_ids: list[int],
    max_new_tokens: int,
    temperature: float,
    seed: int,
    batch_size: int,
    device: torch.device,
) -> list[list[int]]:
    """Completion ids per prompt; temperature 0 = greedy, else pure sampling from the model
    (`sampling_config`: nothing of the checkpoint's generation config applies)."""
    config = sampling_config(
        temperature=temperature,
        max_new_tokens=max_new_tokens,
        pad_token_id=pad_token_id,
        stop_ids=stop_ids,
    )
    was_training = model.training
    model.eval()
    completions = []
    try:
        with _forked_rng(device), checkpoint_generation_config_aside(model):
            torch.manual_seed(seed)
            for start in range(0, len(prompts), batch_size):
                batch = left_pad(prompts[start : start + batch_size], pad_token_id)
                batch = {k: v.to(device) for k, v in batch.items()}
                output = model.generate(**batch, generation_config=config)
                new_tokens = output[:, batch["input_ids"].shape[1] :].tolist()
                completions += [cut_at_eos(ids, stop_ids) for ids in new_tokens]
    finally:
        model.train(was_training)
    return completions


@torch.no_grad()
def score(
    model: nn.Module,
    prompts: list[list[int]],
    completions: list[list[int]],
    *,
    pad_token_id: int,
    batch_size: int,
    device: torch.device,
    chunk_size: int | None = None,
) -> Tensor:
    """log model(completion | prompt), summed over completion tokens, one value per row [N]."""
    was_training = model.training
    model.eval()
    values = []
    try:
        for start in range(0, len(prompts), batch_size):
            rows = [
                (p + c, len(p))
                for p, c in zip(
                    prompts[start : start + batch_size], completions[start : start + batch_size]
                )
            ]
            batch = {k: v.to(device) for k, v in pad_sequences(rows, pad_token_id).items()}
            values.append(completion_logps(model, batch, chunk_size).summed.float().cpu())
    finally:
        model.train(was_training)
    return torch.cat(values) if values else torch.zeros(0)


def decode_completions(
    tokenizer, prompts: list[list[int]], completions: list[list[int]]
) -> list[str]:
    """Each completion's text as it follows its prompt's text (special tokens dropped).

    Decoding prompt + completion together and cutting off the prompt's text keeps the spacing a
    tokenizer only produces in context (a SentencePiece word piece at the start loses its space).
    """
    texts = []
    for prompt, completion in zip(prompts, completions):
        prompt_text = tokenizer.decode(prompt, skip_special_tokens=True)
        full = tokenizer.decode(prompt + completion, skip_special_tokens=True)
        if full.startswith(prompt_text):
            texts.append(full[len(prompt_text) :])
        else:
            texts.append(tokenizer.decode(completion, skip_special_tokens=True))
    return texts


def _forked_rng(device: torch.device):
    """Fork the CPU RNG and the device's, so evaluation leaves training's random streams alone."""
    if device.type == "cpu":
        return torch.random.fork_rng(devices=[])
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        return torch.random.fork_rng(devices=[index], device_type="cuda")
    return torch.random.fork_rng(device_type=device.type)
