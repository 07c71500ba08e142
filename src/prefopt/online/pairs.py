"""From judged samples to training examples: pairs (or KTO's labelled examples) and batches.

Plain functions of token ids and scores, so each rule is tested on hand-made inputs:

- `rank_pairs`: per prompt, best vs worst, or every two samples with different scores; a
  prompt whose samples all tie gives nothing; samples the judge failed on (a non-finite score)
  never enter a pair; two samples with the same ids never form one.
- `kto_labels`: per sample, desirable above a threshold or above its prompt's median.
- `as_pair` / `as_example`: the examples in the tokenized format offline data has
  (`data.tokenize.TokenizedPair`, `data.unpaired.TokenizedExample`), with the prompt's ids
  followed by the completion's ids exactly as sampled, so `data/collate.py` batches them.
- `round_batches`: a round's batches, the examples shuffled (seeded) and repeated as needed.
"""

from __future__ import annotations

import math
import random
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field

BEST_VS_WORST = "best_vs_worst"
ALL_RANKED = "all_ranked"


@dataclass
class PairCounts:
    """What pairing kept and left out in one round."""

    kept: int = 0
    dropped: int = 0
    """Candidate pairs (one per prompt, or every two samples) not kept: a tie, a judge failure,
    or identical completions."""
    tied_prompts: int = 0
    """Prompts whose scored samples all tie (nothing to learn from them)."""
    failures: int = 0
    """Samples the judge gave no finite score."""
    extra: dict[str, int] = field(default_factory=dict)


def is_scored(score: float | None) -> bool:
    return score is not None and math.isfinite(score)


def rank_pairs(
    scores: Sequence[Sequence[float | None]],
    completions: Sequence[Sequence[Sequence[int]]],
    mode: str,
) -> tuple[list[tuple[int, int, int]], PairCounts]:
    """(prompt, chosen sample, rejected sample) triples, the chosen scored strictly higher.

    `scores[p][s]` is the judge's score of sample s of prompt p, `completions[p][s]` its ids."""
    pairs: list[tuple[int, int, int]] = []
    counts = PairCounts()
    for prompt, (row, samples) in enumerate(zip(scores, completions)):
        valid = [s for s, value in enumerate(row) if is_scored(value)]
        counts.failures += len(row) - len(valid)
        candidates = 1 if mode == BEST_VS_WORST else len(row) * (len(row) - 1) // 2
        if valid and len({row[s] for s in valid}) == 1:
            counts.tied_prompts += 1
        if mode == BEST_VS_WORST:
            found = []
            if valid:
                best = max(valid, key=lambda s: row[s])  # first of the best: deterministic
                worst = min(valid, key=lambda s: row[s])
                found = [(best, worst)]
        else:
            found = [(a, b) for a in valid for b in valid if row[a] > row[b]]
        kept = [
            (prompt, a, b)
            for a, b in found
            if row[a] > row[b] and list(samples[a]) != list(samples[b])
        ]
        pairs += kept
        counts.kept += len(kept)
        counts.dropped += candidates - len(kept)
    return pairs, counts


def kto_labels(
    scores: Sequence[Sequence[float | None]], mode: str, threshold: float
) -> tuple[list[tuple[int, int, bool]], PairCounts]:
    """(prompt, sample, desirable) per labelled sample: `threshold`: desirable when its score
    is above `threshold`; `median`: above its prompt's median, undesirable below it (samples at
    the median, and prompts whose samples all tie, are left out)."""
    labelled: list[tuple[int, int, bool]] = []
    counts = PairCounts()
    for prompt, row in enumerate(scores):
        valid = [s for s, value in enumerate(row) if is_scored(value)]
        counts.failures += len(row) - len(valid)
        tied = bool(valid) and len({row[s] for s in valid}) == 1
        counts.tied_prompts += tied
        if mode == "threshold":
            kept = [(prompt, s, row[s] > threshold) for s in valid]
        elif tied or not valid:
            kept = []
        else:
            middle = statistics.median(row[s] for s in valid)
            kept = [(prompt, s, row[s] > middle) for s in valid if row[s] != middle]
        labelled += kept
        counts.kept += len(kept)
        counts.dropped += len(row) - len(kept)
    desirable = sum(label for _, _, label in labelled)
    counts.extra = {"desirable": desirable, "undesirable": len(labelled) - desirable}
    return labelled, counts


def as_pair(prompt: list[int], chosen: list[int], rejected: list[int]) -> dict:
    """A `TokenizedPair`: prompt ids + completion ids as sampled (no retokenization: the policy
    is trained on exactly the sequence it produced)."""
    return {
        "chosen_input_ids": list(prompt) + list(chosen),
        "chosen_prompt_length": len(prompt),
        "rejected_input_ids": list(prompt) + list(rejected),
        "rejected_prompt_length": len(prompt),
        "prompt_input_ids": list(prompt),
    }


def as_example(prompt: list[int], completion: list[int], desirable: bool) -> dict:
    """A `TokenizedExample` (KTO)."""
    return {
        "input_ids": list(prompt) + list(completion),
        "prompt_length": len(prompt),
        "prompt_input_ids": list(prompt),
        "desirable": bool(desirable),
    }


def round_batches(n_examples: int, batch_size: int, n_batches: int, seed: int) -> list[list[int]]:
    """`n_batches` batches of `batch_size` example indices: seeded permutations of the round's
    examples one after the other, so every example comes once before any comes twice."""
    if n_examples <= 0:
        return []
    rng = random.Random(seed)
    stream: list[int] = []
    while len(stream) < n_batches * batch_size:
        order = list(range(n_examples))
        rng.shuffle(order)
        stream += order
    return [stream[i * batch_size : (i + 1) * batch_size] for i in range(n_batches)]
