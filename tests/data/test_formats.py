"""Layouts read as (prompt, chosen, rejected), their detection, the registry, and their errors.

Rows go through the production pipeline (`prepare_rows`); where the prompt ends shows in the
ids: `prompt_input_ids` is the prompt alone (after BOS) and each side's ids are the prompt and
its completion tokenized together, which the tests work out from hand-written strings (and, for
conversations, the chat template's rendering).
"""

from __future__ import annotations

import pytest

from prefopt.data.formats import FORMATS, LAYOUTS, detect_format
from prefopt.data.layouts import split_shared_prefix
from prefopt.data.rows import Rows

from .conftest import prepare_rows


def rows(*records) -> Rows:
    return Rows("prefs.jsonl", list(records), list(range(1, len(records) + 1)), unit="line")


def user(text):
    return {"role": "user", "content": text}


def assistant(text):
    return {"role": "assistant", "content": text}


def enc(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def expect_plain(example, tokenizer, prompt: str, chosen: str, rejected: str) -> None:
    """`example` is the plain-text pair (prompt, chosen, rejected), split where the test says
    (each boundary here is clean: the prompt's own tokens come first)."""
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    prompt_ids = [bos, *enc(tokenizer, prompt)]
    assert example["prompt_input_ids"] == prompt_ids
    for side, completion in (("chosen", chosen), ("rejected", rejected)):
        assert example[f"{side}_input_ids"] == [bos, *enc(tokenizer, prompt + completion), eos]
        assert example[f"{side}_prompt_length"] == len(prompt_ids)


def expect_chat(example, tokenizer, prompt: list, chosen: list, rejected: list) -> None:
    """`example` is the conversation pair, rendered by the chat template (no EOS added)."""
    render = tokenizer.apply_chat_template
    prompt_ids = enc(tokenizer, render(prompt, tokenize=False, add_generation_prompt=True))
    assert example["prompt_input_ids"] == prompt_ids
    for side, completion in (("chosen", chosen), ("rejected", rejected)):
        full = render(prompt + completion, tokenize=False, add_generation_prompt=False)
        assert example[f"{side}_input_ids"] == enc(tokenizer, full)
        assert example[f"{side}_prompt_length"] == len(prompt_ids)


HH_CHOSEN = "\n\nHuman: hi\n\nAssistant: Hello there"
HH_REJECTED = "\n\nHuman: hi\n\nAssistant: Go away"


def test_one_registry_of_formats():
    from prefopt.config.schema import DataFormat

    assert FORMATS == ("auto", "explicit", "conversational", "implicit", "unpaired")
    assert tuple(DataFormat.values()) == FORMATS  # the schema's choice lists the registry
    assert [name for name, layout in LAYOUTS.items() if not layout.paired] == ["unpaired"]


def test_explicit(tmp_path, tokenizer):
    record = {"prompt": "Q?", "chosen": " yes", "rejected": " no", "extra": 1}
    assert detect_format(rows(record)) == "explicit"
    [example], _ = prepare_rows(tmp_path, tokenizer, [record])
    expect_plain(example, tokenizer, "Q?", " yes", " no")


def test_implicit_hh_prompt_ends_after_the_assistant_marker(tmp_path, tokenizer):
    record = {"chosen": HH_CHOSEN, "rejected": HH_REJECTED}
    assert detect_format(rows(record)) == "implicit"
    [example], _ = prepare_rows(tmp_path, tokenizer, [record])
    expect_plain(example, tokenizer, "\n\nHuman: hi\n\nAssistant:", " Hello there", " Go away")


@pytest.mark.parametrize(
    ("chosen", "rejected", "expected"),
    [
        # The common prefix "...Assistant: Hel" ends inside a word: cut back before it.
        (
            "Human: hi\n\nAssistant: Hello",
            "Human: hi\n\nAssistant: Help me",
            ("Human: hi\n\nAssistant:", " Hello", " Help me"),
        ),
        # "cat" / "cats": the word continues in one transcript only; still mid-word.
        ("I like the cat", "I like the cats", ("I like the", " cat", " cats")),
        # One transcript contains the other whole: each completion keeps its last word.
        ("A: Sure", "A: Sure, here it is", ("A:", " Sure", " Sure, here it is")),
        # Punctuation is a clean boundary.
        ("A: yes. Good", "A: yes. Bad", ("A: yes.", " Good", " Bad")),
    ],
)
def test_implicit_prompt_is_cut_at_a_clean_boundary(chosen, rejected, expected):
    prompt, chosen_completion, rejected_completion = split_shared_prefix(chosen, rejected)
    assert (prompt, chosen_completion, rejected_completion) == expected
    assert prompt + chosen_completion == chosen and prompt + rejected_completion == rejected


def test_conversational_without_prompt_uses_the_shared_leading_messages(tmp_path, tokenizer):
    chosen = [user("hi"), assistant("hello"), user("weather?"), assistant("sunny")]
    rejected = [user("hi"), assistant("hello"), user("weather?"), assistant("no idea")]
    record = {"chosen": chosen, "rejected": rejected}
    assert detect_format(rows(record)) == "conversational"
    [example], _ = prepare_rows(tmp_path, tokenizer, [record])
    expect_chat(example, tokenizer, chosen[:3], [assistant("sunny")], [assistant("no idea")])


def test_conversational_with_message_prompt(tmp_path, tokenizer):
    record = {"prompt": [user("hi")], "chosen": [assistant("a")], "rejected": [assistant("b")]}
    assert detect_format(rows(record)) == "conversational"
    [example], _ = prepare_rows(tmp_path, tokenizer, [record])
    expect_chat(example, tokenizer, [user("hi")], [assistant("a")], [assistant("b")])


def test_conversational_string_prompt_repeated_in_completions_is_stripped(tmp_path, tokenizer):
    # UltraFeedback-binarized style: prompt string, full conversations as completions.
    record = {
        "prompt": "hi",
        "chosen": [user("hi"), assistant("a")],
        "rejected": [user("hi"), assistant("b")],
    }
    assert detect_format(rows(record)) == "conversational"
    [example], _ = prepare_rows(tmp_path, tokenizer, [record])
    expect_chat(example, tokenizer, [user("hi")], [assistant("a")], [assistant("b")])
    # Not stripped, the prompt would be rendered twice.
    twice = tokenizer.apply_chat_template([user("hi"), user("hi"), assistant("a")], tokenize=False)
    assert example["chosen_input_ids"] != enc(tokenizer, twice)


def test_format_can_be_forced(tmp_path, tokenizer):
    record = {"prompt": "Q: hi", "chosen": "Q: hi yes", "rejected": "Q: hi no"}
    [example], _ = prepare_rows(tmp_path, tokenizer, [record], format="implicit")
    expect_plain(example, tokenizer, "Q: hi", " yes", " no")
    [example], _ = prepare_rows(tmp_path, tokenizer, [record], format="conversational")
    expect_chat(
        example, tokenizer, [user("Q: hi")], [assistant("Q: hi yes")], [assistant("Q: hi no")]
    )


def test_missing_columns_error_lists_the_columns_and_layouts(tmp_path, tokenizer):
    with pytest.raises(ValueError) as error:
        prepare_rows(tmp_path, tokenizer, [{"question": "Q", "good": "a", "bad": "b"}])
    message = str(error.value)
    assert "\n" not in message
    assert "data.jsonl line 1" in message
    assert "['bad', 'good', 'question']" in message
    assert "explicit" in message and "conversational" in message and "implicit" in message
    assert "data.columns" in message


def test_wrong_type_names_row_and_field(tmp_path, tokenizer):
    records = [
        {"prompt": "Q", "chosen": "a", "rejected": "b"},
        {"prompt": "Q", "chosen": "a", "rejected": 3},
    ]
    with pytest.raises(ValueError, match=r"data.jsonl line 2: field 'rejected' is a int"):
        prepare_rows(tmp_path, tokenizer, records, format="explicit")


def test_bad_message_names_row_field_and_index(tmp_path, tokenizer):
    record = {"chosen": [user("hi"), {"text": "x"}], "rejected": [user("hi"), assistant("b")]}
    with pytest.raises(ValueError, match=r"data.jsonl line 1: field 'chosen' message 1"):
        prepare_rows(tmp_path, tokenizer, [record])


def test_mixed_layouts_are_reported(tmp_path, tokenizer):
    records = [{"prompt": "Q", "chosen": "a", "rejected": "b"}, {"chosen": "a", "rejected": "b"}]
    with pytest.raises(ValueError, match="different layouts"):
        detect_format(rows(*records))
    with pytest.raises(ValueError, match="different layouts"):
        prepare_rows(tmp_path, tokenizer, records)


def test_unknown_format_name(tmp_path, tokenizer):
    record = {"prompt": "Q", "chosen": "a", "rejected": "b"}
    with pytest.raises(ValueError, match="data.format='sharegpt' is not one of: auto, explicit"):
        prepare_rows(tmp_path, tokenizer, [record], format="sharegpt")
