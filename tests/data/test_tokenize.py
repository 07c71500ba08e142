"""Tokenization rules: joint tokenization, exact boundary, BOS/EOS once, chat template, truncation.

Every case goes through the production pipeline (`prepare_rows`: a jsonl file, prepared in
batches). Expected ids are built from the tokenizer's plain encoding of hand-written strings;
expected boundaries from decoding token prefixes (the largest k whose decoded text is still a
prefix of the prompt), which is independent of the offsets the implementation uses.
"""

from __future__ import annotations

import pytest

from prefopt.data.tokenize import DROPPED_IDENTICAL, DROPPED_TRUNCATED_IDENTICAL

from .conftest import WithoutOffsets, prepare_rows


def enc(tokenizer, text: str) -> list[int]:
    """Plain ids of a text, no special tokens added."""
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def plain(prompt, chosen, rejected):
    return {"prompt": prompt, "chosen": chosen, "rejected": rejected}


def chat(prompt, chosen, rejected):
    return {
        "prompt": [{"role": "user", "content": prompt}],
        "chosen": [{"role": "assistant", "content": chosen}],
        "rejected": [{"role": "assistant", "content": rejected}],
    }


def prepare_one(tmp_path, tokenizer, record, **settings) -> dict:
    """The one example `record` gives (plain text read as explicit, messages as conversational)."""
    layout = "conversational" if isinstance(record["prompt"], list) else "explicit"
    [example], _ = prepare_rows(tmp_path, tokenizer, [record], format=layout, **settings)
    return example


def prompt_tokens_by_decoding(tokenizer, ids: list[int], prompt: str) -> int:
    """How many leading ids decode to a prefix of the prompt (so hold no completion character)."""
    k = 0
    while k < len(ids) and prompt.startswith(tokenizer.decode(ids[: k + 1])):
        k += 1
    return k


@pytest.mark.parametrize(
    ("prompt", "completion"),
    [
        ("Question: hi ", "there"),  # the prompt's trailing space merges into " there"
        ("Question: h", "i there"),  # a word split by the boundary: " hi" holds completion text
        ("Question: hi", " there"),  # a clean boundary
    ],
)
@pytest.mark.parametrize("use_offsets", [True, False], ids=["offsets", "common-prefix"])
def test_prompt_and_completion_are_tokenized_together(
    tmp_path, tokenizer, prompt, completion, use_offsets
):
    # Without offsets: the slow-tokenizer path, on the same tokenizer.
    seen_as = tokenizer if use_offsets else WithoutOffsets(tokenizer)
    example = prepare_one(tmp_path, seen_as, plain(prompt, completion, "you"))

    body = enc(tokenizer, prompt + completion)
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    assert example["chosen_input_ids"] == [bos, *body, eos]
    boundary = prompt_tokens_by_decoding(tokenizer, body, prompt)
    assert example["chosen_prompt_length"] == 1 + boundary
    # The first completion token reaches into the completion (it may also hold prompt text).
    assert len(tokenizer.decode(body[: boundary + 1])) > len(prompt)


def test_boundary_merge_is_real(tokenizer):
    """The premise of the test above: separate encodings would differ from the joint one."""
    assert enc(tokenizer, "Question: hi ") + enc(tokenizer, "there") != enc(
        tokenizer, "Question: hi there"
    )
    assert tokenizer.convert_ids_to_tokens(enc(tokenizer, "Question: hi there"))[-1] == "Ġthere"


def test_merged_token_starts_the_completion(tmp_path, tokenizer):
    example = prepare_one(tmp_path, tokenizer, plain("Question: hi ", "there", "you"))
    ids, start = example["chosen_input_ids"], example["chosen_prompt_length"]
    assert tokenizer.convert_ids_to_tokens(ids[start]) == "Ġthere"
    assert tokenizer.decode(ids[1:start]) == "Question: hi"


def test_prompt_input_ids_are_the_prompt_alone_with_bos(tmp_path, tokenizer):
    example = prepare_one(tmp_path, tokenizer, plain("Question: hi", " there", " you"))
    assert example["prompt_input_ids"] == [tokenizer.bos_token_id, *enc(tokenizer, "Question: hi")]


