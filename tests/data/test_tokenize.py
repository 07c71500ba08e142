"""Tokenization rules: joint tokenization, exact boundary, BOS/EOS once, chat template, truncation.

Expected ids are built from the tokenizer's plain encoding of hand-written strings; expected
boundaries from decoding token prefixes (the largest k whose decoded text is still a prefix of
the prompt), which is independent of the offsets the implementation uses.
"""

from __future__ import annotations

import pytest

from prefopt.data.formats import Pair
from prefopt.data.tokenize import DROPPED_IDENTICAL, DROPPED_TOO_LONG, PairTokenizer, tokenize_pairs


def enc(tokenizer, text: str) -> list[int]:
    """Plain ids of a text, no special tokens added."""
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def plain(prompt, chosen, rejected):
    return Pair(prompt, chosen, rejected, where="test row")


def chat(prompt, chosen, rejected):
    return Pair(
        [{"role": "user", "content": prompt}],
        [{"role": "assistant", "content": chosen}],
        [{"role": "assistant", "content": rejected}],
        where="test row",
    )


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
def test_prompt_and_completion_are_tokenized_together(tokenizer, prompt, completion, use_offsets):
    pair_tokenizer = PairTokenizer(tokenizer, max_length=64, max_prompt_length=32)
    pair_tokenizer.use_offsets = use_offsets  # the slow-tokenizer path, on the same tokenizer
    example, reason = pair_tokenizer(plain(prompt, completion, "you"))
    assert reason is None

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


def test_merged_token_starts_the_completion(tokenizer):
    example, _ = PairTokenizer(tokenizer, 64, 32)(plain("Question: hi ", "there", "you"))
    ids, start = example["chosen_input_ids"], example["chosen_prompt_length"]
    assert tokenizer.convert_ids_to_tokens(ids[start]) == "Ġthere"
    assert tokenizer.decode(ids[1:start]) == "Question: hi"


def test_prompt_input_ids_are_the_prompt_alone_with_bos(tokenizer):
    example, _ = PairTokenizer(tokenizer, 64, 32)(plain("Question: hi", " there", " you"))
    assert example["prompt_input_ids"] == [tokenizer.bos_token_id, *enc(tokenizer, "Question: hi")]


def test_bos_is_not_doubled_when_the_text_starts_with_it(tokenizer):
    example, _ = PairTokenizer(tokenizer, 64, 32)(plain("<s>Question: hi", " there", " you"))
    bos = tokenizer.bos_token_id
    for key in ("chosen_input_ids", "rejected_input_ids", "prompt_input_ids"):
        assert example[key][0] == bos
        assert example[key].count(bos) == 1


def test_no_bos_for_a_tokenizer_that_adds_none(tokenizer_without_bos):
    tok = tokenizer_without_bos
    example, _ = PairTokenizer(tok, 64, 32)(plain("Question: hi", " there", " you"))
    assert example["chosen_input_ids"] == [*enc(tok, "Question: hi there"), tok.eos_token_id]
    assert tok.bos_token_id not in example["chosen_input_ids"]


@pytest.mark.parametrize("chosen", [" there", " there</s>"])
def test_eos_exactly_once_at_the_end(tokenizer, chosen):
    example, _ = PairTokenizer(tokenizer, 64, 32)(plain("Question: hi", chosen, " you</s>"))
    eos = tokenizer.eos_token_id
    for key in ("chosen_input_ids", "rejected_input_ids"):
        assert example[key][-1] == eos
        assert example[key].count(eos) == 1
    assert example["chosen_input_ids"] == [
        tokenizer.bos_token_id,
        *enc(tokenizer, "Question: hi there"),
        eos,
    ]


def test_chat_template_rendering(tokenizer):
    example, reason = PairTokenizer(tokenizer, 64, 32)(chat("hi there", "hello friend", "go away"))
    assert reason is None
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


def test_chat_template_that_does_not_extend_the_prompt_is_a_clear_error(tokenizer):
    pair = Pair(
        [{"role": "user", "content": "hi"}],
        [{"role": "user", "content": "again"}],  # not an assistant turn: no generation header
        [{"role": "assistant", "content": "no"}],
        where="data.jsonl line 3",
    )
    with pytest.raises(ValueError, match=r"data.jsonl line 3: .*does not start with"):
        PairTokenizer(tokenizer, 64, 32)(pair)


def test_conversational_data_needs_a_chat_template(tokenizer_without_bos):
    tok = tokenizer_without_bos
    saved, tok.chat_template = tok.chat_template, None
    try:
        with pytest.raises(ValueError, match="needs a chat template"):
            PairTokenizer(tok, 64, 32)(chat("hi", "a", "b"))
    finally:
        tok.chat_template = saved


def test_truncation_keeps_the_prompt_end_and_the_completion_start(tokenizer):
    # Newlines end pre-tokens, so here separate encodings equal the joint one.
    prompt = "the quick brown fox jumps over the lazy dog\n"
    chosen = "hello there friend, the weather is nice there."
    rejected = "Go away, I am busy with other things."
    assert enc(tokenizer, prompt) + enc(tokenizer, chosen) == enc(tokenizer, prompt + chosen)
    max_length, max_prompt_length = 12, 5
    example, reason = PairTokenizer(tokenizer, max_length, max_prompt_length)(
        plain(prompt, chosen, rejected)
    )
    assert reason is None

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


def test_short_prompt_is_not_cut_when_only_the_completion_is_long(tokenizer):
    prompt, chosen = "Question: hi\n", "hello there friend, the weather is nice there."
    example, _ = PairTokenizer(tokenizer, 10, 8)(plain(prompt, chosen, "Go away"))
    prompt_ids = [tokenizer.bos_token_id, *enc(tokenizer, prompt)]
    assert example["chosen_input_ids"][: len(prompt_ids)] == prompt_ids
    assert example["chosen_prompt_length"] == len(prompt_ids)
    assert len(example["chosen_input_ids"]) == 10
    assert example["rejected_input_ids"] == [
        *prompt_ids,
        *enc(tokenizer, "Go away"),
        tokenizer.eos_token_id,
    ]


def test_pairs_without_a_preference_are_dropped_and_counted(tokenizer):
    prompt = "Question: hi\n"
    shared = "hello there friend, the weather is nice"  # > 6 completion tokens
    pairs = [
        plain(prompt, shared + " there.", shared + " today."),  # differ only past max_length
        plain(prompt, "same answer", "same answer"),  # identical from the start
        plain(prompt, "Paris", "London"),  # fits
    ]
    examples, dropped = tokenize_pairs(pairs, PairTokenizer(tokenizer, 12, 6))
    assert len(examples) == 1
    assert dropped == {DROPPED_TOO_LONG: 1, DROPPED_IDENTICAL: 1}
    assert examples[0]["chosen_input_ids"][-2] == enc(tokenizer, "Paris")[-1]


def test_lengths_must_leave_room_for_a_completion(tokenizer):
    with pytest.raises(ValueError, match="max_prompt_length"):
        PairTokenizer(tokenizer, max_length=8, max_prompt_length=8)
