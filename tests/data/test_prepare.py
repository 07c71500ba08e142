"""Prepared data: the batched, parallel, cached pipeline gives the ids each row gets alone (whose
rules the tokenization and format tests check against hand-worked ids); its cache hits on the
same inputs and misses on any change that could change an id."""

from __future__ import annotations

import json
import logging
import random
import subprocess
import sys
import textwrap
from dataclasses import replace
from pathlib import Path

import datasets
import pytest
from transformers import AutoTokenizer

from prefopt.config.schema import DataConfig
from prefopt.data import PreferenceDataModule
from prefopt.data import prepare as prepare_module
from prefopt.data.examples import ExampleTable
from prefopt.data.sources import load_rows
from prefopt.data.tokenize import PairTokenizer

from .test_datamodule import write_jsonl

WORDS = "hi there the quick brown fox jumps over lazy dog weather is nice how are you".split()


def random_text(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n))


def hh_records(n: int, seed: int = 0, explicit: bool = False) -> list[dict]:
    """HH-RLHF-shaped rows, with the cases peers broke on: empty chosen replies, identical
    sides, a completion glued to the prompt's last word, completions alike for longer than
    max_length, long prompts. `explicit`: with a `prompt` column, else implicit transcripts."""
    rng = random.Random(seed)
    records = []
    for i in range(n):
        prompt = f"\n\nHuman: {random_text(rng, rng.randint(1, 12))}\n\nAssistant:"
        chosen = " " + random_text(rng, rng.randint(1, 10))
        rejected = " " + random_text(rng, rng.randint(1, 10))
        if i % 97 == 0:
            chosen = ""  # an empty reply preferred
        if i % 89 == 0:
            rejected = chosen  # no preference: dropped
        if i % 83 == 0:
            chosen = chosen.lstrip()  # merges with "Assistant:"
        if i % 211 == 0:  # alike for longer than max_length: nothing left to tell them apart
            chosen, rejected = " fox" * 40 + " dog", " fox" * 40 + " cat"
        if i % 223 == 0:
            prompt = prompt * 20  # a long prompt keeps its end
        if explicit:
            records.append({"prompt": prompt, "chosen": chosen, "rejected": rejected})
        else:
            records.append({"chosen": prompt + chosen, "rejected": prompt + rejected})
    return records


def row_by_row(cfg: DataConfig, tokenizer, split: str, paired: bool = True) -> list[dict]:
    """The reference: the same rows prepared one row per batch, in one process, without the
    cache, so that each row meets the rules alone; problems dropped."""
    alone = replace(cfg, num_proc=1, cache=False, on_invalid="skip")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(prepare_module, "MAP_BATCH", 1)
        prepared = prepare_module.prepare_data(alone, tokenizer, paired=paired)
    return without_index(ExampleTable(prepared.train if split == "train" else prepared.val))


def without_index(examples) -> list[dict]:
    return [{k: v for k, v in e.items() if k != "index"} for e in examples]


@pytest.mark.parametrize(
    ("num_proc", "layout"), [(1, "implicit"), (2, "implicit"), (2, "explicit")]
)
def test_batched_parallel_preparation_equals_row_by_row(tmp_path, tokenizer, num_proc, layout):
    path = write_jsonl(tmp_path / "hh.jsonl", hh_records(1500, explicit=layout == "explicit"))
    cfg = DataConfig(
        source="local",
        path=str(path),
        format=layout,
        max_length=48,
        max_prompt_length=24,
        on_invalid="skip",
        num_proc=num_proc,
        cache_dir=str(tmp_path / "cache"),
    )
    dm = PreferenceDataModule(cfg, tokenizer)
    dm.setup()
    for split, examples in (("train", dm.train_examples), ("val", dm.val_examples)):
        assert without_index(examples) == row_by_row(cfg, tokenizer, split), split
    assert dm.stats["train_dropped_identical"] > 0 and dm.stats["train_empty_completions"] > 0
    # Implicit transcripts alike for long put the likeness in the prompt, which keeps its end.
    truncated = dm.stats["train_dropped_too_long"] + dm.stats.get(
        "train_dropped_truncated_identical", 0
    )
    assert (truncated > 0) == (layout == "explicit")


def test_kto_examples_from_pairs_equal_row_by_row(tmp_path, tokenizer):
    path = write_jsonl(tmp_path / "hh.jsonl", hh_records(1100, seed=1))
    cfg = DataConfig(
        source="local",
        path=str(path),
        format="implicit",
        max_length=48,
        max_prompt_length=24,
        on_invalid="skip",
        num_proc=2,
        cache_dir=str(tmp_path / "cache"),
    )
    dm = PreferenceDataModule(cfg, tokenizer, paired=False)
    dm.setup()
    assert without_index(dm.train_examples) == row_by_row(cfg, tokenizer, "train", paired=False)


