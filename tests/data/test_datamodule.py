"""PreferenceDataModule end to end: files -> batches, stats, logging, pad fallback."""

from __future__ import annotations

import json
import logging
from types import SimpleNamespace

import pytest
import torch

from prefopt.config.schema import DataConfig
from prefopt.data import PreferenceDataModule, collate_pairs

from ..conftest import quiet_trainer

QUESTIONS = ["what is the capital of France?", "how are you?", "hi", "is the weather nice?"]


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return str(path)


def explicit_records(n):
    return [
        {
            "prompt": f"Question: {QUESTIONS[i % 4]}\n",
            "chosen": f"Answer: yes {i}",
            "rejected": "Go away",
        }
        for i in range(n)
    ]


def test_batches_from_a_jsonl_file(tmp_path, tokenizer):
    path = write_jsonl(tmp_path / "prefs.jsonl", explicit_records(20))
    cfg = DataConfig(source="local", path=path, val_fraction=0.2, batch_size=4, eval_batch_size=3)
    dm = PreferenceDataModule(cfg, tokenizer)
    dm.setup("fit")
    assert dm.stats == {
        "train_rows": 16, "train_pairs": 16, "train_dropped_too_long": 0, "train_dropped_identical": 0,
        "train_empty_completions": 0,
        "val_rows": 4, "val_pairs": 4, "val_dropped_too_long": 0, "val_dropped_identical": 0,
        "val_empty_completions": 0,
    }  # fmt: skip

    batches = list(dm.train_dataloader())
    assert len(batches) == 4
    seen = sorted(i for batch in batches for i in batch["example_index"].tolist())
    assert seen == list(range(16))  # every example once per epoch, each row knows its example
    for batch in batches:
        assert set(batch) == {"input_ids", "attention_mask", "completion_mask", "example_index"}
        assert batch["input_ids"].shape[0] == 8
        assert (
            batch["input_ids"].shape
            == batch["attention_mask"].shape
            == batch["completion_mask"].shape
        )
        # Every row scores its completion ("Answer: yes i" or "Go away", then eos) and no padding.
        assert (batch["completion_mask"] <= batch["attention_mask"].bool()).all()
        assert (batch["completion_mask"].sum(1) > 0).all()
        rejected_rows = batch["input_ids"][4:][batch["completion_mask"][4:]].view(4, -1)
        go_away = tokenizer("Go away", add_special_tokens=False)["input_ids"] + [
            tokenizer.eos_token_id
        ]
        assert rejected_rows.tolist() == [go_away] * 4

    val_batches = list(dm.val_dataloader())
    assert [b["input_ids"].shape[0] for b in val_batches] == [6, 2]


def test_shuffling_is_seeded_and_validation_is_not_shuffled(tmp_path, tokenizer):
    path = write_jsonl(tmp_path / "prefs.jsonl", explicit_records(40))

    def first_epoch(seed):
        cfg = DataConfig(source="local", path=path, val_fraction=0.25, batch_size=5, seed=seed)
        dm = PreferenceDataModule(cfg, tokenizer)
        dm.setup("fit")
        return [b["input_ids"].tolist() for b in dm.train_dataloader()], dm

    epoch, dm = first_epoch(0)
    assert epoch == first_epoch(0)[0]
    assert epoch != first_epoch(1)[0]
    # Validation keeps file order: its single batch is the examples collated as they are.
    [val_batch] = list(dm.val_dataloader())
    in_order = collate_pairs(dm.val_examples, dm.pad_token_id)
    assert torch.equal(val_batch["input_ids"], in_order["input_ids"])


def test_setup_is_idempotent(tmp_path, tokenizer):
    path = write_jsonl(tmp_path / "prefs.jsonl", explicit_records(8))
    dm = PreferenceDataModule(DataConfig(source="local", path=path), tokenizer)
    dm.setup("fit")
    examples = dm.train_examples
    dm.setup("validate")
    assert dm.train_examples is examples


