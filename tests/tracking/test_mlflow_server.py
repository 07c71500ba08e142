"""What the MLflow UI shows after a sweep, read the way the UI reads it: a real `mlflow server`
on 127.0.0.1, a 2-job β sweep run against it from the command line, and the server's REST API
(`/api/2.0/mlflow/...`, plain urllib) asked for each child run.

The sweep runs once for the module (`sweep`): the one sweep of the slow suite against a server,
so every check of what a sweep leaves on a server (its runs and summary through MLflow's client,
each child's logged and registered model) is one more test function here, not another sweep.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.parse
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import pytest

from ..conftest import SMALL_TOY
from ..mlflow_servers import running_mlflow_server

BETAS = ["0.1", "0.5"]
MAX_PARAMS = 30
REGISTERED = "toy-aligned"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """`mlflow server` on 127.0.0.1 with its own SQLite store and artifact folder."""
    with running_mlflow_server(tmp_path_factory.mktemp("mlflow_server")) as running:
        yield running


def rest(url: str, endpoint: str, body: dict | None = None, **query: str) -> dict:
    """GET (or POST `body` to) `/api/2.0/mlflow/<endpoint>` of the server at `url`."""
    address = f"{url}/api/2.0/mlflow/{endpoint}"
    if query:
        address += "?" + urllib.parse.urlencode(query)
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(address, data, {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


@pytest.fixture(scope="module")
def sweep(server, tmp_path_factory, toy_cache):
    """`python -m prefopt.train --multirun loss.beta=0.1,0.5` on the small toy world, two steps
    a job, against the server; the children as the REST API gives them, by job number."""
    cwd = tmp_path_factory.mktemp("sweep")
    cmd = [
        *(sys.executable, "-m", "prefopt.train", "--multirun", *SMALL_TOY),
        *(f"toy.cache_dir={toy_cache}", "trainer.max_steps=2", "trainer.val_check_interval=1"),
        "trainer.log_every_n_steps=1",  # every step's metrics, as test_sweeps' checks expect
        *("trainer.limit_val_batches=1", "trainer.enable_progress_bar=false"),
        *("eval.num_prompts=8", "eval.max_new_tokens=8", f"logger.tracking_uri={server.url}"),
        f"loss.beta={','.join(BETAS)}",
        f"model.register_as={REGISTERED}",
    ]
    # A sample of system metrics every 0.2 s: a job lasts seconds, and MLflow logs nothing for
    # a run that ends within its first sampling interval (10 s by default).
    env = {**os.environ, "MPLBACKEND": "Agg", "NO_PROXY": "127.0.0.1"}
    env["MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL"] = "0.2"
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]

    experiment = rest(server.url, "experiments/get-by-name", experiment_name="prefopt")
    runs = rest(
        server.url,
        "runs/search",
        {"experiment_ids": [experiment["experiment"]["experiment_id"]], "max_results": 100},
    )["runs"]
    tags = [{t["key"]: t["value"] for t in run["data"].get("tags", [])} for run in runs]
    [parent] = [run for run, t in zip(runs, tags) if t.get("prefopt.sweep_role") == "parent"]
    children = [
        (int(t["prefopt.sweep_job"]), run)
        for run, t in zip(runs, tags)
        if t.get("mlflow.parentRunId") == parent["info"]["run_id"]
    ]
    assert len(children) == len(BETAS) == len(runs) - 1
    return SimpleNamespace(
        proc=proc,
        url=server.url,
        artifacts=server.artifacts,
        cwd=Path(cwd),
        experiment_id=experiment["experiment"]["experiment_id"],
        parent=parent,
        children=[r for _, r in sorted(children)],
    )


def params_of(run: dict) -> dict[str, str]:
    return {p["key"]: p["value"] for p in run["data"].get("params", [])}


def datasets_of(run: dict) -> dict[str, dict]:
    """{context: dataset} of a run's dataset inputs, as the REST API returns them."""
    found = {}
    for dataset_input in run.get("inputs", {}).get("dataset_inputs", []):
        tags = {t["key"]: t["value"] for t in dataset_input.get("tags", [])}
        found[tags["mlflow.data.context"]] = dataset_input["dataset"]
    return found


@pytest.mark.slow  # a server start, the small toy world and a 2-job sweep: a minute or more
def test_each_child_shows_its_train_and_validation_data(sweep):
    digests = set()
    for child in sweep.children:
        assert child["info"]["status"] == "FINISHED"
        datasets = datasets_of(child)
        assert set(datasets) == {"train", "validation"}, child["info"]["run_name"]
        for context, dataset in datasets.items():
            assert dataset["name"] == f"toy world [{context}]"
            assert dataset["source_type"] == "local"
            assert json.loads(dataset["source"])["uri"].endswith(
                "train.jsonl" if context == "train" else "val.jsonl"
            )
            profile = json.loads(dataset["profile"])
            assert profile["pairs"] > 0 and profile["mean_chosen_tokens"] > 0, profile
            digests.add(dataset["digest"])
    assert len(digests) == 1  # a β sweep trains every job on the same prepared data


