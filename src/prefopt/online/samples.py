"""A round's samples as an on-policy loss trains on them (RLOO): every sample, its advantage,
and the policy's log-prob of it when drawn (π_old).

- `judged_samples`: every (prompt, sample) of the round with its advantage, from the judge's
  scores and the samples' sequence KL (the loss's `advantages`: no model here), and what the
  round logs of them (advantage statistics, the RL reward);
- `as_sample` / `collate_samples`: one row per sample, prompt ids then completion ids as
  sampled, with its advantage;
- `old_logps_with`: π_old's summed log-probs of a round's batches, scored as the training step
  scores them (`completion_logps` on the same collated rows, under the Trainer's precision), so
  that π/π_old is exactly 1 until a step has moved the policy: precision drift between two ways
  of scoring would otherwise show as ratios off 1 and clipping from the first step.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from prefopt.data.collate import pad_sequences
from prefopt.model.logprobs import completion_logps
from prefopt.online.pairs import PairCounts, is_scored


def judged_samples(
    scores: Sequence[Sequence[float]], kl: Sequence[Sequence[float]], loss
) -> tuple[list[list[int]], list[list[float]], PairCounts, dict[str, float]]:
    """(selection, advantages, counts, metrics): `selection` is every [prompt, sample] (a
    sample the judge failed on is kept with advantage 0, as TRL keeps it: it counts in the
    batch mean and moves nothing); `advantages[p][s]`; `metrics` the round's `round/…` values."""
    result = loss.advantages(
        torch.tensor(scores, dtype=torch.float64), torch.tensor(kl, dtype=torch.float64)
    )
    advantages = result.advantages.tolist()
    counts = PairCounts()
    for row in scores:
        valid = [value for value in row if is_scored(value)]
        counts.failures += len(row) - len(valid)
        counts.kept += len(valid)
        counts.dropped += len(row) - len(valid)
        counts.tied_prompts += bool(valid) and len(set(valid)) == 1
    selection = [[p, s] for p, row in enumerate(scores) for s in range(len(row))]
    flat = result.advantages.flatten()
    rewards = result.rewards.flatten()
    finite = rewards[~rewards.isnan()]
    metrics = {
        "rl_reward": float(finite.mean()) if finite.numel() else math.nan,
        "advantage_mean": float(flat.mean()),
        "advantage_std": float(flat.std()) if flat.numel() > 1 else 0.0,
        "advantage_min": float(flat.min()),
        "advantage_max": float(flat.max()),
        "advantage_zero_fraction": float((flat == 0).double().mean()),
    }
    return selection, advantages, counts, metrics


def as_sample(prompt: list[int], completion: list[int], advantage: float) -> dict:
    """One sample's row: prompt ids + completion ids as sampled (never retokenized)."""
    return {
        "input_ids": list(prompt) + list(completion),
        "prompt_length": len(prompt),
        "prompt_input_ids": list(prompt),
        "advantage": float(advantage),
    }


def collate_samples(examples: Sequence[dict], pad_token_id: int) -> dict[str, Tensor]:
    """`input_ids`, `attention_mask`, `completion_mask` [N, T], right padded; `advantages` [N]."""
    batch = pad_sequences([(e["input_ids"], e["prompt_length"]) for e in examples], pad_token_id)
    batch["advantages"] = torch.tensor([e["advantage"] for e in examples], dtype=torch.float32)
    return batch


def old_logps_with(chunk_size: int | None):
    """`(policy, batch) -> summed log-probs of its rows`, as the training step computes them
    (`PreferenceModule.compute_loss`), in eval mode without autograd."""

    def batch_logps(model: nn.Module, batch: dict[str, Tensor]) -> Tensor:
        rows = {k: batch[k] for k in ("input_ids", "attention_mask", "completion_mask")}
        was_training = model.training
        model.eval()
        try:
            with torch.inference_mode():
                return completion_logps(model, rows, chunk_size).summed.clone()
        finally:
            model.train(was_training)

    return batch_logps
