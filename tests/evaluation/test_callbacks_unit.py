"""GenerationEvalCallback on a tiny model, without Lightning: the numbers at the start of
training, where the policy IS the reference, are known exactly."""

import copy
from types import SimpleNamespace

import pytest
import torch

from prefopt.config.schema import EvalConfig
from prefopt.evaluation import check_eval_config
from prefopt.evaluation.callback import GenerationEvalCallback
from prefopt.reference import SamplingModel
from prefopt.reference.online import OnlineReference

from ..conftest import tiny_llama


class LengthJudge:
    """Rewards the number of words: any deterministic judge will do here."""

    name = "length"

    def score(self, prompts, completions, device=None):
        return [float(len(c.split())) for c in completions]


def fake_run(tokenizer, n_prompts=6):
    prompts = ["review of the phone :", "it is", "i loved the sound", "the price", "but", "i"]
    examples = [{"prompt_input_ids": tokenizer(p).input_ids} for p in prompts[:n_prompts]]
    trainer = SimpleNamespace(
        datamodule=SimpleNamespace(val_examples=examples),
        global_step=0,
        is_global_zero=True,
        logger=None,
        callback_metrics={},
        sanity_checking=False,
    )
    module = SimpleNamespace(policy=tiny_llama(seed=5), reference=None, device=torch.device("cpu"))
    return trainer, module


def make_callback(tokenizer, reference_model=None, **cfg):
    cfg = EvalConfig(**{"num_prompts": 6, "max_new_tokens": 8, "batch_size": 4, **cfg})
    return GenerationEvalCallback(cfg, tokenizer, LengthJudge(), reference_model)


def test_before_any_step_the_policy_ties_the_reference_and_kl_is_zero(tokenizer):
    """Policy = reference, same seed: identical samples, so every prompt is a tie
    (win rate 6 × 0.5 / 6 = 0.5), equal mean rewards, and log π − log π_ref = 0 exactly."""
    trainer, module = fake_run(tokenizer)
    callback = make_callback(tokenizer)
    callback.setup(trainer, module, "fit")
    callback.on_fit_start(trainer, module)
    metrics = callback.evaluate(trainer, module)
    assert metrics["eval/win_rate_vs_ref"] == 0.5
    assert metrics["eval/reward_policy"] == metrics["eval/reward_ref"]
    assert metrics["eval/kl_seq"] == pytest.approx(0.0, abs=1e-6)
    assert metrics["eval/length_policy"] == metrics["eval/length_ref"] > 0
    assert trainer.callback_metrics["eval/win_rate_vs_ref"] == 0.5


def test_the_reference_is_a_frozen_copy_that_later_updates_do_not_touch(tokenizer):
    """After the policy changes, its samples differ, KL is positive, and the reference's samples
    (generated once) are reused unchanged."""
    trainer, module = fake_run(tokenizer)
    callback = make_callback(tokenizer)
    callback.setup(trainer, module, "fit")
    callback.on_fit_start(trainer, module)
    callback.evaluate(trainer, module)
    reference_texts = callback.reference_samples.texts

    with torch.no_grad():  # a different policy: push every token's logit around
        module.policy.lm_head.weight.mul_(-3.0)
    trainer.global_step = 10
    metrics = callback.evaluate(trainer, module)
    assert callback.reference_samples.texts == reference_texts
    assert metrics["eval/kl_seq"] > 0.1
    assert not all(
        p is q
        for p, q in zip(module.policy.parameters(), callback.reference_model.model.parameters())
    )
    assert [h["step"] for h in callback.history] == [0.0, 10.0]


def test_validation_end_respects_every_n_steps_and_training_end_evaluates_once_more(tokenizer):
    trainer, module = fake_run(tokenizer, n_prompts=2)
    callback = make_callback(tokenizer, every_n_steps=10, num_prompts=2)
    callback.setup(trainer, module, "fit")
    callback.on_fit_start(trainer, module)
    for step in (4, 8, 12, 16, 22, 26, 28):  # the first validation ≥ 10 steps after the last
        trainer.global_step = step
        callback.on_validation_end(trainer, module)
    trainer.global_step = 30
    callback.on_train_end(trainer, module)
    callback.on_train_end(trainer, module)  # nothing new since: no second evaluation
    assert [h["step"] for h in callback.history] == [4.0, 16.0, 26.0, 30.0]


def test_evaluation_samples_the_model_training_runs_as_its_reference(tokenizer):
    """An online reference: evaluation uses its very model through the protocol (no copy in
    `setup`, none loaded); here a copy of the policy, so the numbers are those of a tie."""
    trainer, module = fake_run(tokenizer)
    module.reference = OnlineReference(copy.deepcopy(module.policy))
    callback = make_callback(tokenizer, module.reference.sampling_model)
    callback.setup(trainer, module, "fit")
    assert callback.reference_model.model is module.reference.model
    callback.on_fit_start(trainer, module)
    metrics = callback.evaluate(trainer, module)
    assert metrics["eval/win_rate_vs_ref"] == 0.5
    assert metrics["eval/kl_seq"] == pytest.approx(0.0, abs=1e-6)
    assert callback.reference_model.model is module.reference.model


