"""MLflow: one tracking URI for every run, a readable run name, the config as params and YAML.

The run is created as soon as the config is valid, so a failure while loading models or data
is recorded too: `finish_run` marks it FAILED whenever the run did not reach the end.
"""

from __future__ import annotations

import logging
from pathlib import Path

from lightning.pytorch.loggers import MLFlowLogger
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


def start_run(cfg: LoggerConfig, run_name: str) -> MLFlowLogger:
    logger = MLFlowLogger(
        experiment_name=cfg.experiment_name,
        run_name=run_name,
        tracking_uri=resolve_tracking_uri(cfg.tracking_uri),
        tags=dict(cfg.tags) or None,
    )
    _ = logger.run_id  # creates the run now, not at the first metric
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
