"""A reward function of the user's own, in a module on sys.path, for `judge=python`."""

import pytest

REWARD_MODULE = '''
from prefopt.toy import reward


def toy_reward(prompts, completions):
    """The toy world's ground truth, as a user's reward function would be written."""
    assert len(prompts) == len(completions)
    return [reward(completion) for completion in completions]


NOT_A_FUNCTION = 3
'''


@pytest.fixture
def reward_module(tmp_path, monkeypatch):
    """`judge_rewards`, a module of the user's on sys.path holding `toy_reward`."""
    (tmp_path / "judge_rewards.py").write_text(REWARD_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    return "judge_rewards"
