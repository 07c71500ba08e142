"""Judging without crashing a long run: failures and ties counted, not raised.

The contract, shared by evaluation and the online loop:

- `score_completions(judge, prompts, completions, device, batch_size)` calls `judge.score` on
  batches of `batch_size` exchanges (all at once when None) and returns a `JudgeScores`: one
  entry per completion, a float, or None where the judge gave no usable score.
- No usable score (a failure): the call on that batch raised (every completion of the batch
  fails), returned a list of another length than it was given (the same: which score belongs
  to which completion is unknown), or returned None, a non-number, NaN or ±inf for that
  completion. Failures are counted in `JudgeScores.failures`, and one warning per call names
  the judge, the count and the first error.
- A completion without a score is left out of whatever compares it: `paired(a, b)` keeps the
  positions where both sides have a score (win rates, preference pairs), and `ties(a, b)`
  counts those positions where both scores are equal.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass

log = logging.getLogger("prefopt.judges")


@dataclass
class JudgeScores:
    scores: list[float | None]
    """One per completion, in order; None = no usable score."""
    failures: int = 0
    """How many completions got no usable score."""

    def __len__(self) -> int:
        return len(self.scores)

    @property
    def valid(self) -> list[float]:
        """The usable scores, in order."""
        return [s for s in self.scores if s is not None]


def score_completions(
    judge,
    prompts: Sequence[str],
    completions: Sequence[str],
    device=None,
    batch_size: int | None = None,
) -> JudgeScores:
    """`judge`'s scores of `completions` (each following the prompt at the same position),
    failures counted rather than raised (see the module's contract)."""
    if len(prompts) != len(completions):
        raise ValueError(f"{len(prompts)} prompts but {len(completions)} completions")
    step = batch_size or max(len(completions), 1)
    scores: list[float | None] = []
    first_error: str | None = None
    for start in range(0, len(completions), step):
        batch_prompts = list(prompts[start : start + step])
        batch_completions = list(completions[start : start + step])
        try:
            given = list(judge.score(batch_prompts, batch_completions, device=device))
        except Exception as error:  # a long run outlives one bad batch; counted and logged
            first_error = first_error or f"{type(error).__name__}: {error}"
            scores += [None] * len(batch_completions)
            continue
        if len(given) != len(batch_completions):
            first_error = first_error or (
                f"returned {len(given)} scores for {len(batch_completions)} completions"
            )
            scores += [None] * len(batch_completions)
            continue
        for value in given:
            usable = _usable(value)
            if usable is None:
                first_error = first_error or f"returned {value!r}"
            scores.append(usable)
    failures = sum(s is None for s in scores)
    if failures:
        log.warning(
            "judge %s: %d of %d completions got no score and are left out (%s)",
            getattr(judge, "name", type(judge).__name__),
            failures,
            len(scores),
            first_error,
        )
    return JudgeScores(scores, failures)


def _usable(value) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _scores(side: JudgeScores | Sequence[float | None]) -> Sequence[float | None]:
    return side.scores if isinstance(side, JudgeScores) else side


def paired(
    a: JudgeScores | Sequence[float | None], b: JudgeScores | Sequence[float | None]
) -> tuple[list[float], list[float]]:
    """The scores of the positions where both `a` and `b` have one, as two aligned lists."""
    a, b = _scores(a), _scores(b)
    if len(a) != len(b):
        raise ValueError(
            f"{len(a)} scores against {len(b)}: they must pair up position by position"
        )
    kept = [(x, y) for x, y in zip(a, b) if x is not None and y is not None]
    return [x for x, _ in kept], [y for _, y in kept]


def ties(a: JudgeScores | Sequence[float | None], b: JudgeScores | Sequence[float | None]) -> int:
    """Positions where `a` and `b` both have a score and the two are equal."""
    return sum(x == y for x, y in zip(*paired(a, b)))
