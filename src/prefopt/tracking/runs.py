"""One training run in MLflow: its name, key params and config, tags, system metrics, status.

`tracked_run` is the whole life of a run: created as soon as the config is valid (so a failure
while loading models or data is recorded too), the key hyperparameters logged as params
(`params.key_params`) and the whole config as `config.yaml`, system metrics sampled while it
lasts (`logger.log_system_metrics`), then the block runs, and the run ends FINISHED, KILLED
(Ctrl-C, SIGTERM turned into KeyboardInterrupt, SystemExit) or FAILED (any other exception).
Code outside `prefopt.tracking` logs through Lightning's logger or through `set_tags`,
`log_table` and `log_datasets` here, never through MLflow's client.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from lightning.pytorch.loggers import Logger, MLFlowLogger
from lightning.pytorch.utilities.rank_zero import rank_zero_only
from mlflow.tracking import MlflowClient
from omegaconf import DictConfig, OmegaConf

from prefopt.config.schema import LoggerConfig
from prefopt.tracking.offline import ResilientMLFlowLogger
from prefopt.tracking.params import key_params
from prefopt.tracking.store import ensure_experiment, resolve_tracking_uri
from prefopt.tracking.tags import TAG_RESUMED_FROM
from prefopt.tracking.ui import how_to_open

log = logging.getLogger("prefopt.tracking")

PARAM_VALUE_LIMIT = 250
"""Characters of a param's value that Lightning's `MLFlowLogger.log_hyperparams` keeps."""


def format_number(value: float) -> str:
    """Compact numbers for run names: 0.0001 -> 1e-4, 0.1 -> 0.1, 2.5e-07 -> 2.5e-7."""
    if value == 0 or 1e-3 <= abs(value) < 1e4:
        return f"{value:g}"
    mantissa, exponent = f"{value:.3e}".split("e")
    mantissa = mantissa.rstrip("0").rstrip(".")
    return f"{mantissa}e{int(exponent)}"


def default_run_name(loss_description: str, lr: float) -> str:
    return f"{loss_description} lr={format_number(lr)}"


@contextlib.contextmanager
def tracked_run(
    logger_cfg: LoggerConfig,
    run_name: str,
    config: DictConfig,
    *,
    tags: dict[str, str] | None = None,
    params: dict[str, str] | None = None,
    run_id: str | None = None,
    resumed_from: str | Path | None = None,
    offline_dir: str | Path | None = None,
) -> Iterator[ResilientMLFlowLogger]:
    """The run, from creation to its end status, around the block; yields its logger.

    `config`: its key hyperparameters logged as params (`key_params`), the whole as YAML.
    `tags`: set at creation (a sweep job's grouping). `params`: logged beside the key ones (a
    sweep job's swept keys, `SweepJob.params_of`). `run_id`: continue that run (a resumed
    training); `resumed_from`: the checkpoint it resumes, as a tag. `offline_dir`: where calls
    go while the tracking server is unreachable.
    """
    logger = start_run(logger_cfg, run_name, tags, run_id=run_id, offline_dir=offline_dir)
    status = "FAILED"
    monitor = None
    try:
        log_config(logger, config, {**key_params(config), **(params or {})}, run_id is not None)
        if resumed_from is not None:
            set_tags(logger, {TAG_RESUMED_FROM: Path(resumed_from).resolve()})
        if getattr(logger_cfg, "log_system_metrics", False):
            monitor = start_system_metrics(logger, resumed=run_id is not None)
        yield logger
        status = "FINISHED"
    except (KeyboardInterrupt, SystemExit):
        status = "KILLED"
        raise
    finally:
        if monitor is not None:
            monitor.finish()  # its last sample lands while the run is still RUNNING
        finish_run(logger, status)


def start_run(
    cfg: LoggerConfig,
    run_name: str,
    extra_tags: dict[str, str] | None = None,
    run_id: str | None = None,
    offline_dir: str | Path | None = None,
) -> ResilientMLFlowLogger:
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
    log.info("MLflow run '%s' (%s) %s at %s", run_name, logger.run_id, verb, logger.tracking_uri)
    return logger


def log_config(
    logger: MLFlowLogger, cfg: DictConfig, params: Mapping[str, str], resumed: bool = False
) -> None:
    """`params` (the key hyperparameters) as the run's params, the resolved config as YAML.

    A resumed run keeps its params (MLflow never changes one): only new ones are logged; the
    settings whose value changed since the run's `config.yaml` are listed in a warning, and the
    new config goes to `config_resumed.yaml`."""
    yaml = OmegaConf.to_yaml(cfg, resolve=True)
    if not resumed:
        logger.log_hyperparams(dict(params))
        logger.experiment.log_text(logger.run_id, yaml, "config.yaml")
        return
    run = logger.experiment.get_run(logger.run_id)
    old = run.data.params if run is not None else {}
    first = _first_config(logger)
    new = flatten_params(OmegaConf.to_container(cfg, resolve=True, enum_to_str=True))
    if first is None:  # no config.yaml to compare with: compare the params
        first, new = old, dict(params)
    changed = sorted(k for k, v in new.items() if k in first and str(first[k]) != str(v))
    changed = [k for k in changed if k not in ("output_dir", "resume", "ckpt_path")]
    if changed:
        log.warning("resumed with changed settings (params keep their first value): %s", changed)
    added = {k: v for k, v in params.items() if k not in old}
    if added:
        logger.log_hyperparams(added)
    logger.experiment.log_text(logger.run_id, yaml, "config_resumed.yaml")


def _first_config(logger: MLFlowLogger) -> dict[str, Any] | None:
    """The run's first `config.yaml`, flattened; None when it cannot be read."""
    try:
        with tempfile.TemporaryDirectory() as folder, _quiet_artifact_transfers():
            path = logger.experiment.download_artifacts(logger.run_id, "config.yaml", folder)
            if path is None:  # the store is unreachable
                return None
            config = OmegaConf.create(Path(path).read_text())
            return flatten_params(OmegaConf.to_container(config, resolve=False))
    except Exception as error:
        log.debug("could not read the run's config.yaml: %s", error)
        return None


