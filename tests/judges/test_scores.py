"""A judge that raises, or returns missing or non-finite scores, costs those completions their
score (counted, warned once) rather than the run; ties are counted among the scored pairs."""

import logging
import math

import pytest

from prefopt.judges import JudgeScores, paired, score_completions, ties


class FlakyJudge:
    """Scores each completion by its length; raises on any batch holding `boom`, returns None
    for `none` and NaN for `nan`, and one score too few for a batch holding `short`."""

    name = "flaky"

    def __init__(self):
        self.calls: list[list[str]] = []

    def score(self, prompts, completions, device=None):
        self.calls.append(list(completions))
        if "boom" in completions:
            raise RuntimeError("out of memory")
        scores = [
            None if c == "none" else math.nan if c == "nan" else float(len(c)) for c in completions
        ]
        return scores[:-1] if "short" in completions else scores


def test_failures_are_counted_per_completion_and_per_failing_batch(caplog):
    completions = ["aa", "bbb", "boom", "x", "none", "c", "nan", "dd", "short", "e"]
    judge = FlakyJudge()
    with caplog.at_level(logging.WARNING, logger="prefopt.judges"):
        result = score_completions(judge, ["p"] * 10, completions, batch_size=2)
    assert judge.calls == [completions[i : i + 2] for i in range(0, 10, 2)]
    # batch 1 fine; batch 2 raises (both lost); batch 3: None lost; batch 4: NaN lost;
    # batch 5 returns one score too few (both lost: which is which is unknown)
    assert result.scores == [2.0, 3.0, None, None, None, 1.0, None, 2.0, None, None]
    assert result.failures == 6 and result.valid == [2.0, 3.0, 1.0, 2.0]
    [warning] = [r.getMessage() for r in caplog.records]
    assert warning.startswith("judge flaky: 6 of 10 completions got no score")
    assert "RuntimeError: out of memory" in warning


def test_a_judge_that_never_fails_warns_nothing(caplog):
    with caplog.at_level(logging.WARNING, logger="prefopt.judges"):
        result = score_completions(FlakyJudge(), ["p", "q", "r"], ["a", "bb", "ccc"])
    assert result == JudgeScores([1.0, 2.0, 3.0], 0)
    assert caplog.records == []


def test_pairs_without_two_scores_are_left_out_and_ties_counted():
    """Positions 0..5: (2,2) tie, (None,1) out, (3,1), (1,None) out, (4,4) tie, (0,5)."""
    policy = JudgeScores([2.0, None, 3.0, 1.0, 4.0, 0.0], 2)
    reference = [2.0, 1.0, 1.0, None, 4.0, 5.0]
    assert paired(policy, reference) == ([2.0, 3.0, 4.0, 0.0], [2.0, 1.0, 4.0, 5.0])
    assert ties(policy, reference) == 2
    assert ties([1.0, 2.0], [2.0, 1.0]) == 0
    with pytest.raises(ValueError, match="pair up"):
        paired([1.0], [1.0, 2.0])
