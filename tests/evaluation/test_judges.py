"""The judge interface: the toy world's ground truth, and any saved reward model."""

import logging

import pytest
import torch
from transformers import LlamaConfig, LlamaForSequenceClassification

from prefopt.config.schema import EvalConfig
from prefopt.evaluation import check_eval_config
from prefopt.evaluation.judges import RewardModelJudge, ToyJudge, build_judge
from prefopt.toy import reward

from .conftest import word_tokenizer


def save_reward_model(path, num_labels=1, seed=0):
    """A tiny Llama sequence classifier (one logit = the reward) and its tokenizer, on disk."""
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=32,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=64,
        num_labels=num_labels,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )
    LlamaForSequenceClassification(config).save_pretrained(path)
    word_tokenizer().save_pretrained(path)
    return path


def test_toy_judge_is_the_ground_truth_reward_of_the_completion():
    completions = [
        " it is great .",
        " the sound is awful .",
        " i loved the price but the design is bad .",
    ]
    scores = ToyJudge().score(["review of the red phone :"] * 3, completions)
    assert scores == [reward(c) for c in completions]
    assert scores[0] > scores[1]


def test_reward_model_judge_scores_prompt_plus_completion_one_logit_each(tmp_path):
    path = save_reward_model(tmp_path / "rm")
    judge = build_judge(EvalConfig(judge="reward_model", judge_path=str(path), batch_size=4), True)
    assert isinstance(judge, RewardModelJudge)
    prompts = ["review of the phone :", "review of the phone :", "review of the phone :"]
    completions = [" it is great .", " bad", " i loved the sound but the price is awful ."]
    scores = judge.score(prompts, completions)

    # The same model on each text alone (no padding at all), read by hand.
    model = LlamaForSequenceClassification.from_pretrained(path).eval()
    tokenizer = word_tokenizer()
    for text_score, prompt, completion in zip(scores, prompts, completions):
        ids = tokenizer(prompt + completion, return_tensors="pt").input_ids
        with torch.no_grad():
            expected = model(input_ids=ids).logits[0, 0].item()
        assert text_score == pytest.approx(expected, abs=1e-5)
    assert len(set(scores)) == 3
    assert next(judge.model.parameters()).device.type == "cpu"


CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}{{ m['role'] }} : {{ m['content'] }} {{ eos_token }} "
    "{% endfor %}"
)


def test_reward_model_with_a_chat_template_reads_the_exchange_through_it(tmp_path):
    """A reward model trained on chat transcripts scores `<bos> user : prompt <eos> assistant :
    completion <eos>`, tokenized without a second BOS, not the bare prompt + completion."""
    path = save_reward_model(tmp_path / "rm")
    tokenizer = word_tokenizer()
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.save_pretrained(path)
    judge = RewardModelJudge(str(path))
    prompt, completion = "review of the phone :", " it is great ."

    text = judge.render(prompt, completion)
    bos, eos = tokenizer.bos_token, tokenizer.eos_token
    assert text == f"{bos}user : {prompt} {eos} assistant : it is great . {eos} "
    ids = tokenizer(text, add_special_tokens=False, return_tensors="pt").input_ids
    assert (ids == tokenizer.bos_token_id).sum() == 1

    model = LlamaForSequenceClassification.from_pretrained(path).eval()
    with torch.no_grad():
        expected = model(input_ids=ids).logits[0, 0].item()
        plain = tokenizer(prompt + completion, return_tensors="pt").input_ids
        plain_score = model(input_ids=plain).logits[0, 0].item()
    [score] = judge.score([prompt], [completion])
    assert score == pytest.approx(expected, abs=1e-5)
    assert score != pytest.approx(plain_score, abs=1e-5)


def test_a_classifier_with_several_outputs_is_refused(tmp_path):
    path = save_reward_model(tmp_path / "clf", num_labels=2)
    with pytest.raises(ValueError, match="num_labels=1"):
        RewardModelJudge(str(path))


def test_the_toy_judge_steps_aside_on_data_that_is_not_the_toy_world(caplog):
    with caplog.at_level(logging.WARNING, logger="prefopt.evaluation"):
        assert build_judge(EvalConfig(judge="toy"), uses_toy_data=False) is None
    assert "eval=reward_model eval.judge_path=" in caplog.text
    assert isinstance(build_judge(EvalConfig(judge="toy"), uses_toy_data=True), ToyJudge)
    assert build_judge(EvalConfig(judge="none"), uses_toy_data=True) is None


def test_bad_eval_settings_fail_at_start():
    with pytest.raises(ValueError, match="eval.judge='gpt4'"):
        check_eval_config(EvalConfig(judge="gpt4"))
    with pytest.raises(ValueError, match="needs eval.judge_path"):
        check_eval_config(EvalConfig(judge="reward_model"))
    with pytest.raises(ValueError, match="eval.temperature=-1"):
        check_eval_config(EvalConfig(temperature=-1.0))
    check_eval_config(EvalConfig())


def test_a_new_judge_is_a_target_in_the_eval_config(compose_config):
    """No Python in prefopt to touch: a judge is added under `eval.judges` and picked by name."""
    cfg = compose_config(
        "+eval.judges.lexicon={_target_: prefopt.evaluation.judges.ToyJudge}",
        "eval.judge=lexicon",
    )
    check_eval_config(cfg.eval)
    assert isinstance(build_judge(cfg.eval, uses_toy_data=True), ToyJudge)
    assert build_judge(compose_config("eval.judge=none").eval, uses_toy_data=True) is None
    misspelled = EvalConfig(judge="mine", judges={"mine": {"_target_": "prefopt.evaluation.Judg"}})
    with pytest.raises(ValueError, match=r"^eval.judges.mine._target_=prefopt.evaluation.Judg: no"):
        check_eval_config(misspelled)


def test_the_reward_model_judge_reads_the_policy_dtype_from_the_config(compose_config, tmp_path):
    path = save_reward_model(tmp_path / "rm")
    cfg = compose_config("eval=reward_model", f"eval.judge_path={path}", "model.dtype=bfloat16")
    judge = build_judge(cfg.eval, uses_toy_data=True)
    assert isinstance(judge, RewardModelJudge) and judge.model.dtype == torch.bfloat16
    assert judge.batch_size == 8  # conf/eval/reward_model.yaml's eval.batch_size
