"""The run's logger, and what it does when the tracking server goes away during training.

`ResilientMLFlowLogger` is Lightning's MLFlowLogger with its resolved `tracking_uri` public and
its client wrapped in an `OfflineBuffer`: once a call finds the server unreachable, that call
and every later write go to `<output_dir>/mlflow_offline.jsonl` instead, training goes on, and
one warning says how to upload them when the server is back (`python -m prefopt.sync`).
"""

from __future__ import annotations

import errno
import json
import logging
import os
from pathlib import Path
from typing import Any

from lightning.pytorch.loggers import MLFlowLogger
from mlflow.tracking import MlflowClient

log = logging.getLogger("prefopt.tracking")

OFFLINE_FILE = "mlflow_offline.jsonl"
_WRITES = {
    "log_batch",
    "log_metric",
    "log_param",
    "set_tag",
    "set_terminated",
    "log_text",
    "log_dict",
    "log_table",
    "update_run",
}


class OfflineBuffer:
    """Wraps an MlflowClient: on the first failing call the tracking store counts as gone, and
    that call and every later write go to a local JSON-lines file instead (reads return None).
    `prefopt.sync` replays the file into the store."""

    def __init__(self, client: MlflowClient, path: Path, tracking_uri: str):
        self._client = client
        self.path = path
        self.tracking_uri = tracking_uri
        self.offline = False

    def __getattr__(self, name: str):
        method = getattr(self._client, name)
        if not callable(method):
            return method

        def call(*args, **kwargs):
            if not self.offline:
                try:
                    return method(*args, **kwargs)
                except Exception as error:
                    if not unreachable(error):
                        raise  # a real error (a changed param, a bad name): not ours to hide
                    self._go_offline(error)
            if name in _WRITES:
                self._record(name, args, kwargs)
            return None

        return call

    def _go_offline(self, error: Exception) -> None:
        self.offline = True
        reason = " ".join(str(error).split())[:200]
        log.warning(
            "MLflow at %s is unreachable (%s). Training goes on; metrics, params and tags are "
            "written to %s. When the server is back, upload them with: python -m prefopt.sync %s",
            self.tracking_uri,
            reason,
            self.path,
            self.path.parent,
        )

    def _record(self, name: str, args: tuple, kwargs: dict) -> None:
        entry = {
            "method": name,
            "args": [_plain(a) for a in args],
            "kwargs": {k: _plain(v) for k, v in kwargs.items()},
        }
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a") as handle:
            if handle.tell() == 0:
                handle.write(json.dumps({"tracking_uri": self.tracking_uri}) + "\n")
            handle.write(json.dumps(entry, default=repr) + "\n")
            # Each buffered call is on disk before training goes on: a kill loses none of them
            # and cuts at most the line being written (`prefopt.sync` skips such a last line).
            handle.flush()
            os.fsync(handle.fileno())


_LOCAL_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM}
_UNREACHABLE_SIGNS = (
    "API request to",  # how MLflow's REST client reports connection errors and 5xx retries
    "Max retries exceeded",
    "Connection refused",
    "Connection aborted",
    "timed out",
    "Name or service not known",
)


def unreachable(error: Exception) -> bool:
    """Whether `error` says the tracking store cannot be reached (not that a call was wrong)."""
    if isinstance(error, OSError) and error.errno in _LOCAL_ERRNOS:
        return False  # a full or read-only local disk: buffering would not help
    if isinstance(error, (OSError, TimeoutError)):
        return True
    if type(error).__module__.startswith(("requests", "urllib3")):
        return True
    return any(sign in str(error) for sign in _UNREACHABLE_SIGNS)


def _plain(value: Any) -> Any:
    """MLflow entities (Metric, Param, RunTag) and tables as JSON-able values."""
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if hasattr(value, "to_dict") and hasattr(value, "columns"):  # a pandas DataFrame
        return value.to_dict(orient="list")
    if hasattr(value, "key") and hasattr(value, "value"):
        return {
            k: getattr(value, k) for k in ("key", "value", "timestamp", "step") if hasattr(value, k)
        }
    return value


class ResilientMLFlowLogger(MLFlowLogger):
    """Lightning's MLFlowLogger whose client turns into an `OfflineBuffer` once created.

    `tracking_uri`: the store this run writes to (Lightning keeps its own copy private).
    `offline_path`: where calls go while that store is unreachable."""

    def __init__(self, *args, tracking_uri: str, offline_dir: str | Path | None = None, **kwargs):
        super().__init__(*args, tracking_uri=tracking_uri, **kwargs)
        self.tracking_uri = tracking_uri
        self.offline_path = Path(offline_dir or ".") / OFFLINE_FILE
        self._buffer: OfflineBuffer | None = None

    @property
    def experiment(self):
        client = MLFlowLogger.experiment.fget(self)
        if not isinstance(client, MlflowClient):
            return client  # a rank other than 0 gets a dummy
        if self._buffer is None:
            self._buffer = OfflineBuffer(client, self.offline_path, self.tracking_uri)
        return self._buffer

    @property
    def offline(self) -> bool:
        return self._buffer is not None and self._buffer.offline
