"""Entry point: `python -m prefopt.train [overrides]`.

compose config -> check it -> start the MLflow run -> build data and models -> fit -> export.
Any exception after the run has started ends that run FAILED (KILLED on Ctrl-C or SIGTERM).
A user error (`PrefoptError`) is printed as one line, exit status 2 (`checks.py`); faults and
resuming are `faults.py` and `resume.py`.
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass
from pathlib import Path

import hydra
import lightning as L
from omegaconf import DictConfig, OmegaConf

from prefopt.config import checks
from prefopt.config.schema import register_configs
from prefopt.data import PreferenceDataModule
from prefopt.evaluation import build_callbacks
from prefopt.losses.base import PreferenceLoss
from prefopt.model.export import export_policy
from prefopt.model.loading import load_causal_lm, load_tokenizer, prepare_policy
from prefopt.model.packing import PairPacking
from prefopt.reference import build_reference, build_sampling_model
from prefopt.toy import ToyWorld, build_toy_world
from prefopt.tracking import (
    default_run_name,
    resolve_tracking_uri,
    set_tags,
    sweep_job,
    tracked_run,
)
from prefopt.training import strategies as distributed
from prefopt.training.checkpoint import (
    CHECKPOINT_DIR,
    LAST,
    AtomicCheckpointIO,
    ResumeCheckpoint,
    ResumePoint,
    find_resume_point,
    mark_resumed,
    write_run_file,
)
from prefopt.training.faults import NonFiniteGuard, sigterm_as_interrupt
from prefopt.training.module import PreferenceModule

log = logging.getLogger("prefopt")


def config_dir() -> str:
    """`conf/` ships inside the package in a wheel and sits at the repo root in a checkout."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "conf", here.parents[1] / "conf"):
        if (candidate / "config.yaml").is_file():
            return str(candidate)
    raise FileNotFoundError(
        f"prefopt's conf/ directory was found neither in {here} nor in {here.parents[1]}"
    )


@dataclass
class TrainResult:
    run_id: str
    export_dir: Path | None
    metrics: dict[str, float]
    module: PreferenceModule


def check_config(cfg: DictConfig) -> PreferenceLoss:
    """Everything that can be checked before a model or dataset is touched."""
    loss = checks.check_config(cfg)
    distributed.check_scaling_config(cfg.trainer, cfg.model, cfg.reference, cfg.eval)
    return loss


def train(cfg: DictConfig) -> TrainResult:
    loss = check_config(cfg)
    resume = find_resume_point(cfg.output_dir, cfg.resume, cfg.ckpt_path)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    sweep = sweep_job(cfg.logger)  # None unless this is a job of a --multirun
    run_name = cfg.logger.run_name or default_run_name(loss.describe(), cfg.optim.lr)
    if sweep and not cfg.logger.run_name:
        swept_values = {key: OmegaConf.select(cfg, key) for key in sweep.swept_keys}
        run_name = sweep.run_name(run_name, swept_values)
    run_id = resume.run_id_for(resolve_tracking_uri(cfg.logger.tracking_uri)) if resume else None
    with (
        sigterm_as_interrupt(),
        tracked_run(
            cfg.logger,
            run_name,
            cfg,
            tags=sweep.tags if sweep else None,
            params=sweep.params if sweep else None,
            run_id=run_id,
            resumed_from=resume.checkpoint if resume else None,
            offline_dir=cfg.output_dir,
        ) as logger,
    ):
        if resume:
            mark_resumed(resume, cfg.output_dir)
        if cfg.checkpoint.enabled:
            write_run_file(cfg.output_dir, run_id=logger.run_id, tracking_uri=logger.tracking_uri)
        result = _fit_and_export(cfg, loss, logger, resume)
        if cfg.checkpoint.enabled:
            write_run_file(cfg.output_dir, finished=True)
    return result


