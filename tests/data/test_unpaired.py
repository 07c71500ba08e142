"""Unpaired (KTO) data: labels, paired -> unpaired conversion, mismatched rows, errors."""

from __future__ import annotations

import json
import random

import pytest
import torch

from prefopt.config.schema import DataConfig
from prefopt.data import PreferenceDataModule
from prefopt.data.unpaired import collate_unpaired

from .conftest import prepare_rows


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return str(path)


def test_example_tokenized_together_with_bos_and_eos_once(tmp_path, tokenizer):
    record = {"prompt": "Question: hi ", "completion": "there friend", "label": True}
    [out], report = prepare_rows(tmp_path, tokenizer, [record], paired=False)
    assert report.desirable == 1
    full = tokenizer("Question: hi there friend", add_special_tokens=False)["input_ids"]
    assert out["input_ids"] == [tokenizer.bos_token_id, *full, tokenizer.eos_token_id]
    assert out["input_ids"].count(tokenizer.bos_token_id) == 1
    assert out["input_ids"].count(tokenizer.eos_token_id) == 1
    # the boundary lies where the decoded prefix first reaches past the prompt text
    completion = tokenizer.decode(out["input_ids"][out["prompt_length"] : -1])
    assert "there friend" in completion and "Question" not in completion
    assert out["desirable"] is True


def test_paired_rows_give_both_labels_mixed_in_seeded_order(tmp_path, tokenizer):
    """Each pair gives its chosen completion as desirable and its rejected one as undesirable:
    all chosen ones (in file order), then all rejected ones, shuffled with data.seed."""
    records = [
        {"prompt": f"p{i}:", "chosen": f" good{i}", "rejected": f" bad{i}"} for i in range(200)
    ]

    def completions(seed: int) -> list[tuple[str, bool]]:
        examples, _ = prepare_rows(tmp_path, tokenizer, records, paired=False, seed=seed)
        return [
            (tokenizer.decode(e["input_ids"][e["prompt_length"] : -1]), e["desirable"])
            for e in examples
        ]

    examples = completions(seed=0)
    expected = [(f" good{i}", True) for i in range(200)] + [(f" bad{i}", False) for i in range(200)]
    random.Random(0).shuffle(expected)
    assert examples == expected
    assert sum(desirable for _, desirable in examples) == 200
    # Batches of 8 drawn in order: not one of them may hold a single label.
    labels = [desirable for _, desirable in examples]
    batches = [labels[i : i + 8] for i in range(0, 400, 8)]
    one_class = sum(len(set(b)) == 1 for b in batches)
    assert one_class <= 2  # chance of an 8-long single-label run is 2·2^-8 per batch
    assert completions(seed=1) != examples


def test_collate_builds_mismatched_rows_from_the_batch_own_completions():
    examples = [
        {
            "input_ids": [1, 5, 6, 7, 2],
            "prompt_length": 3,
            "prompt_input_ids": [1, 5, 6],
            "desirable": True,
        },
        {
            "input_ids": [1, 8, 9, 2],
            "prompt_length": 2,
            "prompt_input_ids": [1, 8],
            "desirable": False,
        },
        {
            "input_ids": [1, 10, 11, 12, 2],
            "prompt_length": 2,
            "prompt_input_ids": [1, 10],
            "desirable": True,
        },
    ]
    batch = collate_unpaired(examples, pad_token_id=0)
    assert batch["input_ids"].shape == (6, 5)
    assert batch["desirable"].tolist() == [True, False, True]
    # row 3: prompt of example 0 + completion of example 1; row 5 wraps to example 0's completion
    assert batch["input_ids"][3].tolist() == [1, 5, 6, 9, 2]
    assert batch["input_ids"][4].tolist() == [1, 8, 11, 12, 2]
    assert batch["input_ids"][5].tolist() == [1, 10, 7, 2, 0]
    assert batch["completion_mask"][3].tolist() == [False, False, False, True, True]
    assert batch["completion_mask"][5].tolist() == [False, False, True, True, False]
    assert batch["attention_mask"][5].tolist() == [1, 1, 1, 1, 0]


def test_datamodule_reads_unpaired_rows_with_boolean_labels(tmp_path, tokenizer):
    records = [
        {"prompt": f"Q{i}: ", "completion": f"answer {i}", "label": i % 3 != 0} for i in range(12)
    ]
    cfg = DataConfig(
        source="local",
        path=write_jsonl(tmp_path / "kto.jsonl", records),
        val_fraction=0.25,
        batch_size=4,
    )
    dm = PreferenceDataModule(cfg, tokenizer, paired=False)
    dm.setup()
    assert dm.stats["train_examples"] + dm.stats["val_examples"] == 12
    assert dm.stats["train_desirable"] + dm.stats["val_desirable"] == 8
    batch = next(iter(dm.train_dataloader()))
    assert batch["input_ids"].shape[0] == 8 and batch["desirable"].shape == (4,)


