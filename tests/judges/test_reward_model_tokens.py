"""The reward-model judge reads what a reward model trained by `task=reward` read in training.

Training's ids come from `prefopt.data.tokenize.PairTokenizer`: BOS once in front (where the
tokenizer adds one, never a second after a chat template that wrote it), EOS once after plain
text. A judge that scores `prompt + completion` without that EOS reads a position the model was
never trained to score; one that adds a BOS a template already wrote reads a doubled BOS.
"""

import torch
from transformers import LlamaForSequenceClassification

from prefopt.data.layouts import Pair
from prefopt.data.tokenize import PairTokenizer
from prefopt.judges.reward_model import RewardModelJudge

from ..conftest import tiny_llama_config
from ..evaluation.conftest import word_tokenizer

BOS, EOS = 1, 2


def save_reward_model(path, tokenizer):
    torch.manual_seed(0)
    LlamaForSequenceClassification(tiny_llama_config(32, num_labels=1)).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


def training_ids(tokenizer, prompt, completion, as_chat=False) -> list[int]:
    pair_tokenizer = PairTokenizer(tokenizer, 64, 32, with_prompt_ids=False, text_as_chat=as_chat)
    pair = Pair(prompt, completion, " it is bad .", "test")
    [(tokenized, _)] = pair_tokenizer.tokenize_texts(
        [pair_tokenizer.texts(pair)], [not pair_tokenizer.templated(pair)]
    )
    return tokenized["chosen_input_ids"]


def test_plain_text_is_scored_with_the_eos_training_ended_it_with(tmp_path):
    tokenizer = word_tokenizer()
    judge = RewardModelJudge(save_reward_model(tmp_path / "rm", tokenizer))
    prompt, completion = "review of the phone :", " it is great ."
    ids = judge.encode(judge.render(prompt, completion))
    assert ids == training_ids(tokenizer, prompt, completion)
    assert ids[0] == BOS and ids[-1] == EOS and ids.count(BOS) == 1 and ids.count(EOS) == 1
    # A completion that already ends with the EOS keeps one.
    assert judge.encode(judge.render(prompt, completion + " <eos>")) == ids


def test_a_chat_template_that_writes_the_bos_is_not_given_a_second(tmp_path):
    tokenizer = word_tokenizer()
    tokenizer.chat_template = (
        "{{ bos_token }}{% for m in messages %}{{ m['content'] }} {{ eos_token }} {% endfor %}"
    )
    judge = RewardModelJudge(save_reward_model(tmp_path / "rm", tokenizer))
    ids = judge.encode(judge.render("review of the phone :", "it is great ."))
    assert ids[:2] == [BOS, tokenizer.convert_tokens_to_ids("review")]
    assert ids.count(BOS) == 1


def test_a_chat_template_without_the_bos_gets_the_one_training_put_in_front(tmp_path):
    """The tokenizer adds a BOS to text, the template does not write one: training puts one in
    front (PairTokenizer), so the judge does too."""
    tokenizer = word_tokenizer()
    tokenizer.chat_template = (
        "{% for m in messages %}{{ m['content'] }} {{ eos_token }} {% endfor %}"
    )
    judge = RewardModelJudge(save_reward_model(tmp_path / "rm", tokenizer))
    prompt = "review of the phone :"
    ids = judge.encode(judge.render(prompt, "it is great ."))
    assert ids[0] == BOS and ids.count(BOS) == 1
    rendered = tokenizer.apply_chat_template(
        [{"role": "user", "content": prompt}, {"role": "assistant", "content": "it is great ."}],
        tokenize=False,
    )
    assert ids == [BOS, *tokenizer(rendered, add_special_tokens=False)["input_ids"]]
