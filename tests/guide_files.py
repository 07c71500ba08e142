"""The files the guides' commands name, written small and local in the shape of the real ones.

`docs/guides/` shows commands on `pairs.jsonl`, `./my-model`, UltraFeedback, HH-RLHF, ...;
`write_guide_files(folder)` puts a stand-in for each into `folder` (the test's working
directory), so the commands can be checked and run as written: a tiny checkpoint with a chat
template, JSONL and CSV files, and `save_to_disk` dataset folders with the hub datasets' splits
and columns. `HUB_STAND_INS` maps each hub name of the guides to its local stand-in.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

from .conftest import tiny_llama_config
from .data.conftest import build_tokenizer

HUB_STAND_INS = {
    "HuggingFaceH4/ultrafeedback_binarized": "ultrafeedback",
    "Anthropic/hh-rlhf": "hh-rlhf",
    "lvwerra/stack-exchange-paired": "stack-exchange",
}
"""Hub dataset -> the local folder of the same splits and columns (`write_guide_files`)."""

HUB_MODELS = ("qwen2.5-0.5b", "llama3-8b")
"""`model=` presets of hub checkpoints; a command run here uses `./my-model` instead."""

QUESTIONS = [
    ("hi there, how are you?", "hello there friend, the weather is nice.", "go away."),
    ("what is the capital of France?", "Paris is the capital.", "I am busy with other things."),
    ("the quick brown fox", " jumps over the lazy dog.", " is there."),
    ("how can I help?", "Hello there, how can I help?", "what is it."),
]


def write_guide_files(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    tiny_checkpoint(folder / "my-model")
    rows = [
        {"prompt": q, "chosen": " " + good, "rejected": " " + bad} for q, good, bad in QUESTIONS
    ]
    _jsonl(folder / "pairs.jsonl", rows * 5)
    _jsonl(folder / "val.jsonl", rows)
    _jsonl(
        folder / "kto.jsonl",
        [
            {"prompt": r["prompt"], "completion": r[side], "label": side == "chosen"}
            for r in rows * 3
            for side in ("chosen", "rejected")
        ],
    )
    with open(folder / "feedback.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["question", "answer", "thumbs_up"])
        for q, good, bad in QUESTIONS * 3:
            writer.writerows([[q, " " + good, "true"], [q, " " + bad, "false"]])
    _hub_datasets(folder)


def tiny_checkpoint(path: Path) -> None:
    """A one-layer Llama with the byte-level BPE tokenizer (and its chat template) of the data
    tests: what `model.path=./my-model` names."""
    from transformers import LlamaForCausalLM

    tokenizer = build_tokenizer()
    config = tiny_llama_config(
        vocab_size=len(tokenizer),
        max_position_embeddings=1024,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    LlamaForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)


def _jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")


def _hub_datasets(folder: Path) -> None:
    """`save_to_disk` folders with the splits and columns of the hub datasets the guides name."""
    from datasets import Dataset, DatasetDict

    def turns(question, answer):
        return [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]

    ultrafeedback = [
        {
            "prompt": q,
            "prompt_id": str(i),
            "chosen": turns(q, good),
            "rejected": turns(q, bad),
            "score_chosen": 8.0,
            "score_rejected": 3.0,
        }
        for i, (q, good, bad) in enumerate(QUESTIONS * 5)
    ]
    hh = [
        {
            "chosen": f"\n\nHuman: {q}\n\nAssistant: {good}",
            "rejected": f"\n\nHuman: {q}\n\nAssistant: {bad}",
        }
        for q, good, bad in QUESTIONS * 5
    ]
    stack = [
        {"qid": i, "question": q, "response_j": good, "response_k": bad}
        for i, (q, good, bad) in enumerate(QUESTIONS * 5)
    ]
    splits = {
        "ultrafeedback": (ultrafeedback, ("train_prefs", "test_prefs")),
        "hh-rlhf": (hh, ("train", "test")),
        "stack-exchange": (stack, ("train", "test")),
    }
    for name, (rows, (train, test)) in splits.items():
        DatasetDict(
            {train: Dataset.from_list(rows), test: Dataset.from_list(rows[:4])}
        ).save_to_disk(str(folder / name))