def test_dropped_pairs_are_counted_and_logged(tmp_path, tokenizer, caplog):
    """With data.on_invalid=skip; the default (error) stops at the first such pair."""
    long_shared = "hello there friend, the weather is nice there and"
    records = explicit_records(6) + [
        {
            "prompt": "Question: hi\n",
            "chosen": long_shared + " yes",
            "rejected": long_shared + " no",
        },
        {"prompt": "Question: hi\n", "chosen": "same", "rejected": "same"},
    ]
    path = write_jsonl(tmp_path / "prefs.jsonl", records)
    cfg = DataConfig(
        source="local",
        path=path,
        val_path=path,
        max_length=16,
        max_prompt_length=8,
        on_invalid="skip",
    )
    dm = PreferenceDataModule(cfg, tokenizer)
    with caplog.at_level(logging.WARNING, logger="prefopt.data"):
        dm.setup("fit")
    assert dm.stats["train_pairs"] == 6
    # The long pair's two sides differ only past max_length: counted apart from too_long.
    assert dm.stats["train_dropped_truncated_identical"] == 1
    assert dm.stats["train_dropped_too_long"] == 0 and dm.stats["train_dropped_identical"] == 1
    assert dm.stats["val_dropped_truncated_identical"] == 1
    messages = [r.getMessage() for r in caplog.records if r.name == "prefopt.data"]
    assert any(
        "train: dropped 1 of 8 pairs whose chosen and rejected are the same text once truncated "
        "to max_length=16 (ln 2 and no gradient)" in m
        for m in messages
    )
    assert any("identical" in m for m in messages)


def test_missing_pad_token_falls_back_to_eos(tmp_path, caplog, tokenizer_without_pad):
    tokenizer = tokenizer_without_pad
    assert tokenizer.pad_token_id is None
    path = write_jsonl(tmp_path / "prefs.jsonl", explicit_records(4))
    with caplog.at_level(logging.INFO, logger="prefopt.data"):
        dm = PreferenceDataModule(DataConfig(source="local", path=path, batch_size=4), tokenizer)
    assert dm.pad_token_id == tokenizer.eos_token_id == tokenizer.pad_token_id
    assert any("no pad token" in r.getMessage() for r in caplog.records)
    dm.setup("fit")
    assert next(iter(dm.train_dataloader()))["input_ids"].shape[0] == 6  # 3 pairs after hold-out


def test_hh_style_implicit_data(tmp_path, tokenizer):
    records = [
        {
            "chosen": f"\n\nHuman: {q}\n\nAssistant: Hello there",
            "rejected": f"\n\nHuman: {q}\n\nAssistant: Go away",
        }
        for q in QUESTIONS
    ]
    path = write_jsonl(tmp_path / "hh.jsonl", records)
    dm = PreferenceDataModule(DataConfig(source="local", path=path, val_path=path), tokenizer)
    dm.setup("fit")
    example = dm.val_examples[0]  # generation prompts are kept for validation examples only
    assert dm.train_examples[0]["prompt_input_ids"] == []
    prompt_ids = tokenizer(f"\n\nHuman: {QUESTIONS[0]}\n\nAssistant:")["input_ids"]  # with BOS
    assert example["prompt_input_ids"] == prompt_ids
    assert example["chosen_input_ids"][: example["chosen_prompt_length"]] == prompt_ids
    completion = example["chosen_input_ids"][example["chosen_prompt_length"] :]
    assert tokenizer.decode(completion) == " Hello there</s>"


def test_conversational_data_from_a_saved_dataset(tmp_path, tokenizer):
    import datasets

    records = [
        {
            "chosen": [
                {"role": "user", "content": q},
                {"role": "assistant", "content": "Hello there"},
            ],
            "rejected": [
                {"role": "user", "content": q},
                {"role": "assistant", "content": "Go away"},
            ],
        }
        for q in QUESTIONS
    ]
    datasets.Dataset.from_list(records).save_to_disk(tmp_path / "saved")
    cfg = DataConfig(source="hub", path=str(tmp_path / "saved"), val_fraction=0.25, batch_size=2)
    dm = PreferenceDataModule(cfg, tokenizer)
    dm.setup("fit")
    assert (dm.stats["train_pairs"], dm.stats["val_pairs"]) == (3, 1)
    end_of_turn = tokenizer.convert_tokens_to_ids("<|end|>")
    for example in dm.train_examples:
        assert example["chosen_input_ids"][-1] == end_of_turn
        assert example["chosen_input_ids"].count(tokenizer.bos_token_id) == 1
    assert next(iter(dm.train_dataloader()))["input_ids"].shape[0] == 4