def test_bos_is_not_doubled_when_the_text_starts_with_it(tmp_path, tokenizer):
    example = prepare_one(tmp_path, tokenizer, plain("<s>Question: hi", " there", " you"))
    bos = tokenizer.bos_token_id
    for key in ("chosen_input_ids", "rejected_input_ids", "prompt_input_ids"):
        assert example[key][0] == bos
        assert example[key].count(bos) == 1


def test_no_bos_for_a_tokenizer_that_adds_none(tmp_path, tokenizer_without_bos):
    tok = tokenizer_without_bos
    example = prepare_one(tmp_path, tok, plain("Question: hi", " there", " you"))
    assert example["chosen_input_ids"] == [*enc(tok, "Question: hi there"), tok.eos_token_id]
    assert tok.bos_token_id not in example["chosen_input_ids"]


@pytest.mark.parametrize("chosen", [" there", " there</s>"])
def test_eos_exactly_once_at_the_end(tmp_path, tokenizer, chosen):
    example = prepare_one(tmp_path, tokenizer, plain("Question: hi", chosen, " you</s>"))
    eos = tokenizer.eos_token_id
    for key in ("chosen_input_ids", "rejected_input_ids"):
        assert example[key][-1] == eos
        assert example[key].count(eos) == 1
    assert example["chosen_input_ids"] == [
        tokenizer.bos_token_id,
        *enc(tokenizer, "Question: hi there"),
        eos,
    ]


def test_an_empty_completion_is_eos_alone(tmp_path, tokenizer):
    """Preferring an empty answer is a real preference: it is trained as EOS right after the
    prompt, and counted."""
    [example], report = prepare_rows(
        tmp_path, tokenizer, [plain("Question: hi", "", " Go away")], format="explicit"
    )
    prompt_ids = [tokenizer.bos_token_id, *enc(tokenizer, "Question: hi")]
    assert example["chosen_input_ids"] == [*prompt_ids, tokenizer.eos_token_id]
    assert example["chosen_prompt_length"] == len(prompt_ids)
    assert example["rejected_input_ids"] == [
        *prompt_ids,
        *enc(tokenizer, " Go away"),
        tokenizer.eos_token_id,
    ]
    assert report.empty_completions == 1


def test_chat_template_rendering(tmp_path, tokenizer):
    example = prepare_one(tmp_path, tokenizer, chat("hi there", "hello friend", "go away"))
    # The test's template, written out by hand: BOS text, turns closed by <|end|>.
    prompt_text = "<s><|user|>hi there<|end|><|assistant|>"
    prompt_ids = enc(tokenizer, prompt_text)
    end_of_turn = tokenizer.convert_tokens_to_ids("<|end|>")
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id

    assert example["chosen_input_ids"] == enc(tokenizer, prompt_text + "hello friend<|end|>")
    assert example["rejected_input_ids"] == enc(tokenizer, prompt_text + "go away<|end|>")
    assert example["chosen_prompt_length"] == example["rejected_prompt_length"] == len(prompt_ids)
    assert example["prompt_input_ids"] == prompt_ids
    for key in ("chosen_input_ids", "rejected_input_ids"):
        ids = example[key]
        assert ids.count(bos) == 1 and ids[0] == bos  # the template's BOS only
        assert ids[-1] == end_of_turn and eos not in ids  # no EOS after the end of turn


def test_chat_template_that_does_not_extend_the_prompt_is_a_clear_error(tmp_path, tokenizer):
    bad = {
        "prompt": [{"role": "user", "content": "hi"}],
        "chosen": [{"role": "user", "content": "again"}],  # not an assistant turn: no header
        "rejected": [{"role": "assistant", "content": "no"}],
    }
    records = [chat("hi", "a", "b"), chat("hello", "c", "d"), bad]
    with pytest.raises(ValueError, match=r"data.jsonl line 3: .*does not start with"):
        prepare_rows(tmp_path, tokenizer, records, format="conversational")


