"""Evaluation and diagnostics through `prefopt.train.train` on the toy world: what reaches
MLflow on a short default run, and each diagnostic on data built to trigger it."""

import json
import logging
import math
import re

import torch
from mlflow.tracking import MlflowClient
from transformers import AutoTokenizer, LlamaConfig, LlamaForSequenceClassification

from prefopt.model import loading as model_loading  # every checkpoint loads through it
from prefopt.toy import build_toy_world, reward
from prefopt.train import train

EVAL_METRICS = (
    "eval/win_rate_vs_ref",
    "eval/reward_policy",
    "eval/reward_ref",
    "eval/kl_seq",
    "eval/length_policy",
)
QUIET = ("reference policy collapse", "not increasing", "outside [")


def history(client, run_id, key):
    return [(m.step, m.value) for m in client.get_metric_history(run_id, key)]


def read_table(client, run_id, tmp_path):
    path = client.download_artifacts(run_id, "eval/generations.json", str(tmp_path / "dl"))
    table = json.load(open(path))
    return [dict(zip(table["columns"], row)) for row in table["data"]]


def toy_rows(cfg, split="train"):
    world = build_toy_world(cfg.toy, progress=False)
    path = world.train_path if split == "train" else world.val_path
    return [json.loads(line) for line in open(path)], world


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_a_short_default_run_logs_the_evaluation_and_no_diagnostic_fires(
    compose_config, caplog, tmp_path
):
    cfg = compose_config(
        "export=false",
        "trainer.max_steps=12",
        "trainer.val_check_interval=4",
        "eval.num_prompts=8",
        "eval.max_new_tokens=24",
    )
    with caplog.at_level(logging.INFO):
        result = train(cfg)
    client = MlflowClient(cfg.logger.tracking_uri)
    run = client.get_run(result.run_id)

    for key in EVAL_METRICS:  # validations at steps 4, 8, 12; nothing new to evaluate at the end
        assert [step for step, _ in history(client, result.run_id, key)] == [4, 8, 12], key
    reference_rewards = {v for _, v in history(client, result.run_id, "eval/reward_ref")}
    assert len(reference_rewards) == 1  # reference samples are drawn once and reused
    # A Monte-Carlo estimate on 8 samples after 12 small steps: it can fall either side of 0,
    # but the policy has moved, so it is not 0 (that KL is computed right is tested by hand).
    assert math.isfinite(result.metrics["eval/kl_seq"]) and result.metrics["eval/kl_seq"] != 0

    rows = read_table(client, result.run_id, tmp_path)
    assert len(rows) == 3 * 8 and {r["step"] for r in rows} == {4, 8, 12}
    assert set(rows[0]) == {"step", "prompt", "policy", "reference", "reward_policy", "reward_ref"}
    last = [r for r in rows if r["step"] == 12]
    assert all(r["reward_policy"] == reward(r["policy"]) for r in last)  # the toy judge's scores
    wins = [
        1.0
        if r["reward_policy"] > r["reward_ref"]
        else 0.5
        if r["reward_policy"] == r["reward_ref"]
        else 0.0
        for r in last
    ]
    assert sum(wins) / len(wins) == result.metrics["eval/win_rate_vs_ref"]
    # The ground truth's verdict is logged whatever the judge; the toy judge IS the ground
    # truth, so at every evaluation the two agree exactly.
    for judged, true in (
        ("eval/win_rate_vs_ref", "eval/true/win_rate_vs_ref"),
        ("eval/reward_policy", "eval/true/reward_policy"),
        ("eval/reward_ref", "eval/true/reward_ref"),
    ):
        assert history(client, result.run_id, true) == history(client, result.run_id, judged)

    # the diagnostics ran and stayed quiet
    assert run.data.tags["diagnostics.beta_range"] == "inside"
    assert "diagnostics.reference_collapse" not in run.data.tags
    assert "diagnostics.margin_stalled" not in run.data.tags
    assert run.data.metrics["diagnostics/ref_low_logp_share"] <= 0.25
    assert history(client, result.run_id, "diagnostics/margin_stalled") == [(12, 0.0)]
    assert not [r.message for r in caplog.records if any(q in r.getMessage() for q in QUIET)]
    # The run ends by saying where to see it: its page in the UI's Model training view.
    page = f"/#/experiments/{run.info.experiment_id}/runs/{result.run_id}?workflowType="
    assert any(page in r.getMessage() for r in caplog.records)


def test_reference_collapse_and_beta_range_fire_on_data_built_for_them(
    compose_config, caplog, tmp_path
):
    """Chosen completions the reference never writes (a product name repeated; it only ever
    writes product names in prompts), and β = 1 for DPO, above the authors' [0.05, 0.5]."""
    rows, _ = toy_rows(compose_config())
    rows = [
        {**r, "chosen": " " + " ".join([r["prompt"].split()[-2]] * 10) + " ."} for r in rows[:64]
    ]
    data = write_jsonl(tmp_path / "collapsed.jsonl", rows)
    cfg = compose_config(
        "data=local",
        f"data.path={data}",
        "loss.beta=1.0",
        "export=false",
        "trainer.max_steps=1",
        "eval.num_prompts=0",
    )
    with caplog.at_level(logging.INFO):
        result = train(cfg)
    run = MlflowClient(cfg.logger.tracking_uri).get_run(result.run_id)
    assert run.data.metrics["diagnostics/ref_low_logp_share"] == 1.0
    assert run.data.tags["diagnostics.reference_collapse"] == "1.000"
    collapse = [r for r in caplog.records if "reference policy collapse" in r.getMessage()]
    assert collapse and collapse[0].levelno == logging.WARNING
    assert re.search(r"100% of \d+ sampled chosen completions", collapse[0].getMessage())
    assert run.data.tags["diagnostics.beta_range"] == "outside"
    beta = [r for r in caplog.records if "loss.beta=1 is outside [0.05, 0.5]" in r.getMessage()]
    assert beta and beta[0].levelno == logging.INFO


