"""The offline buffer's file survives a kill: every buffered call is on disk when it returns,
a last line cut short by a kill is skipped by `prefopt.sync`, and a local disk error is never
taken for an unreachable server."""

from __future__ import annotations

import errno
import json

import pytest
from mlflow.tracking import MlflowClient

from prefopt.errors import PrefoptError
from prefopt.tracking.offline import OFFLINE_FILE, OfflineBuffer, unreachable
from prefopt.tracking.sync import sync


def buffered_run(tmp_path):
    """A real run in a SQLite store, and a buffer that already counts the store as gone."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    run_id = client.create_run(client.create_experiment("buffer")).info.run_id
    buffer = OfflineBuffer(client, tmp_path / OFFLINE_FILE, uri)
    buffer.offline = True
    return client, run_id, buffer


def test_a_last_line_cut_by_a_kill_is_skipped_and_the_rest_uploaded(tmp_path, caplog):
    client, run_id, buffer = buffered_run(tmp_path)
    for step in range(3):
        buffer.log_metric(run_id, "loss", 1.0 / (step + 1), step=step)
    path = tmp_path / OFFLINE_FILE
    whole = path.read_text()
    path.write_text(whole + whole.splitlines()[-1][:17])  # a kill while writing a 4th line
    assert sync(tmp_path) == 3
    history = client.get_metric_history(run_id, "loss")
    assert [(m.step, m.value) for m in history] == [(0, 1.0), (1, 0.5), (2, 1.0 / 3)]
    assert any("cut short" in record.getMessage() for record in caplog.records)


def test_a_damaged_line_before_the_last_is_one_line_naming_it(tmp_path):
    _, run_id, buffer = buffered_run(tmp_path)
    buffer.log_metric(run_id, "loss", 1.0, step=0)
    buffer.log_metric(run_id, "loss", 0.5, step=1)
    path = tmp_path / OFFLINE_FILE
    lines = path.read_text().splitlines()
    lines[1] = lines[1][:10]
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(PrefoptError, match=rf"{OFFLINE_FILE}: line 2 is not JSON"):
        sync(path)
    assert path.exists()  # nothing renamed: the file is still there to mend
    json.loads(lines[0])  # the header is whole


def test_a_full_or_read_only_local_disk_is_not_an_unreachable_server():
    assert not unreachable(OSError(errno.ENOSPC, "No space left on device"))
    assert not unreachable(OSError(errno.EROFS, "Read-only file system"))
    assert unreachable(ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused"))
    assert unreachable(TimeoutError("timed out"))
