"""MLflow: one tracking URI for every run, a readable run name, the config as params and YAML.

The run is created as soon as the config is valid, so a failure while loading models or data
is recorded too: `finish_run` marks it FAILED whenever the run did not reach the end.

A tracking server is checked at start (`check_tracking_uri`: a few seconds, before anything
loads). One that goes away during training does not stop it: the logger's client
(`OfflineBuffer`) writes every later call to `<output_dir>/mlflow_offline.jsonl` and says once
how to upload them when the server is back (`python -m prefopt.sync <output_dir>`).
"""

from __future__ import annotations

import json
import logging
import os
import random
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from lightning.pytorch.loggers import MLFlowLogger
from lightning.pytorch.utilities.rank_zero import rank_zero_only
from mlflow.tracking import MlflowClient
from omegaconf import DictConfig, OmegaConf

from prefopt.config.schema import LoggerConfig
from prefopt.errors import PrefoptError

log = logging.getLogger("prefopt.tracking")


def resolve_tracking_uri(uri: str) -> str:
    """Make a relative sqlite path absolute, so every process of a sweep writes one database."""
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri.startswith(prefix + "/"):
        return prefix + str(Path(uri[len(prefix) :]).resolve())
    return uri


def format_number(value: float) -> str:
    """Compact numbers for run names: 0.0001 -> 1e-4, 0.1 -> 0.1, 2.5e-07 -> 2.5e-7."""
    if value == 0 or 1e-3 <= abs(value) < 1e4:
        return f"{value:g}"
    mantissa, exponent = f"{value:.3e}".split("e")
    mantissa = mantissa.rstrip("0").rstrip(".")
    return f"{mantissa}e{int(exponent)}"


def default_run_name(loss_description: str, lr: float) -> str:
    return f"{loss_description} lr={format_number(lr)}"


def ensure_experiment(tracking_uri: str, name: str, attempts: int = 6) -> str:
    """The id of experiment `name`, created if missing.

    Processes starting at the same moment (the jobs of a parallel sweep, a team on one server)
    race to create the experiment, and on a fresh SQLite file to create the tables: the loser
    sees an error, waits and finds the winner's experiment.
    """
    for attempt in range(attempts):
        try:
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


def check_tracking_uri(uri: str, timeout: float = 3.0) -> None:
    """Fail at start, within `timeout` seconds, when an http(s) tracking server does not answer."""
    if not uri.startswith(("http://", "https://")):
        return
    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout):
            pass
    except urllib.error.HTTPError:
        pass  # something answers (an auth proxy, an older server without /health): go on
    except (urllib.error.URLError, OSError) as error:
        reason = getattr(error, "reason", error)
        raise PrefoptError(
            f"logger.tracking_uri={uri}: no MLflow server answers ({reason}); start it "
            "(mlflow server --host 127.0.0.1 --port 5000), fix the address, or log locally "
            "with logger.tracking_uri=sqlite:///mlflow.db"
        ) from None
    # Fail fast later too: MLflow's default retries would stall training for minutes per call.
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")


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
    """Lightning's MLFlowLogger whose client turns into an `OfflineBuffer` once created."""

    def __init__(self, *args, offline_dir: str | Path | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self._offline_path = Path(offline_dir or ".") / OFFLINE_FILE
        self._buffer: OfflineBuffer | None = None

    @property
    def experiment(self):
        client = MLFlowLogger.experiment.fget(self)
        if not isinstance(client, MlflowClient):
            return client  # a rank other than 0 gets a dummy
        if self._buffer is None:
            self._buffer = OfflineBuffer(client, self._offline_path, self._tracking_uri)
        return self._buffer

    @property
    def offline(self) -> bool:
        return self._buffer is not None and self._buffer.offline


def start_run(
    cfg: LoggerConfig,
    run_name: str,
    extra_tags: dict[str, str] | None = None,
    run_id: str | None = None,
    offline_dir: str | Path | None = None,
) -> MLFlowLogger:
    """Create the run now (not at the first metric). `extra_tags`: a sweep job's grouping tags.
    `run_id`: continue that run (a resumed training) instead of creating one."""
    tracking_uri = resolve_tracking_uri(cfg.tracking_uri)
    if rank_zero_only.rank == 0:  # other DDP ranks get Lightning's no-op experiment
        ensure_experiment(tracking_uri, cfg.experiment_name)
        if run_id is not None:
            MlflowClient(tracking_uri=tracking_uri).update_run(run_id, status="RUNNING")
    logger = ResilientMLFlowLogger(
        experiment_name=cfg.experiment_name,
        run_name=run_name,
        tracking_uri=tracking_uri,
        tags={**cfg.tags, **(extra_tags or {})} or None,
        run_id=run_id,
        offline_dir=offline_dir,
    )
    _ = logger.run_id
    verb = "continues" if run_id else "started"
    log.info("MLflow run '%s' (%s) %s at %s", run_name, logger.run_id, verb, logger._tracking_uri)
    return logger


def log_config(logger: MLFlowLogger, cfg: DictConfig, resumed: bool = False) -> None:
    """The resolved config: flattened as params (comparable in the UI) and whole as YAML.

    A resumed run keeps its params (MLflow never changes one): only new keys are logged, and
    keys whose value changed are listed in a warning; the new config goes to
    `config_resumed.yaml`."""
    container = OmegaConf.to_container(cfg, resolve=True)
    yaml = OmegaConf.to_yaml(cfg, resolve=True)
    if not resumed:
        logger.log_hyperparams(container)
        logger.experiment.log_text(logger.run_id, yaml, "config.yaml")
        return
    from lightning.fabric.utilities.logger import _convert_params, _flatten_dict

    run = logger.experiment.get_run(logger.run_id)
    old = run.data.params if run is not None else {}
    new = {k: str(v)[:6000] for k, v in _flatten_dict(_convert_params(container), "/").items()}
    changed = sorted(k for k, v in new.items() if k in old and old[k] != v)
    changed = [k for k in changed if k not in ("output_dir", "resume", "ckpt_path")]
    if changed:
        log.warning("resumed with changed settings (params keep their first value): %s", changed)
    added = {k: v for k, v in new.items() if k not in old}
    if added:
        logger.log_hyperparams(added)
    logger.experiment.log_text(logger.run_id, yaml, "config_resumed.yaml")


def set_tags(logger: MLFlowLogger, tags: dict[str, str]) -> None:
    for key, value in tags.items():
        logger.experiment.set_tag(logger.run_id, key, str(value))


def finish_run(logger: MLFlowLogger, status: str) -> None:
    """End the run with FINISHED, FAILED or KILLED (overriding Lightning's own end-of-fit status).

    Never raises: an unreachable store must not hide the error that ended the run."""
    try:
        logger.experiment.set_terminated(logger.run_id, status)
    except Exception as error:
        log.warning("could not mark MLflow run %s %s: %s", logger.run_id, status, error)
    if getattr(logger, "offline", False):
        log.warning(
            "MLflow was unreachable during this run: upload what it missed with "
            "python -m prefopt.sync %s",
            logger._offline_path.parent,
        )
