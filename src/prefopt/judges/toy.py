"""`ToyJudge`: the toy world's ground-truth reward (`prefopt.toy.reward`) of the completion."""

from __future__ import annotations

import torch


class ToyJudge:
    name = "toy"
    needs_toy_world = True
    """It scores the toy world's sentiment lexicon: meaningless on other data."""

    def score(
        self, prompts: list[str], completions: list[str], device: torch.device | None = None
    ) -> list[float]:
        from prefopt.toy import reward

        return [reward(completion) for completion in completions]
