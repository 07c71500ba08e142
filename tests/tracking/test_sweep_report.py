"""What a sweep's parent run shows first, and the reward–KL frontier, on a real SQLite store.

The child runs are made with MLflow's client (no training: the slow end-to-end sweeps in
tests/test_sweeps.py run the real command line), then `report_sweep` summarises them as it does
at the end of a `--multirun`.
"""

from __future__ import annotations

import contextlib
import csv
import io
from types import SimpleNamespace

import pytest
from mlflow.tracking import MlflowClient

from prefopt.tracking import report
from prefopt.tracking.frontier import frontier_of
from prefopt.tracking.report import Row, report_sweep
from prefopt.tracking.tags import PARENT_TAG, TAG_JOB, TAG_ROLE
from prefopt.tracking.ui import run_page, runs_page

SWEPT = ["method", "loss.beta"]
# Jobs in Hydra's order (method outer, β inner) but β listed high to low: the frontier orders
# each curve by β whatever the job order. (method, β, KL, true reward, true win rate)
JOBS = [
    ("dpo_offline", "0.5", 0.7, 1.0, 0.62),
    ("dpo_offline", "0.1", 1.2, 1.2, 0.70),
    ("dpo_online", "0.5", 2.0, 1.9, 0.81),
    ("dpo_online", "0.1", 13.4, 3.2, 0.97),
]
REFERENCE_TRUE_REWARD = 0.4
OBJECTIVE = "eval/true/win_rate_vs_ref"


def make_sweep(client: MlflowClient, experiment: str) -> str:
    """A parent run and its four finished children, as a sweep's jobs leave them."""
    parent_id = client.create_run(
        experiment, run_name="sweep", tags={TAG_ROLE: "parent"}
    ).info.run_id
    for job, (method, beta, kl, reward, win) in enumerate(JOBS):
        child = client.create_run(
            experiment,
            run_name=f"dpo β={beta} lr=5e-4 method={method}",
            tags={PARENT_TAG: parent_id, TAG_JOB: str(job)},
        )
        run_id = child.info.run_id
        for key, value in (("method", method), ("loss/beta", beta)):
            client.log_param(run_id, key, value)
        metrics = {
            "val/rewards/accuracies": 0.6 + 0.01 * job,
            "eval/kl_seq": kl,
            "eval/reward_policy": reward,  # the toy judge: the true reward
            "eval/win_rate_vs_ref": win,
            "eval/true/reward_policy": reward,
            "eval/true/reward_ref": REFERENCE_TRUE_REWARD,
            "eval/true/win_rate_vs_ref": win,
        }
        for key, value in metrics.items():
            client.log_metric(run_id, key, value, step=10)
        client.set_terminated(run_id, "FINISHED")
    return parent_id


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """One SQLite store for the module (creating its tables takes seconds); each sweep is a
    parent run of its own in it."""
    uri = f"sqlite:///{tmp_path_factory.mktemp('store') / 'mlflow.db'}"
    client = MlflowClient(uri)
    return SimpleNamespace(client=client, uri=uri, experiment=client.create_experiment("prefopt"))


@pytest.fixture(scope="module")
def reported(store, tmp_path_factory):
    """The sweep summarised once, with the true win rate as its objective."""
    parent_id = make_sweep(store.client, store.experiment)
    sweep_dir = tmp_path_factory.mktemp("multirun") / "0"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        status = report_sweep(store.client, parent_id, SWEPT, str(sweep_dir), OBJECTIVE)
    parent = store.client.get_run(parent_id)
    return SimpleNamespace(status=status, parent=parent, dir=sweep_dir, printed=printed.getvalue())