def test_the_first_bad_row_in_file_order_stops_the_run(tmp_path, tokenizer):
    records = hh_records(1200)
    records = [r for r in records if r["chosen"] != r["rejected"] and len(r["chosen"]) < 400]
    records[700] = {"chosen": 3, "rejected": "x"}  # in the second worker's half
    records[900] = {"chosen": "a b", "rejected": "a b"}
    path = write_jsonl(tmp_path / "hh.jsonl", records)
    cfg = DataConfig(source="local", path=str(path), format="implicit", val_fraction=0, num_proc=2)
    with pytest.raises(ValueError, match=r"hh.jsonl line 701: field 'chosen' is a int"):
        PreferenceDataModule(cfg, tokenizer).setup()


def test_an_invalid_json_line_is_named_even_in_a_worker(tmp_path, tokenizer):
    path = Path(write_jsonl(tmp_path / "hh.jsonl", hh_records(1200)))
    lines = path.read_text().splitlines()
    lines[1100] = "{not json"
    path.write_text("\n".join(lines) + "\n")
    cfg = DataConfig(source="local", path=str(path), on_invalid="skip", num_proc=2)
    with pytest.raises(ValueError, match=r"hh.jsonl line 1101: invalid JSON"):
        PreferenceDataModule(cfg, tokenizer).setup()


# ---------------------------------------------------------------------------------------------
# The cache


def prepare(cfg, tokenizer):
    dm = PreferenceDataModule(cfg, tokenizer)
    dm.setup()
    return dm


def test_a_cache_hit_reads_no_rows_and_gives_the_same_examples(tmp_path, tokenizer, monkeypatch):
    path = write_jsonl(tmp_path / "hh.jsonl", hh_records(300))
    cfg = DataConfig(
        source="local", path=str(path), on_invalid="skip", cache_dir=str(tmp_path / "c")
    )
    first = prepare(cfg, tokenizer)

    def no_reading(*args, **kwargs):
        raise AssertionError("a cache hit must not read the rows")

    monkeypatch.setattr(prepare_module, "load_rows", no_reading)
    second = prepare(cfg, tokenizer)
    assert second.fingerprint == first.fingerprint
    assert list(second.train_examples) == list(first.train_examples)
    assert list(second.val_examples) == list(first.val_examples)
    assert second.stats == first.stats


def test_the_cache_misses_on_a_changed_row_tokenizer_file_or_max_length(tmp_path, tokenizer):
    path = Path(write_jsonl(tmp_path / "hh.jsonl", hh_records(50)))
    tokenizer.save_pretrained(tmp_path / "tok")
    cfg = DataConfig(
        source="local", path=str(path), on_invalid="skip", cache_dir=str(tmp_path / "c")
    )
    key = prepare(cfg, AutoTokenizer.from_pretrained(tmp_path / "tok")).fingerprint

    longer = DataConfig(**{**cfg.__dict__, "max_length": cfg.max_length + 1})
    assert prepare(longer, tokenizer).fingerprint != key

    records = hh_records(50)
    records[10]["chosen"] += " fox"
    write_jsonl(path, records)
    changed_row = prepare(cfg, tokenizer)
    assert changed_row.fingerprint != key
    write_jsonl(path, hh_records(50))  # back as it was: the first entry again

    definition = json.loads((tmp_path / "tok" / "tokenizer.json").read_text())
    definition["normalizer"] = {"type": "Lowercase"}
    (tmp_path / "tok" / "tokenizer.json").write_text(json.dumps(definition))
    lowercased = AutoTokenizer.from_pretrained(tmp_path / "tok")
    assert prepare(cfg, lowercased).fingerprint != key
    assert prepare(cfg, AutoTokenizer.from_pretrained(tmp_path / "tok")).fingerprint != key

    assert sorted(
        p.name for p in (tmp_path / "c").iterdir() if not p.name.endswith(".lock")
    ) == sorted(
        {
            key,
            prepare(longer, tokenizer).fingerprint,
            changed_row.fingerprint,
            prepare(cfg, lowercased).fingerprint,
        }
    )