@pytest.mark.slow
def test_each_child_carries_its_key_params_and_its_beta(sweep):
    betas = []
    for child in sweep.children:
        params = params_of(child)
        assert len(params) <= MAX_PARAMS, sorted(params)
        assert {"loss", "optim/lr", "data/batch_size", "trainer/max_steps", "seed"} <= set(params)
        betas.append(params["loss/beta"])
    assert betas == BETAS
    # The whole config is still there, as the run's config.yaml artifact.
    run_id = sweep.children[0]["info"]["run_id"]
    files = rest(sweep.url, "artifacts/list", run_id=run_id)["files"]
    assert "config.yaml" in {f["path"] for f in files}


@pytest.mark.slow
def test_each_child_has_system_metrics(sweep):
    for child in sweep.children:
        metrics = {m["key"] for m in child["data"].get("metrics", [])}
        assert "system/cpu_utilization_percentage" in metrics, sorted(metrics)
        assert "val/rewards/accuracies" in metrics


@pytest.mark.slow
def test_each_child_logged_and_registered_its_aligned_model(sweep):
    """The runs table's Models column: one logged model per child, from that child, with its
    final validation metrics; `model.register_as` made one registry version per child."""
    models = rest(sweep.url, "logged-models/search", {"experiment_ids": [sweep.experiment_id]})[
        "models"
    ]
    by_run = {model["info"]["source_run_id"]: model for model in models}
    children = [child["info"]["run_id"] for child in sweep.children]
    assert set(by_run) == set(children)  # the parent logs none
    for run_id in children:
        metrics = {m["key"] for m in by_run[run_id].get("data", {}).get("metrics", [])}
        assert "val/rewards/accuracies" in metrics, sorted(metrics)
    versions = rest(sweep.url, "model-versions/search", filter=f"name='{REGISTERED}'")
    # one version per job, numbered in the order the jobs ran
    assert sorted((int(v["version"]), v["run_id"]) for v in versions["model_versions"]) == [
        (1, children[0]),
        (2, children[1]),
    ]


@pytest.mark.slow
def test_the_sweep_reaches_the_server_whole_with_its_summary(sweep, tmp_path):
    """What tests/test_sweeps.py checks of a sweep on a local store, through MLflow's client
    against the server: nothing went to a local store, nothing of a job was lost, and the
    summary and every artifact went through the server into its artifact folder."""
    from mlflow.tracking import MlflowClient

    from ..test_sweeps import assert_nothing_lost, read_summary, sweep_runs

    assert not (sweep.cwd / "mlflow.db").exists()  # nothing went to the local default store
    client = MlflowClient(sweep.url)
    parent, children = sweep_runs(client)
    assert parent.info.status == "FINISHED"
    assert [c.info.run_name for c in children] == [f"dpo β={b} lr=5e-4" for b in BETAS]
    assert_nothing_lost(client, children)
    rows = read_summary(client, parent.info.run_id, tmp_path)
    assert [r["run_id"] for r in rows] == [c.info.run_id for c in children]
    stored = {p.name for p in sweep.artifacts.rglob("*") if p.is_file()}
    assert {"config.yaml", "summary.csv", "loss.beta.png"} <= stored


@pytest.mark.slow
def test_the_parent_says_what_the_sweep_found_on_the_server(sweep):
    """The parent as the UI reads it (REST): its description is the summary table and its
    metrics and params are the best job's; the sweep printed the server's own page address,
    and the server answers there."""
    parent = sweep.parent
    tags = {t["key"]: t["value"] for t in parent["data"]["tags"]}
    assert tags["mlflow.note.content"].startswith("**2 jobs, FINISHED.**")
    params = params_of(parent)
    assert params["best/objective"] == "val/rewards/accuracies"
    assert params["best/loss/beta"] in BETAS
    best = {run["info"]["run_id"]: run for run in sweep.children}[tags["prefopt.best_run_id"]]
    metrics = {m["key"]: m["value"] for m in parent["data"]["metrics"]}
    best_metrics = {m["key"]: m["value"] for m in best["data"]["metrics"]}
    accuracy = "val/rewards/accuracies"
    assert metrics[f"best/{accuracy}"] == best_metrics[accuracy]

    run_id = parent["info"]["run_id"]
    page = f"{sweep.url}/#/experiments/{sweep.experiment_id}/runs/{run_id}"
    assert f"{page}?workflowType=machine_learning" in sweep.proc.stdout
    assert "mlflow ui --backend-store-uri" not in sweep.proc.stdout  # a server serves its UI
    with urllib.request.urlopen(f"{sweep.url}/", timeout=30) as response:  # the UI's page
        assert response.status == 200 and b"<html" in response.read().lower()