def test_the_parent_says_what_the_sweep_found(store, reported):
    """Description = the summary as markdown; the best job by the objective (here the true
    win rate: job 3, 0.97) has its metrics and swept values on the parent; the address of
    the parent's page and the runs table is printed."""
    assert reported.status == "FINISHED"
    parent = reported.parent
    note = parent.data.tags["mlflow.note.content"]
    assert note.startswith("**4 jobs, FINISHED.**")
    assert "Best by `eval/true/win_rate_vs_ref` = 0.9700: job 3" in note
    assert "| job | run_name | method | loss.beta | val/rewards/accuracies |" in note
    assert "| 3 | dpo β=0.1 lr=5e-4 method=dpo_online | dpo_online | 0.1 | 0.6300 |" in note
    assert "**Reward–KL frontier**" in note

    best = store.client.get_run(parent.data.tags["prefopt.best_run_id"])
    assert best.data.tags[TAG_JOB] == "3"
    assert parent.data.params == {
        "best/objective": OBJECTIVE,
        "best/job": "3",
        "best/method": "dpo_online",
        "best/loss/beta": "0.1",
    }
    for metric in ("eval/true/win_rate_vs_ref", "eval/kl_seq", "val/rewards/accuracies"):
        assert parent.data.metrics[f"best/{metric}"] == best.data.metrics[metric], metric
    assert "best/eval/true/reward_ref" in parent.data.metrics

    assert f"mlflow ui --backend-store-uri {store.uri}" in reported.printed
    page = f"http://127.0.0.1:5000/#/experiments/{store.experiment}/runs/{parent.info.run_id}"
    assert f"{page}?workflowType=machine_learning" in reported.printed


def test_the_frontier_is_a_curve_per_method_ordered_by_beta(store, reported, tmp_path):
    parent_id = reported.parent.info.run_id
    artifacts = {a.path for a in store.client.list_artifacts(parent_id, "summary")}
    assert {"summary/frontier.png", "summary/frontier.csv", "summary/summary.csv"} <= artifacts
    png = (reported.dir / "summary" / "frontier.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 5000

    local = store.client.download_artifacts(parent_id, "summary/frontier.csv", str(tmp_path))
    with open(local, newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["method"], r["β"], r["KL (sequence)"], r["true reward"]) for r in rows] == [
        ("dpo_offline", "0.1", "1.200", "1.200"),
        ("dpo_offline", "0.5", "0.700", "1.000"),
        ("dpo_online", "0.1", "13.400", "3.200"),
        ("dpo_online", "0.5", "2.000", "1.900"),
    ]
    note = reported.parent.data.tags["mlflow.note.content"]
    assert "| dpo_online | 0.1 | 13.400 | 3.200 | 0.970 |" in note
    assert "Reward–KL frontier:" in reported.printed


def test_a_frontier_needs_a_beta_sweep_and_falls_back_to_the_judge():
    def row(job, beta, **metrics):
        return Row(job, "FINISHED", {"loss.beta": beta, "optim.lr": "1e-3"}, metrics, f"j{job}")

    judged = [row(0, "0.1", **{"eval/kl_seq": 1.0, "eval/reward_policy": 2.0})]
    assert frontier_of(judged, ["optim.lr"]) is None  # β not swept: no frontier
    frontier = frontier_of(judged, ["loss.beta"])
    assert frontier.reward_metric == "eval/reward_policy" and not frontier.true_reward
    assert list(frontier.curves) == ["β sweep"]
    failed = [Row(1, "FAILED", {"loss.beta": "0.5"}, {"eval/kl_seq": 1.0}, "j1")]
    assert frontier_of(failed, ["loss.beta"]) is None  # only finished runs are points


def test_a_long_summary_is_cut_to_what_a_tag_holds(store, tmp_path, monkeypatch, capsys):
    parent_id = make_sweep(store.client, store.experiment)
    monkeypatch.setattr(report, "DESCRIPTION_LIMIT", 900)
    report_sweep(store.client, parent_id, SWEPT, str(tmp_path / "0"), None)
    parent = store.client.get_run(parent_id)
    note = parent.data.tags["mlflow.note.content"]
    assert len(note) <= 900
    assert "more jobs in `summary/summary.csv`" in note
    assert "Best by" not in note  # no objective: no best job
    assert not parent.data.params


def test_addresses_of_a_server():
    """A server's own address; the hash route of MLflow 3's UI, in its Model training view."""
    assert (
        run_page("http://mlflow.lab:5000/", "7", "abc")
        == "http://mlflow.lab:5000/#/experiments/7/runs/abc?workflowType=machine_learning"
    )
    assert runs_page("https://m.example", "1").endswith(
        "/#/experiments/1/runs?workflowType=machine_learning"
    )