def test_a_reference_checkpoint_is_loaded_at_the_first_evaluation_only(tokenizer):
    """A cached reference other than the initial policy: nothing copied in `setup`, the
    checkpoint loaded at the first evaluation, then reused."""
    trainer, module = fake_run(tokenizer)
    loads = []
    reference_model = SamplingModel(load=lambda: loads.append(1) or tiny_llama(seed=7))
    callback = make_callback(tokenizer, reference_model)
    callback.setup(trainer, module, "fit")
    callback.on_fit_start(trainer, module)
    assert loads == [] and reference_model.model is None
    first = callback.evaluate(trainer, module)
    trainer.global_step = 10
    callback.evaluate(trainer, module)
    assert loads == [1]
    assert first["eval/kl_seq"] != pytest.approx(0.0, abs=1e-3)  # another model than the policy


class EveryOtherFailsJudge(LengthJudge):
    """The length judge, but no score (NaN) for every other completion it is given."""

    name = "every_other"

    def score(self, prompts, completions, device=None):
        scores = super().score(prompts, completions)
        return [float("nan") if i % 2 else s for i, s in enumerate(scores)]


def test_judge_failures_are_logged_and_left_out_of_the_win_rate(tokenizer, caplog):
    """6 prompts, judge calls of 4 then 2: completions 1, 3 and 5 get no score, on each side.
    Policy = reference, so the 3 scored prompts are ties: win rate 0.5 over those 3, ties 3,
    failures 3 (policy) + 3 (reference) = 6, and the evaluation goes on."""
    trainer, module = fake_run(tokenizer)
    cfg = EvalConfig(num_prompts=6, max_new_tokens=8, batch_size=4)
    callback = GenerationEvalCallback(cfg, tokenizer, EveryOtherFailsJudge())
    callback.setup(trainer, module, "fit")
    callback.on_fit_start(trainer, module)
    metrics = callback.evaluate(trainer, module)
    assert metrics["eval/judge_failures"] == 6.0
    assert metrics["eval/ties"] == 3.0
    assert metrics["eval/win_rate_vs_ref"] == 0.5
    assert callback.reference_rewards.scores[1] is None
    assert "judge every_other: 3 of 6 completions got no score" in caplog.text


def test_the_true_reward_judges_the_same_samples_whatever_the_judge(tokenizer):
    """A true reward that is minus the judge's (word counts): on the same samples, the true
    mean rewards are minus the judge's, and every win becomes a loss and back (ties stay
    ties), so the true win rate is 1 − the judge's. E.g. judge words (policy, ref) = (3, 1),
    (2, 2), (1, 4): judge wins 1 + 0.5 + 0 = 1.5 / 3 = 0.5; true (−3, −1), (−2, −2),
    (−1, −4): 0 + 0.5 + 1 = 1.5 / 3 = 1 − 0.5. Without a judge the truth is still logged."""
    trainer, module = fake_run(tokenizer)
    cfg = EvalConfig(num_prompts=6, max_new_tokens=8, batch_size=4)
    minus_words = lambda text: -float(len(text.split()))  # noqa: E731
    callback = GenerationEvalCallback(cfg, tokenizer, LengthJudge(), true_reward=minus_words)
    no_judge = GenerationEvalCallback(cfg, tokenizer, None, true_reward=minus_words)
    for cb in (callback, no_judge):
        cb.setup(trainer, module, "fit")
        cb.on_fit_start(trainer, module)
        cb.evaluate(trainer, module)
    with torch.no_grad():
        module.policy.lm_head.weight.mul_(-3.0)
    trainer.global_step = 10
    metrics = callback.evaluate(trainer, module)
    assert metrics["eval/win_rate_vs_ref"] != 0.5  # the policy moved: not all ties
    assert metrics["eval/true/win_rate_vs_ref"] == pytest.approx(
        1 - metrics["eval/win_rate_vs_ref"], rel=1e-12
    )
    assert metrics["eval/true/reward_policy"] == -metrics["eval/reward_policy"]
    assert metrics["eval/true/reward_ref"] == -metrics["eval/reward_ref"]

    unjudged = no_judge.evaluate(trainer, module)
    assert "eval/win_rate_vs_ref" not in unjudged and "eval/reward_policy" not in unjudged
    assert unjudged["eval/true/reward_policy"] == metrics["eval/true/reward_policy"]


def test_bad_eval_settings_fail_at_start():
    with pytest.raises(ValueError, match="eval.temperature=-1"):
        check_eval_config(EvalConfig(temperature=-1.0))
    check_eval_config(EvalConfig())
