"""One batch for one concatenated forward: chosen rows first, right padding, exact masks."""

from __future__ import annotations

import torch
from datasets import Dataset

from prefopt.data.collate import collate_pairs, longest_first_batches
from prefopt.data.examples import ExampleTable

PAD = 0


def test_shapes_order_padding_and_masks():
    examples = [
        # ids as [prompt | completion]: prompt lengths 2 and 1
        {"chosen_input_ids": [5, 6, 7], "chosen_prompt_length": 2,
         "rejected_input_ids": [5, 6, 8, 9, 10], "rejected_prompt_length": 2, "prompt_input_ids": [5, 6]},
        {"chosen_input_ids": [3, 4], "chosen_prompt_length": 1,
         "rejected_input_ids": [3, 11, 12], "rejected_prompt_length": 1, "prompt_input_ids": [3]},
    ]  # fmt: skip
    batch = collate_pairs(examples, pad_token_id=PAD)

    assert batch["input_ids"].dtype == torch.long
    assert batch["attention_mask"].dtype == torch.long
    assert batch["completion_mask"].dtype == torch.bool
    expected_ids = [
        [5, 6, 7, PAD, PAD],  # chosen 0
        [3, 4, PAD, PAD, PAD],  # chosen 1
        [5, 6, 8, 9, 10],  # rejected 0
        [3, 11, 12, PAD, PAD],  # rejected 1
    ]
    expected_attention = [[1, 1, 1, 0, 0], [1, 1, 0, 0, 0], [1, 1, 1, 1, 1], [1, 1, 1, 0, 0]]
    expected_completion = [
        [False, False, True, False, False],
        [False, True, False, False, False],
        [False, False, True, True, True],
        [False, True, True, False, False],
    ]
    assert batch["input_ids"].tolist() == expected_ids
    assert batch["attention_mask"].tolist() == expected_attention
    assert batch["completion_mask"].tolist() == expected_completion


def test_pad_id_that_is_also_a_real_token_is_still_masked():
    # eos used as pad: the real trailing eos is attended and scored, the padding is not.
    eos = 2
    examples = [
        {"chosen_input_ids": [1, 9, eos], "chosen_prompt_length": 1,
         "rejected_input_ids": [1, 8, 7, eos], "rejected_prompt_length": 1, "prompt_input_ids": [1]},
    ]  # fmt: skip
    batch = collate_pairs(examples, pad_token_id=eos)
    assert batch["input_ids"].tolist() == [[1, 9, eos, eos], [1, 8, 7, eos]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 0], [1, 1, 1, 1]]
    assert batch["completion_mask"].tolist() == [
        [False, True, True, False],
        [False, True, True, True],
    ]


def _pair(length: int, rejected_extra: int = 0) -> dict:
    return {
        "chosen_input_ids": [5] * length,
        "chosen_prompt_length": 1,
        "rejected_input_ids": [6] * (length + rejected_extra),
        "rejected_prompt_length": 1,
    }


def test_longest_first_batches_score_every_pair_once_with_less_padding():
    examples = [_pair(n) for n in (3, 40, 5, 38, 4, 39, 6, 37)]

    batches = longest_first_batches(ExampleTable(Dataset.from_list(examples)).lengths(), 4)

    assert batches == [[1, 5, 3, 7], [6, 2, 4, 0]]  # every pair once, longest first

    def padded_tokens(batches):
        return sum(
            collate_pairs([examples[i] for i in batch], PAD)["input_ids"].numel()
            for batch in batches
        )

    assert padded_tokens(batches) == 8 * 40 + 8 * 6  # 368 token slots
    assert padded_tokens([[0, 1, 2, 3], [4, 5, 6, 7]]) == 8 * 40 + 8 * 39  # 632 in dataset order


def test_a_pair_is_as_long_as_its_longer_side():
    examples = [_pair(10), _pair(5, rejected_extra=20), _pair(12)]
    table = ExampleTable(Dataset.from_list(examples))
    assert table.lengths().tolist() == [10, 25, 12]
    assert longest_first_batches(table.lengths(), batch_size=2) == [[1, 2], [0]]
    assert table[1]["index"] == 1 and table[1]["rejected_input_ids"] == [6] * 25
    kept = ExampleTable(Dataset.from_list(examples).select([2, 1]))  # as prepared data keeps rows
    assert kept.lengths().tolist() == [12, 25] and kept[0]["chosen_input_ids"] == [5] * 12
