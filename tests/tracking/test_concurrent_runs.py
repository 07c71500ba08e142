"""Runs that share one SQLite `mlflow.db` and one cache folder, started at the same moment.

Every process is a real `python` started by the test, against a real SQLite store in tmp_path;
nothing of MLflow or of the file system is mocked.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

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