def test_two_processes_at_once_prepare_once(tmp_path, tokenizer):
    path = write_jsonl(tmp_path / "hh.jsonl", hh_records(2000))
    tokenizer.save_pretrained(tmp_path / "tok")
    script = textwrap.dedent(
        f"""
        import logging, sys
        logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="%(message)s")
        from transformers import AutoTokenizer
        from prefopt.config.schema import DataConfig
        from prefopt.data import PreferenceDataModule
        cfg = DataConfig(source="local", path={str(path)!r}, on_invalid="skip",
                         cache_dir={str(tmp_path / "c")!r}, num_proc=1)
        dm = PreferenceDataModule(cfg, AutoTokenizer.from_pretrained({str(tmp_path / "tok")!r}))
        dm.setup()
        print("pairs", len(dm.train_examples))
        """
    )
    procs = [
        subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    outputs = [proc.communicate(timeout=300)[0] for proc in procs]
    assert [proc.returncode for proc in procs] == [0, 0]
    prepared = [out for out in outputs if "prepared data cached in" in out]
    read = [out for out in outputs if "prepared data from the cache" in out]
    assert (len(prepared), len(read)) == (1, 1), outputs
    assert (
        len({line for out in outputs for line in out.splitlines() if line.startswith("pairs")}) == 1
    )


def test_without_the_cache_nothing_is_kept(tmp_path, tokenizer, caplog):
    path = write_jsonl(tmp_path / "hh.jsonl", hh_records(40))
    cfg = DataConfig(
        source="local",
        path=str(path),
        on_invalid="skip",
        cache=False,
        cache_dir=str(tmp_path / "c"),
    )
    with caplog.at_level(logging.INFO, logger="prefopt.data"):
        assert len(prepare(cfg, tokenizer).train_examples) > 0
    assert not (tmp_path / "c").exists()


def test_a_saved_dataset_is_prepared_from_its_arrow_files(tmp_path, tokenizer):
    records = hh_records(60)
    datasets.Dataset.from_list(records).save_to_disk(tmp_path / "saved")
    cfg = DataConfig(
        source="hub",
        path=str(tmp_path / "saved"),
        format="implicit",
        on_invalid="skip",
        val_fraction=0,
    )
    dm = prepare(cfg, tokenizer)
    # The same rows read from a jsonl file instead: the same ids.
    as_file = replace(cfg, source="local", path=write_jsonl(tmp_path / "saved.jsonl", records))
    assert without_index(dm.train_examples) == row_by_row(as_file, tokenizer, "train")


@pytest.mark.parametrize(
    ("prompt", "completion"),
    [
        ("Q: café", " au lait"),
        ("Q: caf", "é au lait"),  # a character split into byte tokens at the boundary
        ("Q: 🙂", "🙂 x"),
        ("Q: hi  ", " there"),  # whitespace runs
        ("Q:\n\n", "\n\nA: yes"),
        ("Q: hi", ""),  # nothing after the prompt
    ],
)
def test_the_batched_boundary_is_the_first_token_ending_past_the_prompt(
    tokenizer, prompt, completion
):
    """The fast path reads a few token spans (`char_to_token`, bisection); the rule is the
    linear scan over every offset of the tokenizer's own `__call__`."""
    pair_tokenizer = PairTokenizer(tokenizer, max_length=64, max_prompt_length=32)
    [(ids, boundary)] = pair_tokenizer._encode_many([prompt + completion], [len(prompt)])
    plain = tokenizer(prompt + completion, add_special_tokens=False, return_offsets_mapping=True)
    ends = [end for _, end in plain["offset_mapping"]]
    assert ids == plain["input_ids"]
    assert boundary == next((i for i, end in enumerate(ends) if end > len(prompt)), len(ids))


def test_rows_and_prepared_examples_stay_in_arrow_files_on_disk(tmp_path, tokenizer):
    """Nothing holds a split in memory: rows and tokenized examples are memory-mapped files."""
    path = write_jsonl(tmp_path / "hh.jsonl", hh_records(100))
    cfg = DataConfig(
        source="local", path=str(path), on_invalid="skip", cache_dir=str(tmp_path / "c")
    )
    train_rows, _ = load_rows(cfg)
    assert train_rows.table.cache_files and isinstance(train_rows.rows[0], dict)
    dm = prepare(cfg, tokenizer)
    for examples in (dm.train_examples, dm.val_examples):
        files = [f["filename"] for f in examples.dataset.cache_files]
        assert files and all(f.startswith(str(tmp_path / "c")) for f in files)


def test_the_dataset_fingerprint_is_read_where_datasets_keeps_it(tmp_path):
    """`datasets` has no public accessor for a dataset's fingerprint; `dataset_fingerprint`
    reads the private one. Should `datasets` rename it, this fails loudly (and so does the
    function, rather than keying the cache on nothing)."""
    from prefopt.data.cache import dataset_fingerprint
    from prefopt.errors import PrefoptError

    first = datasets.Dataset.from_list([{"a": 1}, {"a": 2}])
    second = first.map(lambda row: {"a": row["a"] + 1})
    assert isinstance(dataset_fingerprint(first), str) and dataset_fingerprint(first)
    assert dataset_fingerprint(first) != dataset_fingerprint(second)

    class Renamed:
        pass

    with pytest.raises(PrefoptError, match="dataset_fingerprint must be updated"):
        dataset_fingerprint(Renamed())