def test_toy_world_source(tmp_path, tokenizer):
    world = SimpleNamespace(
        train_path=write_jsonl(tmp_path / "train.jsonl", explicit_records(6)),
        val_path=write_jsonl(tmp_path / "val.jsonl", explicit_records(2)),
    )
    dm = PreferenceDataModule(DataConfig(source="toy", batch_size=3), tokenizer, toy_world=world)
    dm.setup("fit")
    assert (dm.stats["train_pairs"], dm.stats["val_pairs"]) == (6, 2)


def test_no_validation_rows_gives_no_val_loader(tmp_path, tokenizer):
    path = write_jsonl(tmp_path / "prefs.jsonl", explicit_records(4))
    dm = PreferenceDataModule(DataConfig(source="local", path=path, val_fraction=0.0), tokenizer)
    dm.setup("fit")
    assert dm.val_dataloader() == []


def test_dataloaders_before_setup_are_an_error(tokenizer):
    dm = PreferenceDataModule(DataConfig(source="local", path="x.jsonl"), tokenizer)
    with pytest.raises(RuntimeError, match="setup"):
        dm.train_dataloader()


def test_worker_processes_can_collate(tmp_path, tokenizer):
    path = write_jsonl(tmp_path / "prefs.jsonl", explicit_records(8))
    cfg = DataConfig(source="local", path=path, val_fraction=0.0, batch_size=4, num_workers=1)
    dm = PreferenceDataModule(cfg, tokenizer)
    dm.setup("fit")
    assert [b["input_ids"].shape[0] for b in dm.train_dataloader()] == [8, 8]


def test_lightning_fit_consumes_the_batches(tmp_path, tokenizer):
    import lightning as L

    class Counter(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.weight = torch.nn.Parameter(torch.zeros(()))
            self.completion_tokens = 0

        def training_step(self, batch, batch_idx):
            self.completion_tokens += int(batch["completion_mask"].sum())
            return self.weight * batch["input_ids"].float().mean()

        def validation_step(self, batch, batch_idx):
            pass

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    path = write_jsonl(tmp_path / "prefs.jsonl", explicit_records(12))
    dm = PreferenceDataModule(DataConfig(source="local", path=path, batch_size=4), tokenizer)
    model = Counter()
    trainer = quiet_trainer(tmp_path)
    trainer.fit(model, datamodule=dm)
    expected = sum(
        len(e[f"{side}_input_ids"]) - e[f"{side}_prompt_length"]
        for e in dm.train_examples
        for side in ("chosen", "rejected")
    )
    assert model.completion_tokens == expected


@pytest.mark.numerics
def test_paired_batches_can_carry_their_packed_layout(tmp_path, tokenizer):
    """Once the policy is known to take packed pairs, the loader (its workers, when it has
    some) lays each batch out; the training step only builds the mask on its device."""
    import torch

    from prefopt.data.packing import layout_pairs, packed_part, with_mask
    from prefopt.model.logprobs import completion_logps

    from ..conftest import tiny_llama
    from ..numerics import assert_close_f32

    path = write_jsonl(tmp_path / "prefs.jsonl", explicit_records(12))
    cfg = DataConfig(source="local", path=path, val_fraction=0, batch_size=4, num_workers=1)
    dm = PreferenceDataModule(cfg, tokenizer)
    dm.setup("fit")
    dm.pack_batches(shared_prefix=True, padding_free=True)
    batch = next(iter(dm.train_dataloader()))
    standard = {k: batch[k] for k in ("input_ids", "attention_mask", "completion_mask")}
    layout = packed_part(batch)
    expected = layout_pairs(standard, shared_prefix=True, padding_free=True)
    assert set(layout) == set(expected)
    for key, value in expected.items():
        assert torch.equal(layout[key], value), key
    model = tiny_llama(vocab_size=len(tokenizer)).float()
    expected = completion_logps(model, standard, None)
    assert_close_f32(
        completion_logps(model, with_mask(layout), None).summed,
        expected.summed,
        tokens=expected.token_counts,
    )