def flatten_params(params: Mapping[Any, Any], parent_key: str = "") -> dict[str, Any]:
    """A nested config as `MLFlowLogger.log_hyperparams(params)` would flatten it, before its
    values become strings: nested keys joined with "/", a list of mappings (an empty list too)
    flattened by index, any other value kept whole. Compares a resumed run's config."""
    flat: dict[str, Any] = {}
    for key, value in params.items():
        name = f"{parent_key}/{key}" if parent_key else str(key)
        if isinstance(value, Mapping):
            flat.update(flatten_params(value, name))
        elif isinstance(value, list) and all(isinstance(item, Mapping) for item in value):
            for index, item in enumerate(value):
                flat.update(flatten_params(item, f"{name}/{index}"))
        else:
            flat[name] = value
    return flat


def start_system_metrics(logger: ResilientMLFlowLogger, resumed: bool = False) -> Any | None:
    """Sample CPU, memory, disk, network (and GPU, with pynvml) into the run's `system/*`
    metrics until `finish()` is called; None without psutil or on a rank other than 0.

    MLflow's own switch (`mlflow.start_run(log_system_metrics=True)`) starts this monitor for a
    run of its fluent API; Lightning's logger creates runs through the client, so the monitor is
    started here with the run and store named. The one use of that class: a test fails when
    MLflow moves or changes it."""
    if rank_zero_only.rank != 0 or logger.offline:
        return None
    if importlib.util.find_spec("psutil") is None:
        log.info("no system metrics: psutil is not installed (pip install psutil)")
        return None
    from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

    # MLflow announces starting, stopping and a missing GPU library at INFO: noise in a run's log.
    logging.getLogger("mlflow.system_metrics").setLevel(logging.WARNING)
    monitor = SystemMetricsMonitor(
        logger.run_id, resume_logging=resumed, tracking_uri=logger.tracking_uri
    )
    monitor.start()
    return monitor


def set_tags(logger: Logger | None, tags: Mapping[str, Any]) -> None:
    """Tag the logger's MLflow run (values as strings); nothing for another kind of logger."""
    if not isinstance(logger, MLFlowLogger):
        return
    for key, value in tags.items():
        logger.experiment.set_tag(logger.run_id, key, str(value))


def log_table(logger: Logger | None, table: Mapping[str, list], artifact_file: str) -> None:
    """Append `table` (column -> values) to the run's table artifact `artifact_file`, which the
    MLflow UI shows in its evaluation view; nothing for another kind of logger."""
    if not isinstance(logger, MLFlowLogger):
        return
    with _quiet_artifact_transfers():  # appending re-downloads the table: no progress bar
        logger.experiment.log_table(logger.run_id, data=dict(table), artifact_file=artifact_file)


@contextlib.contextmanager
def _quiet_artifact_transfers():
    key = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"
    previous = os.environ.get(key)
    os.environ[key] = "false"
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = previous


def log_summary(metrics: Mapping[str, float], logger: ResilientMLFlowLogger) -> None:
    """The run's last validation and evaluation figures, and how to open it in MLflow's UI."""
    shown = {k: v for k, v in sorted(metrics.items()) if k.startswith(("val/", "eval/"))}
    lines = [f"  {k:<28} {v:.4f}" for k, v in shown.items()]
    summary = logging.getLogger("prefopt")  # the run's own voice, as the entry point's log
    summary.info("final validation metrics:\n%s", "\n".join(lines) or "  (none)")
    try:  # where to look; an unreachable store must not cost the run its end
        where = how_to_open(logger.tracking_uri, logger.experiment_id, logger.run_id)
    except Exception:
        where = f"open with: mlflow ui --backend-store-uri {logger.tracking_uri}"
    summary.info("MLflow run %s\n%s", logger.run_id, where)


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
            logger.offline_path.parent,
        )
