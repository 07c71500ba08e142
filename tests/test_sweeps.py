"""Sweeps: `--multirun` jobs grouped under one MLflow parent run, with a summary at the end.

The end-to-end tests run the real command line (`python -m prefopt.train --multirun ...`) in a
temporary directory on the small toy world, a couple of steps per job, and read the results
back through MLflow's client: nothing of MLflow or Hydra is mocked.
"""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from mlflow.tracking import MlflowClient
from omegaconf import OmegaConf

from prefopt.tracking import run_datasets
from prefopt.tracking.sweep import SweepJob, swept_overrides

from .conftest import CONF_DIR, SMALL_TOY

STEPS = 2
"""Each job trains STEPS steps, validates after every step and logs every step."""

# A small generation evaluation, so that the summary and the notebook see eval/ metrics.
SMALL_EVAL = ["eval.num_prompts=8", "eval.max_new_tokens=8"]


def fast_job_overrides(toy_cache: Path) -> list[str]:
    return [
        *SMALL_TOY,
        *SMALL_EVAL,
        f"toy.cache_dir={toy_cache}",
        f"trainer.max_steps={STEPS}",
        "trainer.val_check_interval=1",
        "trainer.limit_val_batches=1",
        "trainer.log_every_n_steps=1",
        "trainer.enable_progress_bar=false",
        "export=false",
    ]


def run_sweep(cwd: Path, args: list[str], toy_cache: Path, cache: Path, **env: str):
    """`python -m prefopt.train --multirun <fast small-toy overrides> <args>` in `cwd`, with
    $PREFOPT_CACHE=`cache` (the session's `prefopt_cache` of tests/conftest.py: reference
    log-probs computed once, then shared, and never ~/.cache)."""
    env = {**os.environ, "PREFOPT_CACHE": str(cache), "MPLBACKEND": "Agg", **env}
    cmd = [sys.executable, "-m", "prefopt.train", "--multirun", *fast_job_overrides(toy_cache)]
    cmd += args
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)


def sweep_runs(client: MlflowClient, experiment: str = "prefopt"):
    """(parent, children sorted by job number) of the only sweep in `experiment`."""
    runs = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    parents = [r for r in runs if r.data.tags.get("prefopt.sweep_role") == "parent"]
    assert len(parents) == 1, [r.info.run_name for r in runs]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    assert len(children) == len(runs) - 1, "every other run is a child of the parent"
    return parents[0], sorted(children, key=lambda r: int(r.data.tags["prefopt.sweep_job"]))


def read_summary(client: MlflowClient, parent_id: str, tmp_path: Path) -> list[dict[str, str]]:
    local = client.download_artifacts(parent_id, "summary/summary.csv", str(tmp_path))
    with open(local, newline="") as f:
        return list(csv.DictReader(f))


def assert_nothing_lost(client: MlflowClient, children) -> None:
    """Every child finished with the key params, its datasets and every step's metrics."""
    reference_params = set(children[0].data.params)
    assert {"loss/beta", "optim/lr", "trainer/max_steps"} <= reference_params
    for child in children:
        assert child.info.status == "FINISHED", child.info.run_name
        assert set(child.data.params) == reference_params, child.info.run_name
        datasets = run_datasets(child)
        assert set(datasets) == {"train", "validation"}, child.info.run_name
        assert datasets["train"]["profile"]["pairs"] > 0
        artifacts = {a.path for a in client.list_artifacts(child.info.run_id)}
        assert "config.yaml" in artifacts
        for metric in ("train/loss", "val/rewards/margins", "val/rewards/accuracies"):
            history = client.get_metric_history(child.info.run_id, metric)
            assert len(history) == STEPS, (child.info.run_name, metric, history)


# --- a β sweep, four jobs at once on one SQLite store --------------------------------------

BETAS = ["0.05", "0.1", "0.2", "0.5"]


@pytest.fixture(scope="module")
def beta_sweep(tmp_path_factory, toy_cache, prefopt_cache):
    """`--multirun loss.beta=...` with Hydra's joblib launcher: the four jobs run at once, in
    four worker processes, all writing to ./mlflow.db."""
    cwd = tmp_path_factory.mktemp("beta_sweep")
    args = ["hydra/launcher=joblib", "hydra.launcher.n_jobs=4", f"loss.beta={','.join(BETAS)}"]
    proc = run_sweep(cwd, args, toy_cache, prefopt_cache, OMP_NUM_THREADS="1")
    assert proc.returncode == 0, proc.stderr[-4000:]
    uri = f"sqlite:///{cwd / 'mlflow.db'}"
    [sweep_dir] = (cwd / "multirun").glob("*/*")
    return SimpleNamespace(cwd=cwd, proc=proc, uri=uri, client=MlflowClient(uri), dir=sweep_dir)


