"""Real preference data as users bring it: an HH-RLHF-shaped file through the whole run."""

from __future__ import annotations

import json

from mlflow.tracking import MlflowClient

from prefopt.tracking import run_datasets
from prefopt.train import train

from .conftest import tiny_llama
from .data.conftest import build_tokenizer

QUESTIONS = [
    "what is the capital of France?",
    "hi there, how are you?",
    "is the weather nice there?",
    "what is the quick brown fox?",
]


def hh_rows(n: int) -> list[dict]:
    """HH-RLHF's layout: two transcripts sharing every turn but the last assistant reply."""
    rows = []
    for i in range(n):
        prompt = f"\n\nHuman: {QUESTIONS[i % 4]}\n\nAssistant: Paris is the capital.\n\nHuman: hi {i}\n\nAssistant:"
        rows.append(
            {
                "chosen": f"{prompt} Hello there, how can I help?",
                "rejected": f"{prompt} Go away, I am busy.",
            }
        )
    # HH-RLHF holds such rows: saying nothing preferred over a harmful reply.
    rows[5]["chosen"] = rows[5]["chosen"].split(" Hello there")[0]
    rows[9]["chosen"] = rows[9]["chosen"].split(" Hello there")[0] + " "
    return rows


def test_an_hh_shaped_file_with_empty_chosen_replies_trains_with_defaults(compose_config, tmp_path):
    model_dir = tmp_path / "model"
    tokenizer = build_tokenizer()
    tiny_llama(vocab_size=len(tokenizer)).save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    data = tmp_path / "hh.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in hh_rows(40)))

    cfg = compose_config(
        "model=local",
        f"model.path={model_dir}",
        "data=local",
        f"data.path={data}",
        "data.val_fraction=0",
        "data.batch_size=4",
        "trainer.max_steps=5",  # one logging interval (trainer.log_every_n_steps=5)
    )
    result = train(cfg)

    run = MlflowClient(cfg.logger.tracking_uri).get_run(result.run_id)
    assert run.info.status == "FINISHED"
    train_data = run_datasets(run)["train"]  # the run's training dataset, counts in its profile
    assert train_data["profile"]["pairs"] == 40
    assert train_data["profile"]["empty_completions"] == 2
    assert "train/loss" in run.data.metrics
