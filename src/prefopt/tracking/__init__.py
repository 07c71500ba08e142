"""Tracking: the only place that talks to MLflow. `store` resolves and checks the tracking URI;
`runs` gives a run its name, config, tags, tables and end status (`tracked_run` is its whole
life); `offline` keeps a run logging when its server goes away and `sync` uploads what it
missed; `sweep` groups the jobs of a --multirun under one parent run, which `report`
summarises; `params` picks the key hyperparameters a run carries as params, and `datasets`
records what it trained on. Everything else logs through Lightning's logger or the functions
named here."""

from prefopt.tracking.datasets import log_datasets, run_datasets
from prefopt.tracking.params import key_params
from prefopt.tracking.runs import (
    default_run_name,
    finish_run,
    log_config,
    log_summary,
    log_table,
    set_tags,
    start_run,
    tracked_run,
)
from prefopt.tracking.store import check_tracking_uri, resolve_tracking_uri
from prefopt.tracking.sweep import SweepJob, sweep_job

__all__ = [
    "SweepJob",
    "check_tracking_uri",
    "default_run_name",
    "finish_run",
    "key_params",
    "log_datasets",
    "log_config",
    "log_summary",
    "log_table",
    "resolve_tracking_uri",
    "run_datasets",
    "set_tags",
    "start_run",
    "sweep_job",
    "tracked_run",
]
