"""The `loop` config group: where training pairs come from (`conf/loop/`).

`loop=offline` (the default) trains on the data's fixed pairs; `loop=online` samples new pairs
from the current policy round after round, labelled by the judge (`prefopt.online`).
"""

from __future__ import annotations

from dataclasses import dataclass

from prefopt.config.choices import KtoLabel, LoopKind, PairSelection


@dataclass
class LoopConfig:
    """Offline (the data's pairs) or online (pairs sampled from the current policy and ranked by
    the judge, `judge=`); the online keys are read only with `kind=online`."""

    kind: LoopKind = LoopKind.offline
    """offline: train on the data's pairs; online: rounds of sample -> judge -> train until
    `trainer.max_steps`."""
    prompts_per_round: int = 64
    """Training prompts sampled each round (seeded per round, cycling through the prompt set)."""
    samples_per_prompt: int = 4
    """Completions sampled per prompt from the current policy (>= 2)."""
    temperature: float = 1.0
    """Sampling temperature (> 0); 1 samples the policy itself (what `round/kl` assumes)."""
    max_new_tokens: int = 32
    """Completion budget of each sample, in tokens."""
    steps_per_round: int = 4
    """Optimizer steps trained on each round's pairs (batches of `data.batch_size`, the pairs
    reshuffled and repeated as needed)."""
    pairs: PairSelection = PairSelection.best_vs_worst
    """Paired losses: best_vs_worst (one pair per prompt, its highest- against its lowest-scored
    sample) or all_ranked (every two samples with different scores). A prompt whose samples all
    tie gives no pair."""
    label: KtoLabel = KtoLabel.median
    """Unpaired losses (KTO): a sample is desirable when its score is above `threshold`
    (threshold), or above its prompt's median score (median: samples at the median, and prompts
    whose samples all tie, are left out)."""
    threshold: float = 0.0
    """The score above which a sample is desirable, with `label=threshold`."""
    generation_batch_size: int = 256
    """Sequences per `generate`, scoring and judge call (a small model costs per token step
    rather than per sequence: the larger, the faster)."""
    seed: int = 0
    """Seed of each round's prompt choice, batch order and sampling (with the round's index)."""
