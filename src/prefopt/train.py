"""Entry point: `python -m prefopt.train [overrides]`.

compose config -> check it -> start the MLflow run -> build data and models -> fit -> export.
Each builder gets only its own config section; this file is the one place that sees them all.
Any exception once the run has started ends it FAILED (KILLED on Ctrl-C or SIGTERM); a user
error (`PrefoptError`) is printed as one line with exit status 2 (`config/checks.py`). Ctrl-C or
SIGTERM during a training step first lets the step end and saves it (`training/faults.py`).
"""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
import lightning as L
from omegaconf import DictConfig, OmegaConf

from prefopt.config import checks, config_dir
from prefopt.config.schema import register_configs
from prefopt.evaluation import build_callbacks
from prefopt.judges import build_judge
from prefopt.losses.base import PreferenceLoss
from prefopt.model.compatibility import check_reference_compatible
from prefopt.model.export import export_policy
from prefopt.model.loading import Checkpoints
from prefopt.online import (
    OnlineSummary,
    build_online_data,
    check_loop_config,
    is_online,
    online_trainer_config,
)
from prefopt.toy import build_toy_world, reward
from prefopt.tracking import (
    default_run_name,
    log_summary,
    resolve_tracking_uri,
    set_tags,
    sweep_job,
    tracked_run,
)
from prefopt.tracking.models import check_model_logging, log_aligned_model
from prefopt.training import assemble, strategies
from prefopt.training.assemble import TrainResult
from prefopt.training.faults import graceful_interrupts
from prefopt.training.resume import find_resume_point, recorded_run
from prefopt.training.resume_config import refuse_before_start


def check_config(cfg: DictConfig) -> PreferenceLoss:
    """Everything that can be checked before a model or dataset is touched."""
    loss = checks.check_config(cfg)
    strategies.check_scaling_config(cfg.trainer, cfg.model, cfg.reference, cfg.eval)
    check_model_logging(cfg.model, cfg.export)
    check_loop_config(cfg.loop, cfg.trainer)
    return loss


def train(cfg: DictConfig) -> TrainResult:
    loss = check_config(cfg)
    checks.check_accelerator(cfg.trainer)  # this machine's GPUs; a valid config may need others
    checks.check_model_kernels(cfg.model, cfg.trainer)  # e.g. liger-kernel: its package, a GPU
    tracking_uri = resolve_tracking_uri(cfg.logger.tracking_uri)
    sweep = sweep_job(cfg.logger)  # None unless this is a job of a --multirun
    job = sweep and sweep.identity(cfg)  # a relaunched sweep job resumes only its own checkpoint
    resume = find_resume_point(cfg.output_dir, cfg.resume, cfg.ckpt_path, tracking_uri, job)
    if sweep and resume and resume.run.get("job") == job:  # its run joins this sweep's parent
        sweep.adopt(resume.run_id_for(tracking_uri), tracking_uri)
    if resume and resume.finished:  # a relaunched sweep's job that finished: left as it is
        return TrainResult(run_id=resume.run.get("run_id"), export_dir=None, metrics={}, module=None)
    if resume:  # a change the checkpoint cannot honour: refused before the MLflow run reopens
        refuse_before_start(resume.checkpoint, cfg, loss)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    run_name = cfg.logger.run_name or default_run_name(loss.describe(), cfg.optim.lr)
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
            return _fit_and_export(cfg, loss, logger, resume and str(resume.checkpoint))


def _fit_and_export(cfg: DictConfig, loss: PreferenceLoss, logger, ckpt_path) -> TrainResult:
    world = build_toy_world(cfg.toy) if "toy" in (cfg.model.path, cfg.data.source) else None
    checkpoints = Checkpoints.of(cfg.model, world and world.model_dir)
    # Again now that the toy model exists and hub files may be fetched: before any weights load.
    check_reference_compatible(cfg.model, checkpoints.policy_path, download=True)
    tokenizer = checkpoints.load_tokenizer()
    datamodule = assemble.build_datamodule(cfg.data, tokenizer, world, loss, logger)
    module = assemble.build_module(
        cfg.model, cfg.reference, cfg.optim, loss, checkpoints, datamodule, cfg.trainer.precision
    )
    reference_model = assemble.evaluation_reference(module, checkpoints)
    toy_data = cfg.data.source == "toy"  # the toy world's reward is the ground truth
    online = is_online(cfg.loop)
    # One judge for evaluation and the online loop: a reward model loads once.
    judge = build_judge(cfg.judge, toy_data) if cfg.eval.num_prompts > 0 or online else None
    true_reward = reward if toy_data else None  # the ground truth, logged whatever the judge
    callbacks = build_callbacks(
        cfg.eval, cfg.model, judge, loss, tokenizer, reference_model, true_reward
    )
    callbacks += assemble.reference_callbacks(cfg.reference, module)  # TR-DPO's moving π_ref
    trainer_cfg = cfg.trainer
    if online:  # pairs sampled from the policy each round (prefopt.online)
        datamodule = build_online_data(
            cfg.loop, datamodule, module, tokenizer, judge, reference_model,
            true_reward=true_reward,
            progress=cfg.trainer.enable_progress_bar,
        )  # fmt: skip
        callbacks.append(OnlineSummary())
        trainer_cfg = online_trainer_config(cfg.trainer)
    hints = assemble.fault_hints(cfg.optim, cfg.trainer, cfg.loss)
    trainer = assemble.build_trainer(
        trainer_cfg, cfg.checkpoint, module, logger, cfg.output_dir, callbacks, hints
    )
    with assemble.launched(trainer):
        trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
        written = {}
        if cfg.export:
            out = Path(cfg.output_dir)
            written = export_policy(trainer, module, tokenizer, out, cfg.model, checkpoints.load)
            set_tags(logger, {tag: str(path.resolve()) for tag, path in written.items()})
    log_aligned_model(logger, written, cfg.model, trainer.global_step)  # rank 0: {} elsewhere
    log_summary(metrics, logger)
    export_dir = written.get("prefopt.export_dir")
    return TrainResult(run_id=logger.run_id, export_dir=export_dir, metrics=metrics, module=module)


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