def test_datamodule_splits_paired_rows_for_kto(tmp_path, tokenizer):
    records = [
        {"prompt": f"Q{i}: ", "chosen": f"good {i}", "rejected": f"bad {i}"} for i in range(10)
    ]
    cfg = DataConfig(
        source="local", path=write_jsonl(tmp_path / "pairs.jsonl", records), val_fraction=0.2
    )
    dm = PreferenceDataModule(cfg, tokenizer, paired=False)
    dm.setup()
    assert dm.stats["train_examples"] == 16
    assert dm.stats["train_desirable"] == dm.stats["train_undesirable"] == 8


def test_paired_loss_with_unpaired_data_fails_clearly(tmp_path, tokenizer):
    records = [{"prompt": "Q: ", "completion": "a", "label": True}] * 4
    cfg = DataConfig(source="local", path=write_jsonl(tmp_path / "kto.jsonl", records))
    with pytest.raises(ValueError, match=r"kto\.jsonl: holds unpaired .* use loss=kto"):
        PreferenceDataModule(cfg, tokenizer, paired=True).setup()


@pytest.mark.parametrize("label", ["maybe", 2, None])
def test_labels_must_be_booleans(tmp_path, tokenizer, label):
    records = [
        {"prompt": "Q: ", "completion": "a", "label": True},
        {"prompt": "Q: ", "completion": "b", "label": label},
    ]
    cfg = DataConfig(
        source="local", path=write_jsonl(tmp_path / "kto.jsonl", records), val_fraction=0.0
    )
    with pytest.raises(ValueError, match=r"kto\.jsonl line 2: field 'label' .* must be a boolean"):
        PreferenceDataModule(cfg, tokenizer, paired=False).setup()


def test_csv_labels_as_text(tmp_path, tokenizer):
    path = tmp_path / "kto.csv"
    path.write_text("prompt,completion,label\nQ: ,yes,true\nQ: ,no,False\n")
    cfg = DataConfig(source="local", path=str(path), val_fraction=0.0)
    dm = PreferenceDataModule(cfg, tokenizer, paired=False)
    dm.setup()
    assert [e["desirable"] for e in dm.train_examples] == [True, False]
    assert torch.is_tensor(next(iter(dm.train_dataloader()))["desirable"])


def test_toy_pairs_as_unpaired_rows(tmp_path, tokenizer):
    """Each toy review becomes one example labelled by the sign of its reward; reward 0 is dropped."""
    from types import SimpleNamespace

    pairs = [
        {
            "prompt": "p0 :",
            "chosen": " good",
            "rejected": " bad",
            "chosen_reward": 1,
            "rejected_reward": -1,
        },
        {
            "prompt": "p1 :",
            "chosen": " fine",
            "rejected": " meh",
            "chosen_reward": 2,
            "rejected_reward": 0,
        },
    ]
    world = SimpleNamespace(
        train_path=write_jsonl(tmp_path / "train.jsonl", pairs),
        val_path=write_jsonl(tmp_path / "val.jsonl", pairs[:1]),
    )
    dm = PreferenceDataModule(
        DataConfig(source="toy", format="unpaired"), tokenizer, toy_world=world, paired=False
    )
    dm.setup()
    assert dm.stats["train_examples"] == 3
    assert dm.stats["train_desirable"] == 2 and dm.stats["train_undesirable"] == 1
    assert dm.stats["val_examples"] == 2


def test_kto_batches_are_fixed_but_their_order_reshuffles(tmp_path, tokenizer):
    """Fixed batch composition keeps mismatched rows cacheable; the order still changes."""
    records = [
        {"prompt": f"Q{i}: ", "completion": f"answer {i}", "label": i % 2 == 0} for i in range(24)
    ]
    cfg = DataConfig(
        source="local",
        path=write_jsonl(tmp_path / "kto.jsonl", records),
        val_fraction=0.0,
        batch_size=4,
    )
    dm = PreferenceDataModule(cfg, tokenizer, paired=False)
    dm.setup()
    loader = dm.train_dataloader()
    epoch1 = [tuple(b["example_index"].tolist()) for b in loader]
    epoch2 = [tuple(b["example_index"].tolist()) for b in loader]
    assert sorted(epoch1) == sorted(epoch2)
    assert epoch1 != epoch2
    assert sorted(i for b in epoch1 for i in b) == list(range(24))
    reference_batches = [
        tuple(b["example_index"].tolist()) for b in dm.reference_loaders()["train"]
    ]
    assert sorted(reference_batches) == sorted(epoch1)
