"""`loop=online loss=rloo` end to end on the small toy world: every sample trained on with its
leave-one-out advantage, the round's statistics in MLflow, π_old scored as the step scores it,
resume mid-round, the true reward raised, and a multirun beside online DPO."""

from __future__ import annotations

import json
import math
import shutil

import pytest
from mlflow.tracking import MlflowClient

from prefopt.train import check_config, train
from prefopt.training.checkpoint import CHECKPOINT_DIR, LAST, PREVIOUS, safe_load

from ..conftest import user_error
from .test_online_training import ONLINE, assert_same_final_metrics

RLOO = [*ONLINE, "loss=rloo"]
ROUND_STATISTICS = (
    "round/rl_reward",
    "round/reward_judge",
    "round/reward_true",
    "round/kl",
    "round/length",
    "round/advantage_mean",
    "round/advantage_std",
    "round/advantage_min",
    "round/advantage_max",
    "round/advantage_zero_fraction",
    "round/examples_kept",
)


def history(client: MlflowClient, run_id: str, key: str) -> list[float]:
    return [m.value for m in sorted(client.get_metric_history(run_id, key), key=lambda m: m.step)]


def test_rloo_trains_on_every_sample_with_its_advantage_and_logs_each_round(
    compose_config, tmp_path
):
    """2 rounds of 8 prompts × 3 samples, 2 steps each: the round's 24 samples split into 2
    batches of 12, each sample once (TRL's generation batch; `data.batch_size` is for pairs).
    π_old is scored as the training step scores the policy, under the same bf16 autocast, so
    the first step of a round, before any update, has ratio π/π_old exactly 1 and nothing
    clipped (π_old from the round's fp32 scoring pass is off by bf16's rounding)."""
    cfg = compose_config(*RLOO, "trainer.precision=bf16-mixed")
    result = train(cfg)
    last = safe_load(tmp_path / "out" / CHECKPOINT_DIR / LAST)["OnlineDataModule"]["round"]
    assert sorted(i for batch in last["batches"] for i in batch) == list(range(24))
    assert len(last["old_logps"]) == 2 and len(last["old_logps"][0]) == 12
    client = MlflowClient(tracking_uri=cfg.logger.tracking_uri)
    run = client.get_run(result.run_id)
    assert run.info.status == "FINISHED"
    for key in ROUND_STATISTICS:
        assert len(history(client, result.run_id, key)) == 2, key
    assert history(client, result.run_id, "round/examples_kept") == [24.0, 24.0]
    # leave-one-out advantages of a prompt sum to 0: their mean over the round is 0
    for mean in history(client, result.run_id, "round/advantage_mean"):
        assert abs(mean) < 1e-6
    # β·KL in the reward: round 0 samples the reference itself, KL exactly 0
    assert history(client, result.run_id, "round/kl")[0] == 0.0
    rl, judge = (
        history(client, result.run_id, f"round/{k}") for k in ("rl_reward", "reward_judge")
    )
    assert rl[0] == judge[0]
    ratios = history(client, result.run_id, "train/ratio")
    clipped = history(client, result.run_id, "train/clip_fraction")
    assert len(ratios) == 4 and ratios[0] == 1.0 and ratios[2] == 1.0 and clipped[0] == 0.0
    assert "train/advantages" in run.data.metrics and math.isfinite(run.data.metrics["train/loss"])
    assert "eval/win_rate_vs_ref" in run.data.metrics
    assert not any(k.startswith("val/") for k in run.data.metrics)  # no offline-pair loss
    # the last round's samples as a table, each with its score and advantage
    local = client.download_artifacts(result.run_id, "online/last_round_pairs.json", str(tmp_path))
    table = json.loads(open(local).read())
    rows = [dict(zip(table["columns"], row)) for row in table["data"]]
    assert len(rows) == 24 and {row["round"] for row in rows} == {1}
    advantages = [row["advantage"] for row in rows]
    expected = [a for per_prompt in last["advantages"] for a in per_prompt]
    assert advantages == pytest.approx(expected, rel=1e-6, abs=1e-9)  # the table rounds them


def test_rloo_without_the_online_loop_is_a_one_line_error(compose_config, capsys):
    line = user_error(capsys, check_config, compose_config("loss=rloo"))
    assert "loss=rloo" in line and "loop=online" in line
    line = user_error(capsys, check_config, compose_config(*RLOO, "data=toy_unpaired"))
    assert "loss=rloo samples from the prompts of paired data" in line