def test_conversational_data_needs_a_chat_template(tmp_path, tokenizer_without_bos):
    tok = tokenizer_without_bos
    saved, tok.chat_template = tok.chat_template, None
    try:
        with pytest.raises(ValueError, match="needs a chat template"):
            prepare_one(tmp_path, tok, chat("hi", "a", "b"))
    finally:
        tok.chat_template = saved


def test_truncation_keeps_the_prompt_end_and_the_completion_start(tmp_path, tokenizer):
    # Newlines end pre-tokens, so here separate encodings equal the joint one.
    prompt = "the quick brown fox jumps over the lazy dog\n"
    chosen = "hello there friend, the weather is nice there."
    rejected = "Go away, I am busy with other things."
    assert enc(tokenizer, prompt) + enc(tokenizer, chosen) == enc(tokenizer, prompt + chosen)
    max_length, max_prompt_length = 12, 5
    example = prepare_one(
        tmp_path,
        tokenizer,
        plain(prompt, chosen, rejected),
        max_length=max_length,
        max_prompt_length=max_prompt_length,
    )

    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    prompt_kept = [bos, *enc(tokenizer, prompt)[-(max_prompt_length - 1) :]]
    for side, completion in (("chosen", chosen), ("rejected", rejected)):
        ids = example[f"{side}_input_ids"]
        assert len(ids) == max_length
        assert example[f"{side}_prompt_length"] == max_prompt_length
        assert (
            ids
            == prompt_kept + [*enc(tokenizer, completion), eos][: max_length - max_prompt_length]
        )
    assert example["prompt_input_ids"] == prompt_kept


def test_short_prompt_is_not_cut_when_only_the_completion_is_long(tmp_path, tokenizer):
    prompt, chosen = "Question: hi\n", "hello there friend, the weather is nice there."
    example = prepare_one(
        tmp_path, tokenizer, plain(prompt, chosen, "Go away"), max_length=10, max_prompt_length=8
    )
    prompt_ids = [tokenizer.bos_token_id, *enc(tokenizer, prompt)]
    assert example["chosen_input_ids"][: len(prompt_ids)] == prompt_ids
    assert example["chosen_prompt_length"] == len(prompt_ids)
    assert len(example["chosen_input_ids"]) == 10
    assert example["rejected_input_ids"] == [
        *prompt_ids,
        *enc(tokenizer, "Go away"),
        tokenizer.eos_token_id,
    ]


def test_pairs_without_a_preference_are_dropped_and_counted(tmp_path, tokenizer):
    prompt = "Question: hi\n"
    shared = "hello there friend, the weather is nice"  # > 6 completion tokens
    pairs = [
        plain(prompt, shared + " there.", shared + " today."),  # differ only past max_length
        plain(prompt, "same answer", "same answer"),  # identical from the start
        plain(prompt, "Paris", "London"),  # fits
    ]
    examples, report = prepare_rows(
        tmp_path,
        tokenizer,
        pairs,
        format="explicit",
        max_length=12,
        max_prompt_length=6,
        on_invalid="skip",
    )
    assert len(examples) == 1
    assert report.dropped == {DROPPED_TRUNCATED_IDENTICAL: 1, DROPPED_IDENTICAL: 1}
    assert examples[0]["chosen_input_ids"][-2] == enc(tokenizer, "Paris")[-1]


@pytest.mark.parametrize(
    ("rejected", "message"),
    [
        ("same answer", r"data.jsonl line 2: 'chosen' and 'rejected' are identical"),
        (3, r"data.jsonl line 2: field 'rejected' is a int"),
    ],
)
def test_a_bad_row_is_named_by_file_line_and_field(tmp_path, tokenizer, rejected, message):
    records = [plain("Q: ", "Paris", "London"), plain("Q: ", "same answer", rejected)]
    with pytest.raises(ValueError, match=message):
        prepare_rows(tmp_path, tokenizer, records, format="explicit")


def test_lengths_must_leave_room_for_a_completion(tmp_path, tokenizer):
    with pytest.raises(ValueError, match="max_prompt_length"):
        prepare_one(tmp_path, tokenizer, plain("Q", " a", " b"), max_length=8, max_prompt_length=8)
