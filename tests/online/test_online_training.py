"""`loop=online` end to end on the small toy world: rounds sampled from the policy, judged,
trained on, tracked in MLflow (SQLite store, read back with MlflowClient), resumed mid-round."""

from __future__ import annotations

import json
import math
import shutil
import sys
import types

import pytest
from mlflow.tracking import MlflowClient

from prefopt.errors import PrefoptError
from prefopt.train import check_config, train
from prefopt.training.checkpoint import CHECKPOINT_DIR, LAST, PREVIOUS, safe_load

from ..conftest import SMALL_TOY
from ..test_fault_files import run_killed_at

ONLINE = [
    "loop=online",
    "trainer.max_steps=4",
    "trainer.val_check_interval=2",
    "trainer.limit_val_batches=1",
    "trainer.log_every_n_steps=1",
    "loop.steps_per_round=2",
    "loop.prompts_per_round=8",
    "loop.samples_per_prompt=3",
    "loop.max_new_tokens=8",
    "loop.generation_batch_size=12",
    "data.batch_size=4",
    "eval.max_new_tokens=8",
    "export=false",
]


def length_score(prompts, completions):
    """Scores a completion by its number of words: a judge whose ranking the test can check."""
    return [float(len(c.split())) for c in completions]


@pytest.fixture
def length_judge(monkeypatch):
    """`judge=python` with `length_score`, importable as `prefopt_test_judges.length_score`."""
    module = types.ModuleType("prefopt_test_judges")
    module.length_score = length_score
    monkeypatch.setitem(sys.modules, module.__name__, module)
    return ["judge=python", "judge.function=prefopt_test_judges.length_score"]


def test_online_dpo_trains_on_pairs_its_judge_ranked_and_tracks_each_round(
    compose_config, length_judge, tmp_path
):
    cfg = compose_config(*ONLINE, *length_judge)
    result = train(cfg)
    client = MlflowClient(tracking_uri=cfg.logger.tracking_uri)
    run = client.get_run(result.run_id)
    assert run.info.status == "FINISHED"
    for name in ("reward_judge", "reward_true", "kl", "length", "pairs_kept", "pairs_dropped",
                 "tied_prompts", "judge_failures", "generated_tokens", "sampling_tokens_per_s"):  # fmt: skip
        history = client.get_metric_history(result.run_id, f"round/{name}")
        assert sorted(m.step for m in history) == [0, 2], name  # one value per round
    kept = client.get_metric_history(result.run_id, "round/pairs_kept")
    assert all(m.value > 0 for m in kept)
    # a Python function that always answers: no completion of either round went unscored
    failures = client.get_metric_history(result.run_id, "round/judge_failures")
    assert [m.value for m in failures] == [0.0, 0.0]
    # trained 4 steps on the rounds' batches; validated on the offline pairs
    assert len(client.get_metric_history(result.run_id, "train/loss")) == 4
    assert "val/rewards/accuracies" in run.data.metrics
    assert "eval/win_rate_vs_ref" in run.data.metrics

    artifacts = {a.path for a in client.list_artifacts(result.run_id, "online")}
    assert {"online/reward_vs_kl.png", "online/last_round_pairs.json"} <= artifacts
    local = client.download_artifacts(result.run_id, "online/last_round_pairs.json", str(tmp_path))
    table = json.loads(open(local).read())
    rows = [dict(zip(table["columns"], row)) for row in table["data"]]
    assert rows and {row["round"] for row in rows} == {1}  # the last round only
    for row in rows:  # chosen has the higher judge score, and it is the judge's score
        assert row["score_chosen"] > row["score_rejected"]
        assert length_score([row["prompt"]], [row["chosen"]]) == [row["score_chosen"]]
        assert length_score([row["prompt"]], [row["rejected"]]) == [row["score_rejected"]]