def _fit_and_export(
    cfg: DictConfig, loss: PreferenceLoss, logger, resume: ResumePoint | None = None
) -> TrainResult:
    uses_toy = cfg.model.path == "toy" or cfg.data.source == "toy"
    world: ToyWorld | None = build_toy_world(cfg.toy) if uses_toy else None
    policy_path = str(world.model_dir) if cfg.model.path == "toy" else cfg.model.path
    reference_path = cfg.model.reference_path or policy_path

    tokenizer = load_tokenizer(policy_path, cfg.model)
    datamodule = PreferenceDataModule(cfg.data, tokenizer, toy_world=world, paired=loss.paired)
    datamodule.setup("fit")
    logger.log_hyperparams({f"data_stats/{k}": v for k, v in datamodule.stats.items()})
    if advice := loss.check_data(datamodule.stats):
        log.warning(advice)

    # One verdict per model on shared prompts / padding-free rows, for the policy and the
    # reference alike (its cached log-probs included); KTO scores its rows as they are.
    packing = PairPacking(cfg.model.prefix_sharing, cfg.data.packing) if loss.paired else None
    policy = None
    if cfg.model.lora.enabled and not cfg.model.reference_path:
        # LoRA: π_ref is the policy with its adapter disabled, not a second model.
        policy = prepare_policy(load_causal_lm(policy_path, cfg.model), cfg.model)
    reference = None
    if loss.needs_reference:
        reference = build_reference(
            cfg.reference,
            cfg.model,
            reference_path=reference_path,
            datamodule=datamodule,
            load_model=lambda path: load_causal_lm(path, cfg.model),
            packing=packing,
            policy=policy,
            batch_size=cfg.data.batch_size,
            data_seed=cfg.data.seed,
        )
    if policy is None:
        policy = prepare_policy(load_causal_lm(policy_path, cfg.model), cfg.model)
    module = PreferenceModule(
        policy,
        loss,
        cfg.optim,
        reference=reference,
        chunk_size=cfg.model.logits_chunk_size or None,
        packing=packing,
    )
    if packing is not None and packing.requested and packing.supported(policy, module.chunk_size):
        # Decided now (the probe), so batches come with their packed layout from the loader.
        datamodule.pack_batches(packing.prefix_sharing != "false", packing.padding_free)

    output_dir = Path(cfg.output_dir)
    if reference is not None:
        reference_model = reference.sampling_model
    else:  # a reference-free loss: evaluation still compares with π_ref
        reference_model = build_sampling_model(
            cfg.model, reference_path, lambda path: load_causal_lm(path, cfg.model)
        )
    callbacks = build_callbacks(
        cfg.eval, cfg.model, cfg.data.source == "toy", loss, tokenizer, reference_model
    )
    checkpoint_dir = output_dir / CHECKPOINT_DIR
    if cfg.checkpoint.enabled:
        callbacks.append(ResumeCheckpoint(checkpoint_dir, cfg.checkpoint.every_n_steps))
    hints = {"optim.lr": cfg.optim.lr, "trainer.precision": cfg.trainer.precision}
    if "beta" in cfg.loss:
        hints["loss.beta"] = cfg.loss.beta
    callbacks.append(NonFiniteGuard(hints, checkpoint_dir / LAST))
    trainer = L.Trainer(
        **distributed.trainer_arguments(cfg.trainer, policy),
        logger=logger,
        default_root_dir=output_dir,
        enable_checkpointing=False,  # ResumeCheckpoint writes the checkpoints (resume.py)
        plugins=[AtomicCheckpointIO()],
        callbacks=callbacks,
    )
    ckpt_path = str(resume.checkpoint) if resume else None
    completed = False
    try:
        trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
        export_dir = None
        if cfg.export:
            written = export_policy(
                trainer,
                module,
                tokenizer,
                output_dir,
                cfg.model,
                lambda: load_causal_lm(policy_path, cfg.model),
            )
            set_tags(logger, {tag: str(path.resolve()) for tag, path in written.items()})
            export_dir = written.get("prefopt.export_dir")
        completed = True
    finally:
        distributed.finish(trainer, completed)
    _print_summary(metrics, export_dir, logger)
    return TrainResult(run_id=logger.run_id, export_dir=export_dir, metrics=metrics, module=module)


def _print_summary(metrics: dict[str, float], export_dir: Path | None, logger) -> None:
    shown = {k: v for k, v in sorted(metrics.items()) if k.startswith(("val/", "eval/"))}
    lines = [f"  {k:<28} {v:.4f}" for k, v in shown.items()]
    log.info("final validation metrics:\n%s", "\n".join(lines) or "  (none)")
    log.info(
        "MLflow run %s — open with: mlflow ui --backend-store-uri %s",
        logger.run_id,
        logger.tracking_uri,
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
