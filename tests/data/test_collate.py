"""One batch for one concatenated forward: chosen rows first, right padding, exact masks."""

from __future__ import annotations

import torch

from prefopt.data.collate import collate_pairs

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
