"""Entry point: `python -m prefopt.train [overrides]`.

compose config -> check it -> start the MLflow run -> build what the task trains -> fit -> export.
The task's builder (`training/tasks.py`: offline or online alignment, or a reward model) gets the
config; this file is the one place that sees the whole run. Any exception once the run has
started ends it FAILED (KILLED on Ctrl-C or SIGTERM); a user error (`PrefoptError`) is printed as
one line with exit status 2 (`config/checks.py`). Ctrl-C or SIGTERM during a training step first
lets the step end and saves it (`training/faults.py`).
"""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
import lightning as L
from omegaconf import DictConfig, OmegaConf

from prefopt.config import checks, config_dir
from prefopt.config.schema import register_configs
from prefopt.model.export import export_policy
from prefopt.tracking import (
    default_run_name,
    log_summary,
    resolve_tracking_uri,
    set_tags,
    sweep_job,
    tracked_run,
)
from prefopt.tracking.models import log_aligned_model
from prefopt.training import assemble, tasks
from prefopt.training.assemble import TrainResult
from prefopt.training.faults import graceful_interrupts
from prefopt.training.resume import find_resume_point, recorded_run
from prefopt.training.resume_config import refuse_before_start

check_config = tasks.check_task
"""Everything that can be checked before a model or dataset is touched (scripts call it)."""


def train(cfg: DictConfig) -> TrainResult:
    task = check_config(cfg)
    checks.check_accelerator(cfg.trainer)  # this machine's GPUs; a valid config may need others
    checks.check_model_kernels(cfg.model, cfg.trainer)  # e.g. liger-kernel: its package, a GPU
    tracking_uri = resolve_tracking_uri(cfg.logger.tracking_uri)
    sweep = sweep_job(cfg.logger)  # None unless this is a job of a --multirun
    job = sweep and sweep.identity(cfg)  # a relaunched sweep job resumes only its own checkpoint
    resume = find_resume_point(cfg.output_dir, cfg.resume, cfg.ckpt_path, tracking_uri, job)
    if sweep and resume and resume.run.get("job") == job:  # its run joins this sweep's parent
        sweep.adopt(resume.run_id_for(tracking_uri), tracking_uri)
    if resume and resume.finished:  # a relaunched sweep's job that finished: left as it is
        return TrainResult(
            run_id=resume.run.get("run_id"), export_dir=None, metrics={}, module=None
        )
    if resume:  # a change the checkpoint cannot honour: refused before the MLflow run reopens
        refuse_before_start(resume.checkpoint, cfg, task.trained_loss)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    run_name = cfg.logger.run_name or default_run_name(task.label, cfg.optim.lr)
    if sweep and not cfg.logger.run_name:
        swept = {key: OmegaConf.select(cfg, key) for key in sweep.swept_keys}
        run_name = sweep.run_name(run_name, swept)
    run_id = resume.run_id_for(tracking_uri) if resume else None
    with (
        graceful_interrupts(),
        tracked_run(
            cfg.logger, run_name, cfg, tags=sweep and sweep.tags, params=sweep and sweep.params_of(cfg),
            run_id=run_id, resumed_from=resume and resume.checkpoint, offline_dir=cfg.output_dir,
        ) as logger,
    ):  # fmt: skip
        uri, enabled = logger.tracking_uri, cfg.checkpoint.enabled
        with recorded_run(cfg.output_dir, enabled, resume, logger.run_id, uri, job):
            return _fit_and_export(cfg, task, logger, resume and str(resume.checkpoint))


def _fit_and_export(cfg: DictConfig, task: tasks.Task, logger, ckpt_path) -> TrainResult:
    fit = tasks.build_fit(cfg, task, logger)
    trainer = assemble.build_trainer(
        fit.trainer_cfg, cfg.checkpoint, fit.module, logger, cfg.output_dir, fit.callbacks,
        fit.fault_hints,
    )  # fmt: skip
    with assemble.launched(trainer):
        trainer.fit(fit.module, datamodule=fit.datamodule, ckpt_path=ckpt_path, weights_only=True)
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
        written = {}
        if cfg.export:
            out, module = Path(cfg.output_dir), fit.module
            written = export_policy(trainer, module, fit.tokenizer, out, cfg.model, fit.load_base)
            set_tags(logger, {tag: str(path.resolve()) for tag, path in written.items()})
    if fit.log_model:  # rank 0: {} elsewhere
        log_aligned_model(logger, written, cfg.model, trainer.global_step)
    log_summary(metrics, logger)
    export_dir = written.get("prefopt.export_dir")
    return TrainResult(
        run_id=logger.run_id, export_dir=export_dir, metrics=metrics, module=fit.module
    )


register_configs()


@hydra.main(config_path=config_dir(), config_name="config", version_base="1.3")
def hydra_main(cfg: DictConfig) -> float | None:
    """Returns the run's `objective` metric, for sweepers that optimise it (Optuna)."""
    with checks.reported_errors():
        return train(cfg).metrics.get(cfg.objective)


def main() -> None:
    """`python -m prefopt.train`: group options are checked before Hydra composes the config."""
    with checks.reported_errors():
        checks.check_overrides(sys.argv[1:], config_dir())
    hydra_main()


if __name__ == "__main__":
    main()