def test_a_multirun_is_one_parent_run_with_a_named_child_per_job(beta_sweep):
    parent, children = sweep_runs(beta_sweep.client)

    assert parent.info.status == "FINISHED"
    assert parent.info.run_name == f"sweep loss.beta={','.join(BETAS)}"
    assert parent.data.tags["prefopt.sweep_id"] == str(beta_sweep.dir)
    assert [c.info.run_name for c in children] == [f"dpo β={b} lr=5e-4" for b in BETAS]
    assert [c.data.tags["prefopt.sweep_job"] for c in children] == ["0", "1", "2", "3"]
    assert [c.data.params["loss/beta"] for c in children] == BETAS
    for child in children:
        assert child.info.experiment_id == parent.info.experiment_id
        assert child.data.tags["prefopt.sweep_id"] == str(beta_sweep.dir)


def test_four_jobs_at_once_on_one_sqlite_store_lose_nothing(beta_sweep):
    """Four worker processes launched together (whether the scheduler lets them overlap is
    its business, not a thing to assert): every job's run is whole, each with its own β."""
    parent, children = sweep_runs(beta_sweep.client)
    assert_nothing_lost(beta_sweep.client, children)
    assert [c.data.params["loss/beta"] for c in children] == BETAS
    assert len({c.info.run_id for c in children}) == len(BETAS)


def test_the_parent_run_gets_the_summary_table_and_plots(beta_sweep, tmp_path):
    client = beta_sweep.client
    parent, children = sweep_runs(client)
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id, "summary")}
    summary = {"summary/summary.csv", "summary/loss.beta.png", "summary/margins.png"}
    frontier = {"summary/frontier.png", "summary/frontier.csv"}  # a β sweep with KL and rewards
    assert artifacts == summary | frontier

    rows = read_summary(client, parent.info.run_id, tmp_path)
    assert [r["run_id"] for r in rows] == [c.info.run_id for c in children]
    for row, child in zip(rows, children):
        assert row["loss.beta"] == child.data.params["loss/beta"]
        assert row["status"] == "FINISHED"
        for metric in ("val/rewards/margins", "val/rewards/accuracies"):
            assert float(row[metric]) == pytest.approx(child.data.metrics[metric], abs=1e-4)
    for metric in ("eval/win_rate_vs_ref", "eval/kl_seq"):  # a column only when runs have it
        assert (metric in rows[0]) == (metric in children[0].data.metrics), metric

    for name in ("loss.beta.png", "margins.png"):
        png = (beta_sweep.dir / "summary" / name).read_bytes()
        assert png.startswith(b"\x89PNG") and len(png) > 5000, name
    printed = beta_sweep.proc.stdout
    assert "job  run_name" in printed and "val/rewards/accuracies" in printed
    for child in children:
        assert child.info.run_name in printed
    experiment = parent.info.experiment_id
    page = f"http://127.0.0.1:5000/#/experiments/{experiment}/runs/{parent.info.run_id}"
    assert f"{page}?workflowType=machine_learning" in printed
    assert f"mlflow ui --backend-store-uri {beta_sweep.uri}" in printed


def test_the_parent_run_says_what_the_sweep_found(beta_sweep):
    """What MLflow's UI shows first of the parent: its description is the summary table, and
    the best job by the objective (val/rewards/accuracies by default) is on it as best/..."""
    parent, children = sweep_runs(beta_sweep.client)
    note = parent.data.tags["mlflow.note.content"]
    assert note.startswith("**4 jobs, FINISHED.**")
    assert "| job | run_name | loss.beta | val/rewards/margins |" in note
    for child in children:
        assert f"| {child.data.tags['prefopt.sweep_job']} | {child.info.run_name} |" in note
    accuracy = "val/rewards/accuracies"
    # The first job with the highest accuracy: `max` keeps the first of equals, in job order.
    best = max(children, key=lambda c: c.data.metrics[accuracy])
    assert parent.data.tags["prefopt.best_run_id"] == best.info.run_id
    assert parent.data.params["best/objective"] == accuracy
    assert parent.data.params["best/loss/beta"] == best.data.params["loss/beta"]
    assert parent.data.metrics[f"best/{accuracy}"] == best.data.metrics[accuracy]
    assert parent.data.metrics["best/eval/kl_seq"] == best.data.metrics["eval/kl_seq"]
    assert "**Reward–KL frontier**" in note


