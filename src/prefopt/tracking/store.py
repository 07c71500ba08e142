"""The tracking store: one URI for every process, checked at start, and its experiments.

A relative sqlite path is made absolute (`resolve_tracking_uri`) so that every job of a sweep,
whatever its working directory, writes one database. An http(s) server is asked for its health
before anything loads (`check_tracking_uri`, a config check: `prefopt.config.tracking_server`),
so a wrong address fails in seconds. Runs that
share one SQLite file open it one at a time the first time (`sqlite_store_lock`), so that its
tables are created once; later writes wait for each other through MLflow's busy timeout.
"""

from __future__ import annotations

import contextlib
import logging
import random
import time
from pathlib import Path

from mlflow.tracking import MlflowClient

from prefopt.config.tracking_server import check_tracking_uri  # noqa: F401 (re-exported)
from prefopt.files import file_lock

log = logging.getLogger("prefopt.tracking")


def resolve_tracking_uri(uri: str) -> str:
    """Make a relative sqlite path absolute, so every process of a sweep writes one database."""
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri.startswith(prefix + "/"):
        return prefix + str(Path(uri[len(prefix) :]).resolve())
    return uri


def ensure_experiment(tracking_uri: str, name: str, attempts: int = 6) -> str:
    """The id of experiment `name`, created if missing.

    Processes starting at the same moment (the jobs of a parallel sweep, two runs sharing one
    `mlflow.db`, a team on one server) race to create the experiment, and on a fresh SQLite
    file to create its tables. On SQLite the race is settled by a file lock (`sqlite_store_lock`);
    on a server, the loser sees an error, waits and finds the winner's experiment.
    """
    for attempt in range(attempts):
        try:
            with sqlite_store_lock(tracking_uri):
                client = MlflowClient(tracking_uri=tracking_uri)
                experiment = client.get_experiment_by_name(name)
                if experiment is not None:
                    return experiment.experiment_id
                return client.create_experiment(name)
        except Exception as error:  # lock, integrity and migration errors differ by store
            if attempt == attempts - 1:
                raise
            delay = 0.2 * 2**attempt * (1 + random.random())
            log.debug("creating experiment %r failed (%s); retrying in %.1fs", name, error, delay)
            time.sleep(delay)
    raise AssertionError("unreachable")


def sqlite_database(tracking_uri: str) -> Path | None:
    """The database file of a `sqlite:///` tracking URI; None for any other store."""
    prefix = "sqlite:///"
    if not tracking_uri.startswith(prefix):
        return None
    path = tracking_uri[len(prefix) :].partition("?")[0]
    return Path(path) if path and path != ":memory:" else None


@contextlib.contextmanager
def sqlite_store_lock(tracking_uri: str):
    """Held while this process opens a SQLite tracking store for the first time.

    MLflow creates and migrates a fresh database's tables without a lock of its own; two
    processes doing it at once leave a half-migrated file that every later run fails on
    ("table _alembic_tmp_experiments already exists"). The lock file sits beside the database
    (`.mlflow.db.lock`), on the same file system as the processes that share it. Nothing is
    held for a server: it migrates once, at its own start.
    """
    database = sqlite_database(tracking_uri)
    if database is None:
        yield
        return
    with file_lock(database.with_name(f".{database.name}.lock")):
        yield
