"""Layouts normalised to (prompt, chosen, rejected), their detection, and their error messages."""

from __future__ import annotations

import pytest

from prefopt.data.formats import Pair, detect_format, normalise, split_shared_prefix
from prefopt.data.sources import Rows


def rows(*records) -> Rows:
    return Rows("prefs.jsonl", list(records), list(range(1, len(records) + 1)), unit="line")


def user(text):
    return {"role": "user", "content": text}


def assistant(text):
    return {"role": "assistant", "content": text}


HH_CHOSEN = "\n\nHuman: hi\n\nAssistant: Hello there"
HH_REJECTED = "\n\nHuman: hi\n\nAssistant: Go away"


def test_explicit():
    data = rows({"prompt": "Q?", "chosen": " yes", "rejected": " no", "extra": 1})
    assert detect_format(data) == "explicit"
    assert normalise(data) == [Pair("Q?", " yes", " no", "prefs.jsonl line 1")]


def test_implicit_hh_prompt_ends_after_the_assistant_marker():
    data = rows({"chosen": HH_CHOSEN, "rejected": HH_REJECTED})
    assert detect_format(data) == "implicit"
    [pair] = normalise(data)
    assert pair.prompt == "\n\nHuman: hi\n\nAssistant:"
    assert (pair.chosen, pair.rejected) == (" Hello there", " Go away")


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


def test_conversational_without_prompt_uses_the_shared_leading_messages():
    chosen = [user("hi"), assistant("hello"), user("weather?"), assistant("sunny")]
    rejected = [user("hi"), assistant("hello"), user("weather?"), assistant("no idea")]
    data = rows({"chosen": chosen, "rejected": rejected})
    assert detect_format(data) == "conversational"
    [pair] = normalise(data)
    assert pair.conversational
    assert pair.prompt == chosen[:3]
    assert (pair.chosen, pair.rejected) == ([assistant("sunny")], [assistant("no idea")])


def test_conversational_with_message_prompt():
    data = rows({"prompt": [user("hi")], "chosen": [assistant("a")], "rejected": [assistant("b")]})
    assert detect_format(data) == "conversational"
    [pair] = normalise(data)
    assert (pair.prompt, pair.chosen, pair.rejected) == (
        [user("hi")],
        [assistant("a")],
        [assistant("b")],
    )


def test_conversational_string_prompt_repeated_in_completions_is_stripped():
    # UltraFeedback-binarized style: prompt string, full conversations as completions.
    data = rows(
        {
            "prompt": "hi",
            "chosen": [user("hi"), assistant("a")],
            "rejected": [user("hi"), assistant("b")],
        }
    )
    assert detect_format(data) == "conversational"
    [pair] = normalise(data)
    assert (pair.prompt, pair.chosen, pair.rejected) == (
        [user("hi")],
        [assistant("a")],
        [assistant("b")],
    )


def test_format_can_be_forced():
    data = rows({"prompt": "Q: hi", "chosen": "Q: hi yes", "rejected": "Q: hi no"})
    [pair] = normalise(data, "implicit")
    assert (pair.prompt, pair.chosen, pair.rejected) == ("Q: hi", " yes", " no")
    [pair] = normalise(data, "conversational")
    assert pair.prompt == [user("Q: hi")] and pair.chosen == [assistant("Q: hi yes")]


def test_missing_columns_error_lists_the_columns_and_layouts():
    data = rows({"question": "Q", "good": "a", "bad": "b"})
    with pytest.raises(ValueError) as error:
        normalise(data)
    message = str(error.value)
    assert "\n" not in message
    assert "prefs.jsonl line 1" in message
    assert "['bad', 'good', 'question']" in message
    assert "explicit" in message and "conversational" in message and "implicit" in message
    assert "data.columns" in message


def test_wrong_type_names_row_and_field():
    data = rows(
        {"prompt": "Q", "chosen": "a", "rejected": "b"},
        {"prompt": "Q", "chosen": "a", "rejected": 3},
    )
    with pytest.raises(ValueError, match=r"prefs.jsonl line 2: field 'rejected' is a int"):
        normalise(data, "explicit")


def test_bad_message_names_row_field_and_index():
    data = rows({"chosen": [user("hi"), {"text": "x"}], "rejected": [user("hi"), assistant("b")]})
    with pytest.raises(ValueError, match=r"line 1: field 'chosen' message 1"):
        normalise(data)


def test_mixed_layouts_are_reported():
    data = rows({"prompt": "Q", "chosen": "a", "rejected": "b"}, {"chosen": "a", "rejected": "b"})
    with pytest.raises(ValueError, match="different layouts"):
        detect_format(data)


def test_unknown_format_name():
    with pytest.raises(ValueError, match="data.format='sharegpt'"):
        normalise(rows({"prompt": "Q", "chosen": "a", "rejected": "b"}), "sharegpt")