def test_the_notebook_runs_against_the_sweep(beta_sweep, tmp_path, monkeypatch):
    import json

    import nbformat
    from nbclient import NotebookClient

    notebook = Path(__file__).resolve().parents[1] / "notebooks" / "compare_sweep.ipynb"
    # A kernel spec for this very interpreter, whatever kernels the machine has installed.
    spec_dir = tmp_path / "jupyter" / "kernels" / "prefopt-test"
    spec_dir.mkdir(parents=True)
    argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    spec = {"argv": argv, "display_name": "prefopt-test", "language": "python"}
    (spec_dir / "kernel.json").write_text(json.dumps(spec))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    monkeypatch.setenv("PREFOPT_TRACKING_URI", beta_sweep.uri)
    monkeypatch.setenv("PREFOPT_SWEEP_ID", str(beta_sweep.dir))

    nb = nbformat.read(notebook, as_version=4)
    NotebookClient(
        nb,
        timeout=300,
        kernel_name="prefopt-test",
        resources={"metadata": {"path": str(tmp_path)}},
    ).execute()

    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.outputs]
    text = "\n".join(
        o.get("text", "") + str(o.get("data", {}).get("text/plain", "")) for o in outputs
    )
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    parent, children = sweep_runs(beta_sweep.client)
    assert parent.info.run_id in text
    for child in children:
        assert child.info.run_name in text
    if "eval/kl_seq" in children[0].data.metrics:
        assert len(images) == 3  # margin curves, β against the final metrics, the trade-off
    else:
        assert len(images) == 2
        assert "no eval/ metrics in this sweep" in text


# --- failures ------------------------------------------------------------------------------


def test_a_failed_job_ends_the_parent_failed_and_shows_in_the_summary(
    tmp_path, toy_cache, prefopt_cache
):
    proc = run_sweep(tmp_path, ["loss.beta=0.1,-0.1"], toy_cache, prefopt_cache)
    assert proc.returncode != 0
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    parent, children = sweep_runs(client)

    assert parent.info.status == "FAILED"
    # β=-0.1 fails its config check before its run exists; the parent records it all the same.
    assert [c.info.run_name for c in children] == ["dpo β=0.1 lr=5e-4"]
    assert "loss.beta=-0.1" in parent.data.tags["prefopt.failed_job.1"]
    rows = read_summary(client, parent.info.run_id, tmp_path)
    assert [(r["job"], r["loss.beta"], r["status"]) for r in rows] == [
        ("0", "0.1", "FINISHED"),
        ("1", "-0.1", "FAILED"),
    ]
    assert "2 jobs, FAILED" in proc.stdout
    note = parent.data.tags["mlflow.note.content"]
    assert note.startswith("**2 jobs, FAILED.**") and "| 1 | (failed before" in note
    assert parent.data.params["best/job"] == "0"  # the best of the jobs that finished


# --- naming and swept keys (no training) ----------------------------------------------------


def test_swept_keys_come_from_the_command_line_and_the_sweeper_params():
    config = OmegaConf.create(
        {
            "hydra": {
                "sweeper": {"params": {"optim.lr": "1e-4,1e-3", "data.batch_size": "8,16"}},
                "overrides": {
                    "task": [
                        "loss=dpo,ipo",
                        "loss.beta=0.05,0.1",
                        "data.batch_size=8",  # the command line wins over the sweep config
                        "trainer.max_steps=10",
                        "hydra.launcher.n_jobs=2,4",
                    ]
                },
            }
        }
    )
    assert swept_overrides(config) == {
        "optim.lr": "optim.lr=1e-4,1e-3",
        "loss": "loss=dpo,ipo",
        "loss.beta": "loss.beta=0.05,0.1",
    }


def test_a_run_name_adds_every_swept_key_the_default_name_lacks(compose_config):
    cfg = compose_config("loss=dpo", "loss.label_smoothing=0.1", "optim.scheduler=cosine")
    job = SweepJob(
        sweep_id="/sweeps/a",
        job_num=3,
        parent_run_id="abc",
        swept_keys=("loss", "loss.beta", "optim.lr", "optim.scheduler", "loss.label_smoothing"),
        choices={"loss": "dpo"},
    )
    name = "dpo β=0.1 label_smoothing=0.1 lr=5e-4"  # what `default_run_name` gives
    swept_values = {key: OmegaConf.select(cfg, key) for key in job.swept_keys}
    assert job.run_name(name, swept_values) == f"{name} optim.scheduler=cosine"
    assert job.tags == {
        "prefopt.sweep_id": "/sweeps/a",
        "prefopt.sweep_job": "3",
        "mlflow.parentRunId": "abc",
    }
    assert job.params == {"loss": "dpo"}


