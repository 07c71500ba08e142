"""What a run trained on, as MLflow dataset inputs: a real data module on a local file, logged
to a real SQLite store and read back through MLflow's public API (`mlflow.data.get_source`
resolves the stored source, so a renamed source type fails here)."""

from __future__ import annotations

import json
import logging
from dataclasses import replace

import mlflow.data
import pytest
from lightning.pytorch.loggers import CSVLogger
from mlflow.data.huggingface_dataset_source import HuggingFaceDatasetSource
from mlflow.data.sources import LocalArtifactDatasetSource
from mlflow.tracking import MlflowClient

from prefopt.config.schema import DataConfig, LoggerConfig
from prefopt.data import PreferenceDataModule
from prefopt.data.summary import DataOrigin, SplitSummary, split_origins
from prefopt.tracking import log_datasets, run_datasets, start_run

from ..data.conftest import build_tokenizer

QUESTIONS = ["what is the capital of France?", "how are you?", "hi", "is the weather nice?"]


@pytest.fixture(scope="module")
def datamodule(tmp_path_factory) -> PreferenceDataModule:
    """20 pairs in a jsonl file, a quarter held out for validation."""
    folder = tmp_path_factory.mktemp("data")
    rows = [
        {
            "prompt": f"Question: {QUESTIONS[i % 4]}\n",
            "chosen": f"Answer: yes {i}",
            "rejected": "Go",
        }
        for i in range(20)
    ]
    path = folder / "prefs.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    cfg = DataConfig(source="local", path=str(path), val_fraction=0.25, cache_dir=str(folder))
    dm = PreferenceDataModule(cfg, build_tokenizer())
    dm.setup("fit")
    return dm


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> str:
    """One SQLite store for the module (creating one takes seconds); a run per test."""
    return f"sqlite:///{tmp_path_factory.mktemp('store') / 'mlflow.db'}"


@pytest.fixture
def logger(store):
    return start_run(LoggerConfig(tracking_uri=store), "run")


def logged(logger):
    run = MlflowClient(logger.tracking_uri).get_run(logger.run_id)
    return run, run_datasets(run)


def mean_tokens_by_hand(examples) -> dict[str, float]:
    prompt = [e["chosen_prompt_length"] for e in examples]
    chosen = [len(e["chosen_input_ids"]) - e["chosen_prompt_length"] for e in examples]
    rejected = [len(e["rejected_input_ids"]) - e["rejected_prompt_length"] for e in examples]
    n = len(examples)
    return {"prompt": sum(prompt) / n, "chosen": sum(chosen) / n, "rejected": sum(rejected) / n}


def test_a_run_records_its_train_and_validation_data(datamodule, logger):
    log_datasets(logger, datamodule.summaries())
    run, datasets = logged(logger)
    path = datamodule.cfg.path

    assert set(datasets) == {"train", "validation"}
    train, val = datasets["train"], datasets["validation"]
    assert train["name"] == "prefs.jsonl [train]" and val["name"] == "prefs.jsonl [validation]"
    assert train["digest"] == val["digest"] == datamodule.fingerprint
    assert train["source_type"] == "local" and train["source"] == {"uri": path}
    assert train["profile"]["rows"] == train["profile"]["pairs"] == 15
    assert val["profile"]["rows"] == val["profile"]["pairs"] == 5
    assert (
        val["profile"]["held_out_fraction"] == 0.25 and "held_out_fraction" not in train["profile"]
    )
    assert train["profile"]["dropped_too_long"] == 0 and train["profile"]["layout"] == "explicit"
    for context, examples in (
        ("train", datamodule.train_examples),
        ("validation", datamodule.val_examples),
    ):
        by_hand = mean_tokens_by_hand(list(examples))
        profile = datasets[context]["profile"]
        for name, mean in by_hand.items():
            assert profile[f"mean_{name}_tokens"] == pytest.approx(mean, abs=0.01), (context, name)
        assert by_hand["chosen"] > by_hand["rejected"] > 0  # "Answer: yes i" vs "Go"

    sources = [mlflow.data.get_source(d) for d in run.inputs.dataset_inputs]
    assert all(isinstance(s, LocalArtifactDatasetSource) for s in sources)
    assert {s.uri for s in sources} == {path}


def test_a_resumed_run_logs_no_second_input(datamodule, logger, caplog):
    summaries = datamodule.summaries()
    log_datasets(logger, summaries)
    log_datasets(logger, summaries)  # the same data again, as a resumed run logs it
    other = [replace(s, key="0" * 32) for s in summaries]
    with caplog.at_level(logging.WARNING, logger="prefopt.tracking"):
        log_datasets(logger, other)  # resumed on changed data: the first stays, a warning says so
    run, datasets = logged(logger)
    assert len(run.inputs.dataset_inputs) == 2
    assert datasets["train"]["digest"] == datamodule.fingerprint
    warnings = [r.getMessage() for r in caplog.records if "resumed on other" in r.getMessage()]
    assert len(warnings) == 2 and "0" * 32 in warnings[0]


def test_a_hub_dataset_is_a_hugging_face_source(logger):
    origin = DataOrigin("hub", "HuggingFaceH4/ultrafeedback_binarized", "train_prefs")
    summary = SplitSummary("train", origin, "ab" * 16, "conversational", {"rows": 3, "pairs": 3})
    log_datasets(logger, [summary])
    run, datasets = logged(logger)
    assert datasets["train"]["name"] == "HuggingFaceH4/ultrafeedback_binarized [train]"
    assert datasets["train"]["profile"]["dataset_split"] == "train_prefs"
    [source] = [mlflow.data.get_source(d) for d in run.inputs.dataset_inputs]
    assert isinstance(source, HuggingFaceDatasetSource)
    assert (source.path, source.split) == ("HuggingFaceH4/ultrafeedback_binarized", "train_prefs")


def test_another_logger_records_nothing(datamodule, tmp_path):
    log_datasets(CSVLogger(tmp_path), datamodule.summaries())
    log_datasets(None, datamodule.summaries())
    assert not (tmp_path / "lightning_logs").exists()


def test_the_origins_follow_where_the_rows_are_read(tmp_path):
    file = tmp_path / "val.jsonl"
    file.write_text("")
    hub = "org/prefs"
    cases = [
        (
            DataConfig(source="hub", path=hub, split="train_prefs", val_split="test_prefs"),
            DataOrigin("hub", hub, "train_prefs"),
            DataOrigin("hub", hub, "test_prefs"),
        ),
        (
            DataConfig(source="hub", path=hub, split="train", val_path=str(file)),
            DataOrigin("hub", hub, "train"),
            DataOrigin("file", str(file)),
        ),
        (
            DataConfig(source="hub", path=hub, split="train", val_fraction=0.1),
            DataOrigin("hub", hub, "train"),
            DataOrigin("hub", hub, "train", held_out=0.1),
        ),
        (
            DataConfig(source="local", path=str(tmp_path), split="train", val_split="test"),
            DataOrigin("file", str(tmp_path), "train"),
            DataOrigin("file", str(tmp_path), "test"),
        ),
    ]
    for cfg, train, val in cases:
        assert split_origins(cfg, None) == {"train": train, "val": val}, cfg
