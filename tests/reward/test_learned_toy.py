"""`judge=learned_toy`: the toy world's reward model, trained once on first use, then cached."""

import json

import pytest
from omegaconf import OmegaConf

import prefopt.reward.learned_toy as learned_toy
from prefopt.files import seal_problem
from prefopt.judges import build_judge
from prefopt.judges.reward_model import RewardModelJudge


@pytest.mark.slow  # trains the small toy world's reward model (~15 s on one busy core)
def test_the_learned_toy_judge_is_trained_once_cached_and_read_as_a_reward_model(
    compose_config, monkeypatch
):
    cfg = compose_config("judge=learned_toy")
    judge = build_judge(cfg.judge, True)
    assert isinstance(judge, learned_toy.LearnedToyJudge) and isinstance(judge, RewardModelJudge)
    folder = learned_toy.learned_reward_model(OmegaConf.merge(cfg.toy))
    assert seal_problem(folder) is None  # written whole, sealed, renamed into place
    trained = json.loads((folder / "training.json").read_text())
    assert trained["settings"] == learned_toy.SETTINGS
    assert trained["val"]["val/accuracy"] > 0.6  # val pairs are ordered by the true reward

    def no_training(*args):
        raise AssertionError("trained again: the cache was not used")

    monkeypatch.setattr(learned_toy, "train_toy_reward_model", no_training)
    again = build_judge(cfg.judge, True)
    prompt = "review of the new red phone :"
    completions = [" the price is great and i loved the sound .", " the price is awful ."]
    assert again.score([prompt] * 2, completions) == judge.score([prompt] * 2, completions)
    assert RewardModelJudge(str(folder)).score([prompt] * 2, completions) == pytest.approx(
        judge.score([prompt] * 2, completions)
    )
    # Another world (another key) would train anew; off the toy world's data it steps aside.
    assert build_judge(cfg.judge, False) is None