def test_the_error_of_a_failed_job_is_read_from_hydra_s_job_return():
    """Hydra's public `return_value` re-raises a failed job's error, so `job_error` reads the
    private field behind it: this fails loudly when Hydra renames or moves that field."""
    from hydra.core.utils import JobReturn, JobStatus

    from prefopt.tracking.sweep import job_error

    error = ValueError("loss.beta=-1: must be > 0")
    failed = JobReturn(status=JobStatus.FAILED)
    failed.return_value = error  # Hydra's own setter, as its run_job does
    assert job_error(failed) is error
    with pytest.raises(ValueError) as raised:
        _ = failed.return_value  # why the public property cannot be used
    assert raised.value is error

    completed = JobReturn(status=JobStatus.COMPLETED)
    completed.return_value = 0.7
    assert job_error(completed) is None


def test_a_job_without_the_environment_finds_its_parent_by_sweep_id(tmp_path, monkeypatch):
    """A launcher that starts jobs in a fresh environment: the job asks the store instead."""
    from prefopt.tracking.sweep import ENV_VAR, SweepCallback, find_parent

    monkeypatch.delenv(ENV_VAR, raising=False)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"

    def sweep_config(sweep_dir: str):
        return OmegaConf.create(
            {
                "hydra": {
                    "runtime": {"cwd": str(tmp_path)},
                    "sweep": {"dir": sweep_dir},
                    "overrides": {"task": ["loss.beta=0.1,0.2", "trainer.max_steps=3"]},
                },
                "logger": {"tracking_uri": uri, "experiment_name": "prefopt"},
                "model": {"path": "elsewhere"},
                "data": {"source": "local"},
            }
        )

    config = sweep_config("multirun/a")
    callback = SweepCallback()
    callback.on_multirun_start(config)
    assert os.environ[ENV_VAR]  # what jobs launched from here inherit
    monkeypatch.delenv(ENV_VAR)

    found = find_parent(config.hydra, config.logger)
    assert found["run_id"] == callback.parent["run_id"]
    assert found["sweep_id"] == str(tmp_path / "multirun" / "a")
    assert found["swept_keys"] == ["loss.beta"]
    assert find_parent(sweep_config("multirun/b").hydra, config.logger) is None

    callback.on_multirun_end(config)  # a sweep without a single job did not succeed
    assert MlflowClient(uri).get_run(found["run_id"]).info.status == "FAILED"


# --- the ready sweeps of conf/sweep/ -------------------------------------------------------

READY_SWEEPS = sorted(p.stem for p in (Path(CONF_DIR) / "sweep").glob("*.yaml"))


@pytest.mark.parametrize("name", READY_SWEEPS)
def test_every_ready_sweep_is_one_command_with_valid_values(name, tmp_path):
    """`python -m prefopt.train sweep=<name>` is a multirun, and the first value of each swept
    key makes a config that passes the same checks as a real job."""
    from hydra import compose, initialize_config_dir
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.core.override_parser.types import IntervalSweep

    from prefopt.config.schema import register_configs
    from prefopt.train import check_config

    register_configs()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        config = compose("config", overrides=[f"sweep={name}"], return_hydra_config=True)
        assert config.hydra.mode.name == "MULTIRUN"
        swept = swept_overrides(config)
        assert swept, name
        first_values = []
        for key, line in swept.items():
            override = OverridesParser.create().parse_overrides([line])[0]
            value = override.value()
            first = value.start if isinstance(value, IntervalSweep) else None
            first = first if first is not None else next(override.sweep_string_iterator())
            first_values.append(f"{key}={first}")
        job = compose(
            "config", overrides=[f"sweep={name}", *first_values, f"output_dir={tmp_path}"]
        )
    check_config(job)


def test_the_losses_sweep_runs_every_registered_loss():
    """conf/sweep/losses.yaml lists the losses by name (Hydra's `glob(*)` needs a config
    loader the summary's parser does not have): every name of `LOSSES`, each once, but the
    on-policy ones (RLOO), which train only with loop=online."""
    from prefopt.losses import LOSSES

    params = OmegaConf.load(Path(CONF_DIR) / "sweep" / "losses.yaml").hydra.sweeper.params
    names = params.loss.split(",")
    offline = [name for name, cls in LOSSES.items() if not cls.on_policy]
    assert sorted(names) == sorted(offline), "add the new loss to conf/sweep/losses.yaml"
    assert len(names) == len(set(names))


# --- the reward–KL frontier: methods of conf/method/ over β ---------------------------------

