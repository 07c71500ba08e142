"""Sweeps in MLflow: one parent run per `--multirun`, each job a child run, a summary at the end.

`SweepCallback` (under `hydra.callbacks` in conf/config.yaml) runs in the process that launches
the sweep:

- `on_multirun_start` creates the parent run, tagged with the sweep id (the sweep's absolute
  output directory) and the swept keys, and publishes it in the environment variable
  PREFOPT_SWEEP, which every job inherits (in-process jobs and launcher worker processes);
- `on_job_end` (wherever the job runs) tags the parent when a job failed, also one that failed
  before its own run existed;
- `on_multirun_end` writes the summary (`prefopt.tracking.report`: the parent's description,
  its best job by the config's `objective`, the frontier of a β sweep) and ends the parent
  FINISHED, or FAILED when a job failed. Hydra skips `on_multirun_end` once a job raised, so an exit
  hook does the same then.

A job (`sweep_job(cfg.logger)`, called by `train`) finds its parent in PREFOPT_SWEEP or, where
a launcher starts jobs in a fresh environment, by searching its experiment for the parent run
tagged with its sweep id. Outside `--multirun` there is no sweep job and nothing here runs.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.utils import JobReturn, JobStatus
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from mlflow.tracking import MlflowClient
from omegaconf import DictConfig, ListConfig, OmegaConf

from prefopt.tracking.params import key_params, param_name
from prefopt.tracking.runs import format_number
from prefopt.tracking.store import ensure_experiment, resolve_tracking_uri
from prefopt.tracking.tags import (
    PARENT_TAG,
    TAG_FAILED_JOB,
    TAG_JOB,
    TAG_ROLE,
    TAG_SWEEP_ID,
    TAG_SWEPT_KEYS,
)

log = logging.getLogger("prefopt.sweep")

ENV_VAR = "PREFOPT_SWEEP"

# Keys the default run name shows already: the loss with its β, and the learning rate.
_NAMED_KEYS = {"loss", "loss.beta", "optim.lr", "model.lr"}


def sweep_id(hydra_cfg: DictConfig) -> str:
    """The sweep's output directory, absolute: unique per sweep and the same in every job."""
    return os.path.abspath(os.path.join(hydra_cfg.runtime.cwd, hydra_cfg.sweep.dir))


def swept_overrides(config: DictConfig) -> dict[str, str]:
    """{key: override as written} for every key taking several values in this sweep.

    Sweeps come from `hydra.sweeper.params` (the sweep configs in conf/sweep/) and from the
    command line, which wins for a key given in both, as in Hydra's sweepers.
    """
    params = OmegaConf.select(config, "hydra.sweeper.params") or {}
    lines = [f"{key}={value}" for key, value in params.items()]
    lines += list(config.hydra.overrides.task)
    swept: dict[str, str | None] = {}
    for override in OverridesParser.create().parse_overrides(lines):
        if not override.is_hydra_override():
            swept[override.key_or_group] = (
                override.input_line if override.is_sweep_override() else None
            )
    return {key: line for key, line in swept.items() if line is not None}


