"""The judges of the `judge` group: the toy world's ground truth, a saved reward model with its
own tokenizer, a Python function, none; and how a choice is composed and checked."""

import logging

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import LlamaForSequenceClassification, PreTrainedTokenizerFast

from prefopt.config import checks, config_dir
from prefopt.config.judges_schema import (
    NoJudgeConfig,
    PythonJudgeConfig,
    RewardModelJudgeConfig,
    ToyJudgeConfig,
)
from prefopt.errors import PrefoptError
from prefopt.judges import build_judge, check_judge_config
from prefopt.judges.python import PythonJudge
from prefopt.judges.reward_model import RewardModelJudge
from prefopt.judges.toy import ToyJudge
from prefopt.toy import reward

from ..conftest import tiny_llama_config
from ..evaluation.conftest import word_tokenizer


def save_reward_model(path, num_labels=1, seed=0, vocab_size=32):
    """A tiny Llama sequence classifier (one logit = the reward) and its tokenizer, on disk."""
    torch.manual_seed(seed)
    config = tiny_llama_config(vocab_size, num_labels=num_labels)
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
    judge = build_judge(RewardModelJudgeConfig(path=str(path), batch_size=2), True)
    assert isinstance(judge, RewardModelJudge) and judge.model.dtype == torch.float32
    prompts = ["review of the phone :", "review of the phone :", "review of the phone :"]
    completions = [" it is great .", " bad", " i loved the sound but the price is awful ."]
    scores = judge.score(prompts, completions)

    # The same model on each text alone (no padding at all), read by hand: BOS, the text, and
    # the EOS that training (`task=reward`, data/tokenize.py) ends plain text with.
    model = LlamaForSequenceClassification.from_pretrained(path).eval()
    tokenizer = word_tokenizer()
    for text_score, prompt, completion in zip(scores, prompts, completions):
        ids = tokenizer(prompt + completion + " <eos>", return_tensors="pt").input_ids
        assert ids[0, 0].item() == tokenizer.bos_token_id and ids[0, -1].item() == 2
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


def other_family_tokenizer() -> PreTrainedTokenizerFast:
    """A reward model's own tokenizer, unlike the policy's (`word_tokenizer`): other special
    tokens, other ids for the same words (reversed order, after 8 words of its own), 44 ids,
    and a chat template of its own whose rendered text begins with its BOS `<s>`."""
    own_words = "[INST] [/INST] user assistant review rating : stars".split()
    words = own_words + [w for w in reversed(word_tokenizer().get_vocab()) if not w.startswith("<")]
    vocab = {t: i for i, t in enumerate(["<s>", "</s>", "<unk>", "<p>", *dict.fromkeys(words)])}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<p>",
        clean_up_tokenization_spaces=False,
    )
    tokenizer.chat_template = (
        "{{ bos_token }}{% for m in messages %}{% if m['role'] == 'user' %}[INST] "
        "{{ m['content'] }} [/INST]{% else %} {{ m['content'] }} {{ eos_token }}{% endif %}"
        "{% endfor %}"
    )
    return tokenizer


def test_a_reward_model_of_another_family_reads_text_through_its_own_tokenizer(tmp_path):
    """The judge receives text: the policy's tokenizer never enters. Its scores are what the
    model gives on the rendered exchange tokenized by the reward model's own tokenizer (one
    BOS, `<s>`, id 0), and not what it would give on the policy tokenizer's ids of the text."""
    own = other_family_tokenizer()
    policy_tokenizer = word_tokenizer()
    assert own.get_vocab() != policy_tokenizer.get_vocab()
    torch.manual_seed(1)
    config = tiny_llama_config(len(own), num_labels=1, pad_token_id=own.pad_token_id)
    model = LlamaForSequenceClassification(config).eval()
    model.save_pretrained(tmp_path / "rm")
    own.save_pretrained(tmp_path / "rm")

    judge = build_judge(RewardModelJudgeConfig(path=str(tmp_path / "rm"), batch_size=2), False)
    prompts = ["review of the phone :", "the price", "review of the phone :"]
    completions = [" it is great .", " is awful and very bad .", " i loved the sound"]
    scores = judge.score(prompts, completions)

    for score, prompt, completion in zip(scores, prompts, completions):
        text = f"<s>[INST] {prompt} [/INST] {completion.strip()} </s>"
        assert judge.render(prompt, completion) == text
        ids = own(text, add_special_tokens=False, return_tensors="pt").input_ids
        assert (ids == own.bos_token_id).sum() == 1 and ids[0, 0] == own.bos_token_id == 0
        assert own.unk_token_id not in ids  # every word is in its vocabulary
        with torch.no_grad():
            expected = model(input_ids=ids).logits[0, 0].item()
            policy_ids = policy_tokenizer(text, return_tensors="pt").input_ids
            as_policy_ids = model(input_ids=policy_ids).logits[0, 0].item()
        assert score == pytest.approx(expected, abs=1e-5)
        assert score != pytest.approx(as_policy_ids, abs=1e-4)


def test_a_classifier_with_several_outputs_is_refused(tmp_path):
    path = save_reward_model(tmp_path / "clf", num_labels=2)
    with pytest.raises(ValueError, match=r"^judge.path=.*num_labels=1"):
        RewardModelJudge(str(path))