METHODS = sorted(p.stem for p in (Path(CONF_DIR) / "method").glob("*.yaml"))
# What each method composes: (loop, loss, judge). A method is configuration only.
METHOD_PARTS = {
    "dpo_offline": ("offline", "dpo", "toy"),
    "dpo_online": ("online", "dpo", "toy"),
    "rloo_learned": ("online", "rloo", "learned_toy"),
    "rloo_true": ("online", "rloo", "toy"),
}


def test_the_frontier_sweeps_every_method_over_beta():
    params = OmegaConf.load(Path(CONF_DIR) / "sweep" / "frontier.yaml").hydra.sweeper.params
    assert sorted(params.method.split(",")) == METHODS == sorted(METHOD_PARTS)
    assert len(str(params["loss.beta"]).split(",")) >= 4


@pytest.mark.parametrize("method", METHODS)
def test_a_method_is_a_loop_a_loss_and_a_judge(method, tmp_path):
    """`method=<name>` composes its loop, loss and judge and passes a job's checks. The RLOO
    methods need `loss=rloo` and `judge=learned_toy`, which are built on other branches: until
    they are here, their method is skipped, not failed."""
    from hydra import compose, initialize_config_dir

    from prefopt.config.schema import register_configs
    from prefopt.train import check_config

    loop, loss, judge = METHOD_PARTS[method]
    for group, option in (("loss", loss), ("judge", judge)):
        if not (Path(CONF_DIR) / group / f"{option}.yaml").exists():
            pytest.skip(f"{group}={option} is not in this checkout yet")
    register_configs()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        config = compose("config", overrides=[f"method={method}", f"output_dir={tmp_path}"])
        plain = compose(
            "config",
            overrides=[f"loop={loop}", f"loss={loss}", f"judge={judge}", f"output_dir={tmp_path}"],
        )
    assert config == plain  # the method is exactly its three choices, nothing more
    check_config(config)


def test_a_misspelled_method_is_one_line_naming_the_methods():
    from prefopt.config.checks import check_overrides
    from prefopt.errors import PrefoptError

    with pytest.raises(PrefoptError, match="method=dpo_ofline: there is no such method") as error:
        check_overrides(["method=dpo_offline,dpo_ofline"], CONF_DIR)
    assert all(method in str(error.value) for method in METHODS)


@pytest.mark.slow  # four short jobs, two of them online: ~2 min on 2 cores
def test_the_frontier_sweep_of_the_dpo_methods(tmp_path, toy_cache, prefopt_cache):
    """`sweep=frontier`, limited to the two DPO methods and two β: every point is a finished
    child judged by the true reward, and the parent carries the frontier as a figure, a table
    and in its description."""
    args = ["sweep=frontier", "method=dpo_offline,dpo_online", "loss.beta=0.1,0.5"]
    proc = run_sweep(tmp_path, args, toy_cache, prefopt_cache)
    assert proc.returncode == 0, proc.stderr[-4000:]
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    parent, children = sweep_runs(client)
    assert parent.info.status == "FINISHED"
    assert [(c.data.params["method"], c.data.params["loss/beta"]) for c in children] == [
        ("dpo_offline", "0.1"), ("dpo_offline", "0.5"), ("dpo_online", "0.1"), ("dpo_online", "0.5"),
    ]  # fmt: skip
    for child in children:
        assert child.info.status == "FINISHED"
        for metric in ("eval/true/win_rate_vs_ref", "eval/true/reward_policy", "eval/kl_seq"):
            assert metric in child.data.metrics, (child.info.run_name, metric)
        online = child.data.params["method"] == "dpo_online"
        assert ("round/reward_true" in child.data.metrics) == online

    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id, "summary")}
    assert {"summary/frontier.png", "summary/frontier.csv"} <= artifacts
    with open(
        client.download_artifacts(parent.info.run_id, "summary/frontier.csv", str(tmp_path))
    ) as f:
        points = list(csv.DictReader(f))
    by_run = {c.info.run_name: c for c in children}
    assert [(p["method"], p["β"]) for p in points] == [
        ("dpo_offline", "0.1"), ("dpo_offline", "0.5"), ("dpo_online", "0.1"), ("dpo_online", "0.5"),
    ]  # fmt: skip
    for point in points:
        run = by_run[point["run"]]
        assert float(point["KL (sequence)"]) == pytest.approx(
            run.data.metrics["eval/kl_seq"], abs=5e-4
        )
        true = run.data.metrics["eval/true/reward_policy"]
        assert float(point["true reward"]) == pytest.approx(true, abs=5e-4)
    note = parent.data.tags["mlflow.note.content"]
    assert "**Reward–KL frontier**" in note and "| dpo_online | 0.5 |" in note
    assert parent.data.params["best/objective"] == "eval/true/win_rate_vs_ref"