@dataclass(frozen=True)
class SweepJob:
    """One job of a sweep, as its training run sees it."""

    sweep_id: str
    job_num: int
    parent_run_id: str | None
    swept_keys: tuple[str, ...]
    choices: dict[str, str]
    """Hydra's config-group choices of this job, e.g. {"loss": "ipo"}."""
    overrides: tuple[str, ...] = ()
    """This job's task overrides as Hydra gave them (`loss.beta=0.05`, ...)."""

    @property
    def tags(self) -> dict[str, str]:
        tags = {TAG_SWEEP_ID: self.sweep_id, TAG_JOB: str(self.job_num)}
        if self.parent_run_id:
            tags[PARENT_TAG] = self.parent_run_id
        return tags

    @property
    def params(self) -> dict[str, str]:
        """Swept config-group choices (`loss=ipo`), which are no config value."""
        return {key: self.choices[key] for key in self.swept_keys if key in self.choices}

    def params_of(self, config: DictConfig) -> dict[str, str]:
        """Every swept key as a param, named as the key hyperparameters are (`loss/beta`,
        `optim/lr`, `loss`): the swept values of this job's `config`, and the swept group
        choices. The run logs them beside its key params, so a swept key outside those (say
        `optim.weight_decay`) is a param too."""
        values = key_params(
            config, extra_keys=[k for k in self.swept_keys if k not in self.choices]
        )
        swept = {param_name(key) for key in self.swept_keys}
        return {**{k: v for k, v in values.items() if k in swept}, **self.params}

    def identity(self, config: DictConfig) -> dict[str, Any]:
        """What tells this job from the sweep's others, whatever its job number: {swept key:
        this job's value}, a config-group choice as its option's name. `run.json` records it,
        and a relaunch with resume=true continues only a checkpoint of the same identity
        (`training.resume`). Without the parent run (no swept keys known): every key this job
        overrides, `resume` and `ckpt_path` aside (a relaunch adds them)."""
        keys = self.swept_keys or tuple(
            override.key_or_group
            for override in OverridesParser.create().parse_overrides(list(self.overrides))
            if not override.is_hydra_override()
            and override.key_or_group not in ("resume", "ckpt_path")
        )
        identity = {}
        for key in sorted(keys):
            value = self.choices.get(key, OmegaConf.select(config, key, default=None))
            if isinstance(value, DictConfig | ListConfig):
                value = OmegaConf.to_container(value, resolve=True)
            identity[key] = json.loads(json.dumps(value, default=str))  # as run.json reads back
        return identity

    def adopt(self, run_id: str | None, tracking_uri: str) -> None:
        """Move the run of a job relaunched with resume=true (finished, or continued) under
        this sweep's parent with this job number, so that the relaunch's summary shows every
        job of the sweep. Its metrics and params stay as they are (its swept values are this
        job's: `identity` matched)."""
        if run_id is None or self.parent_run_id is None:
            return
        client = MlflowClient(tracking_uri=tracking_uri)
        for tag, value in self.tags.items():
            client.set_tag(run_id, tag, value)

    def run_name(self, base_name: str, swept_values: Mapping[str, Any]) -> str:
        """The default name (loss, β, lr) plus every other swept key with its value.

        `swept_values`: {swept key: its value in this job's config}; a config-group choice
        (`loss=ipo`) is read from `choices` instead."""
        parts = [base_name]
        for key in self.swept_keys:
            if key in _NAMED_KEYS:
                continue
            label = key.removeprefix("loss.")  # a loss hyperparameter reads like `describe()`
            if f" {label}=" in base_name:
                continue
            value = self.choices[key] if key in self.choices else swept_values.get(key)
            if isinstance(value, float):
                value = format_number(value)
            parts.append(f"{label}={value}")
        return " ".join(parts)


def sweep_job(logger_cfg: DictConfig) -> SweepJob | None:
    """This job's place in its sweep, read from Hydra's runtime config; None for a single run
    (or a config composed in code). `logger_cfg`: where to look for the parent run."""
    if not HydraConfig.initialized():
        return None
    hydra_cfg = HydraConfig.get()
    if hydra_cfg.mode != RunMode.MULTIRUN:
        return None
    parent = find_parent(hydra_cfg, logger_cfg)
    if parent is None:
        log.warning(
            "no MLflow parent run found for sweep %s (is prefopt.tracking.sweep.SweepCallback in "
            "hydra.callbacks?): this run is tagged with the sweep but not grouped under it",
            sweep_id(hydra_cfg),
        )
    return SweepJob(
        sweep_id=sweep_id(hydra_cfg),
        job_num=int(hydra_cfg.job.num),
        parent_run_id=parent["run_id"] if parent else None,
        swept_keys=tuple(parent["swept_keys"]) if parent else (),
        choices={k: str(v) for k, v in hydra_cfg.runtime.choices.items() if v is not None},
        overrides=tuple(hydra_cfg.overrides.task),
    )


def find_parent(hydra_cfg: DictConfig, logger_cfg: DictConfig) -> dict[str, Any] | None:
    """{run_id, sweep_id, tracking_uri, swept_keys} of the sweep's parent run, or None."""
    sweep = sweep_id(hydra_cfg)
    tracking_uri = resolve_tracking_uri(logger_cfg.tracking_uri)
    published = json.loads(os.environ.get(ENV_VAR) or "null")
    if published and published["sweep_id"] == sweep and published["tracking_uri"] == tracking_uri:
        return published
    # A launcher that starts jobs in a fresh environment (another machine): ask the store.
    client = MlflowClient(tracking_uri=tracking_uri)
    experiment = client.get_experiment_by_name(logger_cfg.experiment_name)
    if experiment is None or "'" in sweep:
        return None
    runs = client.search_runs(
        [experiment.experiment_id],
        filter_string=f"tags.`{TAG_SWEEP_ID}` = '{sweep}' and tags.`{TAG_ROLE}` = 'parent'",
        max_results=1,
    )
    if not runs:
        return None
    return {
        "run_id": runs[0].info.run_id,
        "sweep_id": sweep,
        "tracking_uri": tracking_uri,
        "swept_keys": json.loads(runs[0].data.tags.get(TAG_SWEPT_KEYS, "[]")),
    }