def test_the_toy_judge_steps_aside_on_data_that_is_not_the_toy_world(caplog):
    with caplog.at_level(logging.WARNING, logger="prefopt.judges"):
        assert build_judge(ToyJudgeConfig(), uses_toy_data=False) is None
    assert "judge=reward_model judge.path=" in caplog.text
    assert isinstance(build_judge(ToyJudgeConfig(), uses_toy_data=True), ToyJudge)
    assert build_judge(NoJudgeConfig(), uses_toy_data=True) is None
    assert build_judge(None, uses_toy_data=True) is None


def test_a_python_function_is_a_judge(reward_module):
    judge = build_judge(PythonJudgeConfig(function=f"{reward_module}.toy_reward"), True)
    assert isinstance(judge, PythonJudge) and judge.name == "python:judge_rewards.toy_reward"
    completions = [" it is great .", " the sound is awful ."]
    assert judge.score(["p", "q"], completions) == [reward(c) for c in completions]


@pytest.mark.parametrize(
    "function, message",
    [
        ("judge_rewards.no_such_reward", "judge.function=judge_rewards.no_such_reward: no "),
        ("no_such_module.reward", "judge.function=no_such_module.reward: no "),
        ("judge_rewards.NOT_A_FUNCTION", "judge.function=judge_rewards.NOT_A_FUNCTION: no "),
    ],
)
def test_a_python_judge_that_cannot_be_imported_fails_at_start_in_one_line(
    reward_module, function, message
):
    with pytest.raises(PrefoptError, match="^" + message) as error:
        check_judge_config(PythonJudgeConfig(function=function))
    assert "\n" not in str(error.value)


@pytest.mark.parametrize(
    "overrides, judge_class",
    [
        ([], ToyJudge),
        (["judge=toy"], ToyJudge),
        (["judge=reward_model", "judge.path={rm}", "model.dtype=bfloat16"], RewardModelJudge),
        (["judge=python", "judge.function=judge_rewards.toy_reward"], PythonJudge),
        (["judge=none"], type(None)),
    ],
)
def test_each_judge_choice_composes_checks_and_builds(
    compose_config, reward_module, tmp_path, overrides, judge_class
):
    rm = save_reward_model(tmp_path / "rm")
    cfg = compose_config(*(o.format(rm=rm) for o in overrides))
    checks.check_config(cfg)
    judge = build_judge(cfg.judge, uses_toy_data=True)
    assert type(judge) is judge_class
    if judge_class is RewardModelJudge:  # the policy's dtype, conf/judge/reward_model.yaml's batch
        assert judge.model.dtype == torch.bfloat16 and judge.batch_size == 8


def test_a_judge_of_ones_own_is_a_target_node(compose_config):
    """No Python in prefopt to touch: `judge._target_` names a class; its arguments are
    checked against the class's signature before the run starts."""
    cfg = compose_config("judge._target_=prefopt.judges.toy.ToyJudge")
    checks.check_config(cfg)
    assert isinstance(build_judge(cfg.judge, uses_toy_data=True), ToyJudge)
    with pytest.raises(PrefoptError, match=r"^judge._target_=prefopt.judges.Toy: no"):
        check_judge_config(ToyJudgeConfig(_target_="prefopt.judges.Toy"))
    with pytest.raises(PrefoptError, match=r"^judge.foo: judge has no key 'foo'; it takes none$"):
        checks.check_config(compose_config("+judge.foo=1"))


@pytest.mark.parametrize(
    "args, line",
    [
        (
            ["eval=reward_model", "eval.judge_path=/rm", "loss=ipo"],
            "eval=reward_model eval.judge_path=/rm: the judge is its own config group now: "
            "judge=reward_model judge.path=/rm",
        ),
        (["eval.judge_path=/rm"], "judge=reward_model judge.path=/rm"),
        (["eval.judge=none"], ": the judge is its own config group now: judge=none"),
        (["eval=none"], ": the judge is its own config group now: judge=none"),
        (["eval=toy"], ": the judge is its own config group now: judge=toy"),
        (["eval=toy,reward_model"], "now: judge=toy,reward_model"),
        (
            ["+eval.judges.mine={_target_: a.B}"],
            "now: judge._target_=… (or a conf/judge/<name>.yaml: _target_ and its arguments)",
        ),
    ],
)
def test_the_old_spellings_name_the_new_one_in_one_line(args, line):
    with pytest.raises(PrefoptError) as error:
        checks.check_overrides(args, config_dir())
    assert str(error.value).endswith(line) and "\n" not in str(error.value)
    checks.check_overrides(
        ["judge=python", "judge.function=a.b", "eval.num_prompts=4"], config_dir()
    )


def test_a_missing_reward_model_path_fails_at_start(compose_config, tmp_path):
    with pytest.raises(PrefoptError, match=r"^judge.path: required"):
        checks.check_config(compose_config("judge=reward_model"))
    with pytest.raises(PrefoptError, match=r"judge.path"):
        checks.check_config(compose_config("judge=reward_model", f"judge.path={tmp_path}/nothing"))