def test_online_kto_labels_samples_by_the_prompt_median(compose_config):
    cfg = compose_config(
        *ONLINE, "loss=kto", "trainer.max_steps=2", "eval.num_prompts=0", "data.max_rows=64"
    )
    result = train(cfg)
    client = MlflowClient(tracking_uri=cfg.logger.tracking_uri)
    metrics = client.get_run(result.run_id).data.metrics
    assert metrics["round/desirable"] > 0 and metrics["round/undesirable"] > 0
    assert (
        metrics["round/examples_kept"] == metrics["round/desirable"] + metrics["round/undesirable"]
    )
    assert math.isfinite(metrics["train/loss"])


def test_a_round_s_reference_log_probs_computed_once_equal_the_reference_run_online(
    compose_config, tmp_path
):
    """reference.cache=true: the reference scores each round's batches when the round is made
    (never the offline cache); cache=false: it runs at every step. Same losses either way."""
    losses = []
    for cache in ("true", "false"):
        cfg = compose_config(
            *ONLINE, "trainer.max_steps=3", "eval.num_prompts=0", f"reference.cache={cache}",
            f"output_dir={tmp_path / cache}", f"logger.tracking_uri=sqlite:///{tmp_path / cache}.db",
        )  # fmt: skip
        result = train(cfg)
        client = MlflowClient(tracking_uri=cfg.logger.tracking_uri)
        history = client.get_metric_history(result.run_id, "train/loss")
        losses.append([m.value for m in sorted(history, key=lambda m: m.step)])
    assert len(losses[0]) == 3
    for cached, online in zip(*losses):
        assert math.isclose(cached, online, rel_tol=1e-5, abs_tol=1e-6), losses


def assert_same_final_metrics(result, expected) -> None:
    """The final `val/` and `eval/` metrics of two runs agree (to fp32 rounding)."""
    compared = [k for k in expected.metrics if k.startswith(("val/", "eval/"))]
    assert compared
    for key in compared:
        assert math.isclose(result.metrics[key], expected.metrics[key], rel_tol=1e-4,
                            abs_tol=1e-5), key  # fmt: skip


RESUME = [*ONLINE, "trainer.max_steps=7", "loop.steps_per_round=3", "checkpoint.every_n_steps=4"]


def test_resuming_in_the_middle_of_a_round_ends_as_the_uninterrupted_run(compose_config, tmp_path):
    """The uninterrupted run (7 steps, rounds of 3) checkpoints at step 4, one step into its
    second round (kept as previous.ckpt after the final one); a run resumed from it continues
    that round's pairs without sampling again and ends with the same metrics and third round."""
    whole = train(compose_config(*RESUME))
    middle = tmp_path / "middle.ckpt"
    shutil.copy(tmp_path / "out" / CHECKPOINT_DIR / PREVIOUS, middle)
    saved = safe_load(middle)
    assert saved["global_step"] == 4
    state = saved["OnlineDataModule"]
    assert state["round"]["index"] == 1 and state["batches_done"] == 1

    resumed = train(
        compose_config(
            *RESUME,
            f"ckpt_path={middle}",
            f"output_dir={tmp_path / 'resumed'}",
            f"logger.tracking_uri=sqlite:///{tmp_path / 'resumed.db'}",
        )  # fmt: skip
    )
    assert_same_final_metrics(resumed, whole)
    # the round made after the resume (round 2, at step 6) is the uninterrupted run's
    stores = [tmp_path / "mlflow.db", tmp_path / "resumed.db"]
    last_rounds = []
    for store, result in zip(stores, (whole, resumed)):
        client = MlflowClient(tracking_uri=f"sqlite:///{store}")
        metrics = client.get_run(result.run_id).data.metrics
        last_rounds.append({k: v for k, v in metrics.items() if k.startswith("round/")})
        history = client.get_metric_history(result.run_id, "round/index")
        indices = [m.value for m in history]
        assert indices == ([0.0, 1.0, 2.0] if store == stores[0] else [2.0])  # no resampling
    assert last_rounds[0]["round/index"] == 2.0
    for key, value in last_rounds[0].items():
        if not key.endswith(("tokens_per_s", "seconds")):  # timings
            assert math.isclose(last_rounds[1][key], value, rel_tol=1e-4, abs_tol=1e-5), key


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("trainer.max_steps=-1", "trainer.max_steps"),
        ("loop.samples_per_prompt=1", "loop.samples_per_prompt=1"),
        ("trainer.val_check_interval=0.5", "trainer.val_check_interval=0.5"),
    ],
)
def test_an_online_loop_that_cannot_work_is_one_line_at_start(compose_config, override, message):
    with pytest.raises(PrefoptError, match=message):
        check_config(compose_config("loop=online", override))