def contradictory_run_config(compose_config, tmp_path, *overrides: str):
    """Contradictory preferences: every pair also appears with chosen and rejected swapped, so
    the mean validation margin stays at 0 however the policy moves; 6 steps, validated every 2."""
    rows, _ = toy_rows(compose_config(), split="val")
    rows = rows[:32]
    rows += [{**r, "chosen": r["rejected"], "rejected": r["chosen"]} for r in rows]
    data = write_jsonl(tmp_path / "contradictory.jsonl", rows)
    return compose_config(
        "data=local",
        f"data.path={data}",
        f"data.val_path={data}",
        "export=false",
        "trainer.max_epochs=-1",
        "trainer.max_steps=6",
        "trainer.val_check_interval=2",
        "eval.num_prompts=0",
        *overrides,
    )


def test_a_margin_that_cannot_rise_is_flagged(compose_config, caplog, tmp_path):
    cfg = contradictory_run_config(compose_config, tmp_path)
    with caplog.at_level(logging.WARNING):
        result = train(cfg)
    client = MlflowClient(cfg.logger.tracking_uri)
    assert history(client, result.run_id, "diagnostics/margin_stalled") == [(6, 1.0)]
    assert client.get_run(result.run_id).data.tags["diagnostics.margin_stalled"] == "true"
    warned = [r.getMessage() for r in caplog.records if "not increasing" in r.getMessage()]
    assert len(warned) == 1
    assert "reference policy mismatched with the preference data; revise the data or β" in warned[0]


def test_simpo_is_evaluated_against_the_initial_model_by_a_saved_reward_model(
    compose_config, monkeypatch, tmp_path
):
    """SimPO loads no reference; evaluation compares with a frozen copy of the initial policy
    and judges with a tiny reward model saved to disk (it reads the toy tokenizer's words)."""
    _, world = toy_rows(compose_config())
    tokenizer = AutoTokenizer.from_pretrained(world.model_dir)
    torch.manual_seed(0)
    reward_model = LlamaForSequenceClassification(
        LlamaConfig(
            vocab_size=len(tokenizer),
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            num_key_value_heads=2,
            num_labels=1,
            pad_token_id=tokenizer.pad_token_id,
        )
    )
    reward_model.save_pretrained(tmp_path / "rm")
    tokenizer.save_pretrained(tmp_path / "rm")

    loads = []
    real_load = model_loading.load_causal_lm
    monkeypatch.setattr(
        model_loading,
        "load_causal_lm",
        lambda path, cfg: loads.append(path) or real_load(path, cfg),
    )
    cfg = compose_config(
        "loss=simpo",
        "judge=reward_model",
        f"judge.path={tmp_path / 'rm'}",
        "eval.num_prompts=4",
        "eval.max_new_tokens=12",
        "export=false",
        "trainer.max_steps=2",
        "trainer.val_check_interval=2",
        "trainer.limit_val_batches=1",
    )
    result = train(cfg)
    assert len(loads) == 1 and result.module.reference is None  # SimPO: the policy only
    client = MlflowClient(cfg.logger.tracking_uri)
    run = client.get_run(result.run_id)
    for key in EVAL_METRICS:
        assert key in run.data.metrics, key
    assert "diagnostics/ref_low_logp_share" not in run.data.metrics  # no reference in SimPO

    rows = read_table(client, result.run_id, tmp_path)
    reward_model.eval()
    for row in rows:
        # As a reward model is trained to read a plain-text exchange: the tokenizer's ids, then
        # the EOS that ends every sequence of training.
        ids = tokenizer(row["prompt"] + row["policy"]).input_ids + [tokenizer.eos_token_id]
        ids = torch.tensor([ids])
        with torch.no_grad():
            expected = reward_model(input_ids=ids).logits[0, 0].item()
        assert abs(row["reward_policy"] - expected) < 1e-4
    # Judged by a (random) reward model on the toy world, the run is still measured by the
    # ground truth: on the last evaluation's samples (all in the table: 4 prompts).
    last = [r for r in rows if r["step"] == max(r["step"] for r in rows)]
    true_policy = sum(reward(r["policy"]) for r in last) / len(last)
    true_ref = sum(reward(r["reference"]) for r in last) / len(last)
    assert abs(run.data.metrics["eval/true/reward_policy"] - true_policy) < 1e-9
    assert abs(run.data.metrics["eval/true/reward_ref"] - true_ref) < 1e-9
    assert "eval/true/win_rate_vs_ref" in run.data.metrics


def test_a_moving_reference_turns_the_margin_check_off(compose_config, caplog, tmp_path):
    """The same contradictory data, with the reference synced every 2 steps: the margin is
    measured against a reference that follows the policy, so no stall is flagged."""
    cfg = contradictory_run_config(compose_config, tmp_path, "reference.sync_every_n_steps=2")
    with caplog.at_level(logging.INFO):
        result = train(cfg)
    client = MlflowClient(cfg.logger.tracking_uri)
    assert history(client, result.run_id, "diagnostics/margin_stalled") == []
    assert "diagnostics.margin_stalled" not in client.get_run(result.run_id).data.tags
    messages = [r.getMessage() for r in caplog.records]
    assert not [m for m in messages if "not increasing" in m]
    assert sum("the margin check is off: the reference moves" in m for m in messages) == 1
