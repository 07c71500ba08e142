"""A chat model end to end: an Instruct-style checkpoint (a chat template, a generation config
with a repetition penalty) trained online on multi-turn conversations, ranked and evaluated by
a reward model with a chat template of another family. The judge reads every conversation
whole, as the data wrote it."""

import json
import math

import pytest
from mlflow.tracking import MlflowClient

from prefopt.judges.reward_model import RewardModelJudge
from prefopt.train import train

from ..conftest import tiny_llama
from ..data.conftest import build_tokenizer
from ..judges.test_judges import save_reward_model
from ..judges.test_original_prompts import CHATML, LLAMA3

TOPICS = ["the weather", "the capital of France", "the quick brown fox", "the lazy dog"]


def conversation(i: int) -> dict:
    topic = TOPICS[i % len(TOPICS)]
    return {
        "prompt": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": f"hi there {i}"},
            {"role": "assistant", "content": "hello there friend"},
            {"role": "user", "content": f"what about {topic}?"},
        ],
        "chosen": [{"role": "assistant", "content": f"{topic} is nice there"}],
        "rejected": [{"role": "assistant", "content": "go away"}],
    }


@pytest.fixture
def chat_world(tmp_path):
    tokenizer = build_tokenizer()
    tokenizer.chat_template = CHATML
    policy = tiny_llama(seed=2, vocab_size=len(tokenizer))
    policy.generation_config.update(
        do_sample=True, repetition_penalty=1.5, no_repeat_ngram_size=2, top_k=4
    )
    policy.save_pretrained(tmp_path / "policy")
    tokenizer.save_pretrained(tmp_path / "policy")
    rows = [conversation(i) for i in range(24)]
    data = tmp_path / "chat.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    judge_path = save_reward_model(tmp_path / "rm")
    (judge_path / "chat_template.jinja").write_text(LLAMA3)  # the judge's own template
    return tmp_path, rows


def test_online_dpo_on_a_chat_model_judged_by_a_reward_model_of_another_family(
    compose_config, chat_world, monkeypatch
):
    folder, rows = chat_world
    seen = []
    render = RewardModelJudge.render
    monkeypatch.setattr(
        RewardModelJudge,
        "render",
        lambda self, p, c: seen.append((self.tokenizer.chat_template, p)) or render(self, p, c),
    )
    cfg = compose_config(
        "model=local", f"model.path={folder / 'policy'}",
        "data=local", f"data.path={folder / 'chat.jsonl'}", "data.val_fraction=0.25",
        "data.max_length=96", "data.max_prompt_length=64", "data.batch_size=2",
        "judge=reward_model", f"judge.path={folder / 'rm'}",
        "loop=online", "loop.prompts_per_round=4", "loop.samples_per_prompt=2",
        "loop.max_new_tokens=4", "loop.steps_per_round=1", "loop.generation_batch_size=8",
        "trainer.max_steps=2", "trainer.val_check_interval=2", "trainer.limit_val_batches=1",
        "eval.num_prompts=2", "eval.max_new_tokens=4", "export=false",
    )  # fmt: skip
    result = train(cfg)
    client = MlflowClient(tracking_uri=cfg.logger.tracking_uri)
    run = client.get_run(result.run_id)
    assert run.info.status == "FINISHED"
    metrics = run.data.metrics
    assert math.isfinite(metrics["round/kl"]) and math.isfinite(metrics["eval/kl_seq"])
    assert "eval/win_rate_vs_ref" in metrics and metrics["round/judge_failures"] == 0
    # Every prompt the judge read (rounds and evaluation) is a whole conversation of the data.
    prompts = [row["prompt"] for row in rows]
    assert seen and all(template == LLAMA3 and prompt in prompts for template, prompt in seen)
