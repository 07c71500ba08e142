"""MLflow: one tracking URI for every run, a readable run name, the config as params and YAML.

The run is created as soon as the config is valid, so a failure while loading models or data
is recorded too: `finish_run` marks it FAILED whenever the run did not reach the end.
"""

from __future__ import annotations

import logging
import random
import time
from pathlib import Path

from lightning.pytorch.loggers import MLFlowLogger
from lightning.pytorch.utilities.rank_zero import rank_zero_only
from mlflow.tracking import MlflowClient
from omegaconf import DictConfig, OmegaConf

from prefopt.config import LoggerConfig

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


def start_run(
    cfg: LoggerConfig, run_name: str, extra_tags: dict[str, str] | None = None
) -> MLFlowLogger:
    """Create the run now (not at the first metric). `extra_tags`: a sweep job's grouping tags."""
    tracking_uri = resolve_tracking_uri(cfg.tracking_uri)
    if rank_zero_only.rank == 0:  # other DDP ranks get Lightning's no-op experiment
        ensure_experiment(tracking_uri, cfg.experiment_name)
    logger = MLFlowLogger(
        experiment_name=cfg.experiment_name,
        run_name=run_name,
        tracking_uri=tracking_uri,
        tags={**cfg.tags, **(extra_tags or {})} or None,
    )
    _ = logger.run_id
    log.info("MLflow run '%s' (%s) at %s", run_name, logger.run_id, logger._tracking_uri)
    return logger


def log_config(logger: MLFlowLogger, cfg: DictConfig) -> None:
    """The resolved config: flattened as params (comparable in the UI) and whole as YAML."""
    container = OmegaConf.to_container(cfg, resolve=True)
    logger.log_hyperparams(container)
    logger.experiment.log_text(logger.run_id, OmegaConf.to_yaml(cfg, resolve=True), "config.yaml")


def set_tags(logger: MLFlowLogger, tags: dict[str, str]) -> None:
    for key, value in tags.items():
        logger.experiment.set_tag(logger.run_id, key, str(value))


def finish_run(logger: MLFlowLogger, status: str) -> None:
    """End the run with FINISHED, FAILED or KILLED (overriding Lightning's own end-of-fit status)."""
    logger.experiment.set_terminated(logger.run_id, status)
