"""Runs that share one SQLite `mlflow.db` and one cache folder, started at the same moment.

Every process is a real `python` started by the test, against a real SQLite store in tmp_path;
nothing of MLflow or of the file system is mocked.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from omegaconf import OmegaConf

from prefopt.tracking.store import ensure_experiment, sqlite_store_lock

REPO = Path(__file__).resolve().parents[2]
WORKER = Path(__file__).with_name("store_worker.py")


def child_env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO / "src")}


def test_a_fresh_sqlite_store_is_opened_under_the_lock_beside_it(tmp_path):
    """While another process holds the lock (here: this thread, through its own open file,
    which `flock` treats as another holder), opening the store waits and creates no table."""
    database = tmp_path / "mlflow.db"
    store = f"sqlite:///{database}"
    found = []
    with sqlite_store_lock(store):
        assert (tmp_path / ".mlflow.db.lock").is_file()
        opener = threading.Thread(target=lambda: found.append(ensure_experiment(store, "e")))
        opener.start()
        opener.join(timeout=1.0)
        assert opener.is_alive() and not found
        assert not database.exists()
    opener.join(timeout=120)
    assert found == [MlflowClient(tracking_uri=store).get_experiment_by_name("e").experiment_id]
    with sqlite_store_lock("http://127.0.0.1:5000"), sqlite_store_lock("sqlite://"):
        pass  # a server or an in-memory store takes no lock file


def release_together(procs: list[subprocess.Popen], folder: Path, timeout: float = 180) -> None:
    """Wait until every process has imported what it needs, then let them all go at once."""
    deadline = time.monotonic() + timeout
    while len(list(folder.glob("ready-*"))) < len(procs):
        for proc in procs:
            assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.monotonic() < deadline, "the workers did not start in time"
        time.sleep(0.05)
    (folder / "go").touch()


@pytest.mark.slow  # four interpreters importing Lightning, and a fresh store's migration
def test_processes_opening_one_fresh_sqlite_store_at_once_each_finish_their_run(tmp_path):
    """Four runs created at the same instant on a database that does not exist yet: MLflow
    creates and migrates its tables on first use, which two processes at once leave broken
    for good ("table _alembic_tmp_experiments already exists") unless one waits."""
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    names = ["a", "b", "c", "d"]
    procs = [
        subprocess.Popen(
            [sys.executable, str(WORKER), store, str(tmp_path), name],
            env=child_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name in names
    ]
    release_together(procs, tmp_path)
    run_ids = []
    for proc in procs:
        out, err = proc.communicate(timeout=180)
        assert proc.returncode == 0, err[-3000:]
        assert "database is locked" not in err
        run_ids.append(out.strip().splitlines()[-1])

    client = MlflowClient(tracking_uri=store)
    runs = client.search_runs([client.get_experiment_by_name("prefopt").experiment_id])
    assert sorted(r.info.run_id for r in runs) == sorted(run_ids)
    assert sorted(r.info.run_name for r in runs) == names
    for run in runs:
        assert run.info.status == "FINISHED"
        assert run.data.params["worker"] == run.info.run_name
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "train/loss")]
        assert sorted(steps) == list(range(30))


TWO_RUN_ARGS = [
    "toy.n_train_prompts=400",  # tests/conftest.py's SMALL_TOY
    "toy.n_val_prompts=64",
    "toy.n_test_prompts=32",
    "toy.sft_steps=250",
    "trainer.max_steps=4",
    "trainer.val_check_interval=2",
    "trainer.log_every_n_steps=1",
    "trainer.limit_val_batches=2",
    "trainer.enable_progress_bar=false",
    "eval.num_prompts=4",
    "eval.max_new_tokens=8",
    "export=false",
]


def cache_entries(folder: Path) -> list[str]:
    """What a cache folder holds, lock files aside (they stay, empty, by design)."""
    return sorted(p.name for p in folder.iterdir() if not p.name.endswith(".lock"))


@pytest.mark.slow  # a fresh toy world, then two trainings side by side: minutes on 2 cores
def test_two_trainings_started_together_share_one_cache_and_one_store(tmp_path):
    """Two `python -m prefopt.train` with the same seed, started at once against one empty
    cache folder ($PREFOPT_CACHE: toy world, prepared data, reference log-probs) and one
    `sqlite:///mlflow.db` that does not exist yet: both finish, each in its own MLflow run,
    with the same numbers, and every cache holds one copy."""
    cache = tmp_path / "cache"
    env = {**child_env(), "PREFOPT_CACHE": str(cache)}
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "prefopt.train", *TWO_RUN_ARGS, f"output_dir={tmp_path / n}"],
            cwd=tmp_path,  # the default logger.tracking_uri=sqlite:///mlflow.db lands here
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for n in ("a", "b")
    ]
    for proc in procs:
        _, err = proc.communicate(timeout=1200)
        assert proc.returncode == 0, err[-4000:]
        assert "database is locked" not in err

    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=store)
    runs = client.search_runs([client.get_experiment_by_name("prefopt").experiment_id])
    assert [r.info.status for r in runs] == ["FINISHED", "FINISHED"]
    output_dirs = {  # from each run's config.yaml artifact: the whole resolved config
        OmegaConf.load(client.download_artifacts(r.info.run_id, "config.yaml", str(tmp_path)))[
            "output_dir"
        ]
        for r in runs
    }
    assert output_dirs == {str(tmp_path / "a"), str(tmp_path / "b")}
    # Timings and the machine's load (system metrics, sampled only in runs that last long
    # enough) differ between any two runs; everything the training computes must not.
    first, second = (
        {k: v for k, v in r.data.metrics.items() if not k.startswith(("perf/", "system/"))}
        for r in runs
    )
    assert "val/rewards/accuracies" in first and "train/loss" in first
    assert first.keys() == second.keys()
    for key, value in first.items():
        assert math.isclose(second[key], value, rel_tol=1e-6, abs_tol=1e-9), key

    assert len(cache_entries(cache / "toy")) == 1  # no second world, no staging folder left
    assert len(cache_entries(cache / "data" / "prepared")) == 1
    assert len(cache_entries(cache / "reference")) == 1
