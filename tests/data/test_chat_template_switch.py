"""`data.apply_chat_template`: what plain-text rows become when the tokenizer has a chat
template (null: text as it is, said in one info line; true: a user turn and the assistant's
reply), and the settings that cannot work, in one line."""

import logging

import pytest

from prefopt.errors import PrefoptError

from .conftest import CHAT_TEMPLATE, build_tokenizer, prepare_rows

ROW = {"prompt": "hi there,", "chosen": " hello there friend", "rejected": " go away"}


def test_plain_text_stays_text_by_default_and_says_so(tmp_path, tokenizer, caplog):
    with caplog.at_level(logging.INFO, logger="prefopt.data"):
        [example], _ = prepare_rows(tmp_path, tokenizer, [ROW])
    assert any("data.apply_chat_template=true" in r.message for r in caplog.records)
    text = tokenizer.decode(example["chosen_input_ids"])
    assert text == "<s>hi there, hello there friend</s>"


def test_true_renders_the_prompt_as_a_user_turn_and_the_completion_as_the_reply(tmp_path):
    tokenizer = build_tokenizer()
    [example], _ = prepare_rows(tmp_path, tokenizer, [ROW], apply_chat_template=True)
    chosen = tokenizer.decode(example["chosen_input_ids"])
    prompt = tokenizer.decode(example["prompt_input_ids"])
    assert prompt == "<s><|user|>hi there,<|end|><|assistant|>"
    assert chosen == "<s><|user|>hi there,<|end|><|assistant|> hello there friend<|end|>"
    assert example["original_prompt"] == '"hi there,"'  # the judge still reads the text


def test_settings_that_cannot_work_are_one_line(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    without = build_tokenizer()
    without.chat_template = None
    with pytest.raises(PrefoptError, match="data.apply_chat_template=true: this tokenizer"):
        prepare_rows(tmp_path / "a", without, [ROW], apply_chat_template=True)
    conversation = {
        "prompt": [{"role": "user", "content": "hi"}],
        "chosen": [{"role": "assistant", "content": "hello there"}],
        "rejected": [{"role": "assistant", "content": "go away"}],
    }
    tokenizer = build_tokenizer()
    assert tokenizer.chat_template == CHAT_TEMPLATE
    with pytest.raises(PrefoptError, match="data.apply_chat_template=false: conversational"):
        prepare_rows(tmp_path / "b", tokenizer, [conversation], apply_chat_template=False)