def job_error(job_return: JobReturn) -> BaseException | None:
    """The exception a failed job raised; None for a job that did not fail.

    Hydra keeps it in the private `_return_value`: its public `return_value` re-raises it (and
    writes to stderr). tests/test_sweeps.py fails loudly when Hydra renames the field."""
    if job_return.status != JobStatus.FAILED:
        return None
    return job_return._return_value


class SweepCallback(Callback):
    """Groups the jobs of a `--multirun` under one MLflow parent run and summarises them."""

    def __init__(self) -> None:
        self.parent: dict[str, Any] | None = None
        self.objective: str | None = None
        """The metric that picks the sweep's best job (the config's `objective`)."""
        self._done = False

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        from mlflow.tracking.context.registry import resolve_tags

        overrides = swept_overrides(config)
        tracking_uri = resolve_tracking_uri(config.logger.tracking_uri)
        experiment_id = ensure_experiment(tracking_uri, config.logger.experiment_name)
        sweep = sweep_id(config.hydra)
        tags = {
            TAG_SWEEP_ID: sweep,
            TAG_ROLE: "parent",
            TAG_SWEPT_KEYS: json.dumps(list(overrides)),
            "prefopt.sweep_overrides": " ".join(config.hydra.overrides.task)[:5000],
        }
        name = " ".join(["sweep", *overrides.values()])
        name = name if len(name) <= 200 else name[:199] + "…"
        run = MlflowClient(tracking_uri=tracking_uri).create_run(
            experiment_id, run_name=name, tags=resolve_tags(tags)
        )
        self.parent = {
            "run_id": run.info.run_id,
            "sweep_id": sweep,
            "tracking_uri": tracking_uri,
            "swept_keys": list(overrides),
        }
        self.objective = OmegaConf.select(config, "objective", default=None)
        os.environ[ENV_VAR] = json.dumps(self.parent)
        atexit.register(self._finish, completed=False)
        log.info("MLflow parent run '%s' (%s) for sweep %s", name, run.info.run_id, sweep)
        _build_toy_world_once(config, list(overrides))

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        if job_return.status != JobStatus.FAILED:
            return
        try:  # recording a failure must not turn into a failure of its own
            parent = find_parent(config.hydra, config.logger)
            if parent is None:
                return
            error = job_error(job_return)
            record = {
                "overrides": list(config.hydra.overrides.task),
                "error": f"{type(error).__name__}: {error}"[:1000],
            }
            MlflowClient(tracking_uri=parent["tracking_uri"]).set_tag(
                parent["run_id"], f"{TAG_FAILED_JOB}{config.hydra.job.num}", json.dumps(record)
            )
        except Exception:
            log.exception("could not record the failure of job %s", config.hydra.job.num)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        self._finish(completed=True)

    def _finish(self, completed: bool) -> None:
        """Summary and end status of the parent; `completed` = Hydra reached on_multirun_end."""
        if self.parent is None or self._done:
            return
        self._done = True
        atexit.unregister(self._finish)
        if os.environ.get(ENV_VAR) == json.dumps(self.parent):
            del os.environ[ENV_VAR]
        from prefopt.tracking.report import report_sweep

        client = MlflowClient(tracking_uri=self.parent["tracking_uri"])
        run_id = self.parent["run_id"]
        status = "FAILED"
        try:
            status = report_sweep(
                client, run_id, self.parent["swept_keys"], self.parent["sweep_id"], self.objective
            )
            if not completed and status == "FINISHED":
                status = "FAILED"  # the sweeper itself stopped early
        finally:
            client.set_terminated(run_id, status)
            log.info("sweep parent run %s ended %s", run_id, status)


def _build_toy_world_once(config: DictConfig, swept_keys: list[str]) -> None:
    """Build the toy world before the jobs start, so parallel jobs do not all build it."""
    if any(key.split(".")[0] in ("toy", "model", "data") for key in swept_keys):
        return
    if OmegaConf.select(config, "model.path", default=None) == "toy" or (
        OmegaConf.select(config, "data.source", default=None) == "toy"
    ):
        from prefopt.toy import build_toy_world

        build_toy_world(config.toy)