RESUME = [*RLOO, "trainer.max_steps=7", "loop.steps_per_round=3", "checkpoint.every_n_steps=4"]


@pytest.mark.slow  # two runs, ~25 s on 2 cores; online DPO's resume test is in the fast suite
def test_resuming_rloo_in_the_middle_of_a_round_ends_as_the_uninterrupted_run(
    compose_config, tmp_path
):
    """As for online DPO: the checkpoint of step 4 is one step into round 1; the resumed run
    trains the rest of that round's samples, with their advantages and π_old log-probs from the
    checkpoint, and ends with the uninterrupted run's metrics and third round."""
    whole = train(compose_config(*RESUME))
    middle = tmp_path / "middle.ckpt"
    shutil.copy(tmp_path / "out" / CHECKPOINT_DIR / PREVIOUS, middle)
    state = safe_load(middle)["OnlineDataModule"]
    assert state["round"]["index"] == 1 and state["batches_done"] == 1
    assert state["round"]["advantages"] and state["round"]["old_logps"]

    resumed = train(
        compose_config(
            *RESUME,
            f"ckpt_path={middle}",
            f"output_dir={tmp_path / 'resumed'}",
            f"logger.tracking_uri=sqlite:///{tmp_path / 'resumed.db'}",
        )  # fmt: skip
    )
    assert_same_final_metrics(resumed, whole)
    runs = [(tmp_path / "mlflow.db", whole), (tmp_path / "resumed.db", resumed)]
    losses, last_rounds = [], []
    for store, result in runs:
        client = MlflowClient(tracking_uri=f"sqlite:///{store}")
        metrics = client.get_run(result.run_id).data.metrics
        last_rounds.append({k: v for k, v in metrics.items() if k.startswith("round/")})
        losses.append(history(client, result.run_id, "train/loss"))
    assert history(MlflowClient(f"sqlite:///{runs[1][0]}"), resumed.run_id, "round/index") == [2.0]
    for ours, theirs in zip(losses[1], losses[0][-len(losses[1]) :]):  # steps 5..7
        assert math.isclose(ours, theirs, rel_tol=1e-4, abs_tol=1e-6), losses
    for key, value in last_rounds[0].items():
        if not key.endswith(("tokens_per_s", "seconds")):
            assert math.isclose(last_rounds[1][key], value, rel_tol=1e-4, abs_tol=1e-5), key


@pytest.mark.slow  # 6 rounds on the small toy world: ~1 min on 2 cores
def test_rloo_against_the_true_reward_raises_it_in_a_few_rounds(compose_config):
    """judge=toy is the world's ground-truth reward: RLOO (β = 0.05, lr 5e-4) raises the mean
    true reward of the samples from round 0 (the reference's) to round 5, and the evaluation's
    policy beats the reference on held-out prompts."""
    cfg = compose_config(
        "loop=online", "loss=rloo", "judge=toy", "trainer.max_steps=24", "loop.steps_per_round=4",
        "loop.prompts_per_round=32", "loop.samples_per_prompt=4", "loop.max_new_tokens=16",
        "data.batch_size=32", "trainer.val_check_interval=24", "eval.num_prompts=32",
        "export=false",
    )  # fmt: skip
    result = train(cfg)
    client = MlflowClient(tracking_uri=cfg.logger.tracking_uri)
    true = history(client, result.run_id, "round/reward_true")
    assert len(true) == 6
    assert true[-1] > true[0] + 0.3, true
    assert result.metrics["eval/reward_policy"] > result.metrics["eval/reward_ref"]


@pytest.mark.slow  # two command-line jobs of the small toy world: ~1 min on 2 cores
def test_a_multirun_over_dpo_and_rloo_online_is_one_parent_with_two_children(tmp_path, toy_cache):
    from ..test_sweeps import run_sweep, sweep_runs

    args = ["loss=dpo,rloo", "loop=online", *ONLINE[1:], "eval.num_prompts=4"]
    proc = run_sweep(tmp_path, args, toy_cache, tmp_path / "cache")
    assert proc.returncode == 0, proc.stderr[-4000:]
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    parent, children = sweep_runs(client)
    assert parent.info.status == "FINISHED"
    dpo, rloo = children
    assert dpo.info.status == rloo.info.status == "FINISHED"
    assert "round/pairs_kept" in dpo.data.metrics and "round/advantage_std" in rloo.data.metrics
    assert "train/clip_fraction" in rloo.data.metrics
    for child in children:
        assert "eval/win_rate_vs_ref" in child.data.metrics