@pytest.mark.slow  # two command-line jobs of the small toy world: ~1 min on 2 cores
def test_a_multirun_over_loops_is_one_parent_with_an_offline_and_an_online_child(
    tmp_path, toy_cache
):
    from ..test_sweeps import run_sweep, sweep_runs

    args = ["loop=offline,online", *ONLINE[1:], "eval.num_prompts=4"]
    proc = run_sweep(tmp_path, args, toy_cache, tmp_path / "cache")
    assert proc.returncode == 0, proc.stderr[-4000:]
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    parent, children = sweep_runs(client)
    assert parent.info.status == "FINISHED"
    offline, online = children
    assert offline.info.status == online.info.status == "FINISHED"
    assert not any(k.startswith("round/") for k in offline.data.metrics)
    assert online.data.metrics["round/pairs_kept"] > 0
    for child in children:
        assert "eval/win_rate_vs_ref" in child.data.metrics
        assert child.data.params["loop"] in child.info.run_name
    assert (offline.data.params["loop"], online.data.params["loop"]) == ("offline", "online")


KILLED = [*ONLINE, "trainer.max_steps=8", "loop.steps_per_round=4", "checkpoint.every_n_steps=2"]


@pytest.mark.slow  # a killed subprocess, then two runs: about 40 s on 2 cores
def test_a_run_killed_mid_round_resumes_with_the_round_and_ends_as_the_uninterrupted_run(
    compose_config, toy_cache, reference_cache, tmp_path
):
    """kill -9 in the third step of the first round (rounds of 4, a checkpoint every 2 steps):
    `resume=true` continues that round's last two batches from the checkpoint of step 2, in the
    same MLflow run, then samples round 1 as the uninterrupted run did."""
    args = [
        *SMALL_TOY,
        f"toy.cache_dir={toy_cache}",
        f"reference.cache_dir={reference_cache}",
        f"output_dir={tmp_path / 'out'}",
        f"logger.tracking_uri=sqlite:///{tmp_path / 'mlflow.db'}",
        "trainer.enable_progress_bar=false",
        "eval.num_prompts=8",
        *KILLED,
    ]
    run_killed_at("training", args, tmp_path)  # dies in the step at batch index 2 of round 0
    saved = safe_load(tmp_path / "out" / CHECKPOINT_DIR / LAST)
    assert saved["global_step"] == 2
    state = saved["OnlineDataModule"]
    assert state["round"]["index"] == 0 and state["batches_done"] == 2

    resumed = train(compose_config(*KILLED, "resume=true"))
    whole = train(
        compose_config(
            *KILLED,
            f"output_dir={tmp_path / 'whole'}",
            f"logger.tracking_uri=sqlite:///{tmp_path / 'whole.db'}",
        )  # fmt: skip
    )
    assert_same_final_metrics(resumed, whole)
    rounds = []
    for store, result in (("mlflow.db", resumed), ("whole.db", whole)):
        client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / store}")
        [run] = client.search_runs(client.search_experiments()[0].experiment_id)
        assert run.info.run_id == result.run_id and run.info.status == "FINISHED"
        indices = [m.value for m in client.get_metric_history(result.run_id, "round/index")]
        assert sorted(indices) == [0.0, 1.0]  # the killed round logged once, never resampled
        rounds.append({k: v for k, v in run.data.metrics.items() if k.startswith("round/")})
    assert rounds[1]["round/index"] == 1.0
    for key, value in rounds[1].items():  # round 1, sampled after the resume, as uninterrupted
        if not key.endswith(("tokens_per_s", "seconds")):  # timings
            assert math.isclose(rounds[0][key], value, rel_tol=1e-4, abs_tol=1e-5), key
