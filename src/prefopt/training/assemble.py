"""The run's Lightning pieces, each from its own config sections: the module (policy and
reference, loaded in the order memory wants) and the trainer with prefopt's callbacks.

`prefopt.train` calls these in order; nothing here reads the whole config.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import hydra
import lightning as L
from lightning.pytorch.callbacks import ProgressBar
from omegaconf import OmegaConf

from prefopt.config.schema import (
    CheckpointConfig,
    DataConfig,
    ModelConfig,
    OptimConfig,
    ReferenceConfig,
)
from prefopt.data import PreferenceDataModule
from prefopt.losses.base import PreferenceLoss
from prefopt.model.loading import Checkpoints, prepare_policy
from prefopt.model.packing import PairPacking
from prefopt.reference import (
    SamplingModel,
    build_reference,
    build_reference_sync,
    build_sampling_model,
)
from prefopt.tracking import log_datasets
from prefopt.training import strategies
from prefopt.training.checkpoint import CHECKPOINT_DIR, LAST, AtomicCheckpointIO, ResumeCheckpoint
from prefopt.training.faults import NonFiniteGuard
from prefopt.training.module import PreferenceModule
from prefopt.training.resume_config import ResumedSettings
from prefopt.training.run_length import ValidateAtTheEnd, progress_bar

log = logging.getLogger("prefopt")


@dataclass
class TrainResult:
    """What `prefopt.train.train` returns: the MLflow run, the exported model's folder (None
    without `export`), the final logged metrics, and the trained module."""

    run_id: str
    export_dir: Path | None
    metrics: dict[str, float]
    module: PreferenceModule


def build_datamodule(
    data_cfg: DataConfig, tokenizer, toy_world, loss: PreferenceLoss, logger
) -> PreferenceDataModule:
    """The data, read, checked and tokenized now (`setup("fit")`): the reference cache and the
    packing probe need it before training starts. Its splits are logged as the run's datasets
    (with their counts), and the loss says whether the data suits it (e.g. KTO's desirable share)."""
    datamodule = PreferenceDataModule(data_cfg, tokenizer, toy_world=toy_world, paired=loss.paired)
    datamodule.setup("fit")
    log_datasets(logger, datamodule.summaries())
    if advice := loss.check_data(datamodule.stats):
        log.warning(advice)
    return datamodule


def build_module(
    model_cfg: ModelConfig,
    reference_cfg: ReferenceConfig,
    optim_cfg: OptimConfig,
    loss: PreferenceLoss,
    checkpoints: Checkpoints,
    datamodule: PreferenceDataModule,
    precision="32-true",
) -> PreferenceModule:
    """The policy, its reference (when the loss needs one) and the loss, as one LightningModule.

    `datamodule` must be set up: the reference cache scores its data, and the batches learn
    here whether they come packed (the probe runs on the policy). `precision`:
    `trainer.precision`, the one the reference cache is computed in."""
    # One verdict per model on shared prompts / padding-free rows, for the policy and the
    # reference alike (its cached log-probs included); KTO scores its rows as they are.
    data_cfg = datamodule.cfg
    packing = (
        PairPacking(model_cfg.prefix_sharing, data_cfg.packing, data_cfg.packing_row_tokens)
        if loss.paired
        else None
    )
    policy = None
    if model_cfg.lora.enabled and not model_cfg.reference_path:
        # LoRA: π_ref is the policy with its adapter disabled, so the policy comes first.
        policy = prepare_policy(checkpoints.load(), model_cfg)
    reference = None
    if loss.needs_reference and loss.needs_shared_prefix and reference_cfg.cache:
        # The cache holds whole-completion sums; LD-DPO also needs each pair's shared-length sum.
        log.info("loss.ld_alpha: the reference runs online (its cache has no shared-length sums)")
        reference_cfg = OmegaConf.merge(reference_cfg, {"cache": False})
    if loss.needs_reference:
        # Before the policy otherwise: a model loaded only to fill the log-prob cache is
        # dropped before the policy takes its memory.
        reference = build_reference(
            reference_cfg,
            model_cfg,
            reference_path=checkpoints.reference_path,
            datamodule=datamodule,
            load_model=checkpoints.load,
            packing=packing,
            policy=policy,
            batch_size=data_cfg.batch_size,
            data_seed=data_cfg.seed,
            precision=precision,
        )
    if policy is None:
        policy = prepare_policy(checkpoints.load(), model_cfg)
    module = PreferenceModule(
        policy,
        loss,
        optim_cfg,
        reference=reference,
        chunk_size=model_cfg.logits_chunk_size or None,
        packing=packing,
    )
    if packing is not None and packing.requested and packing.supported(policy, module.chunk_size):
        # Decided now (the probe), so batches come with their packed layout from the loader.
        datamodule.pack_batches(packing.shares_prompts(policy), packing.padding_free)
    return module


def evaluation_reference(module: PreferenceModule, checkpoints: Checkpoints) -> SamplingModel:
    """π_ref as a model to sample from: training's reference, or for a reference-free loss
    (SimPO) the reference checkpoint, which evaluation still compares the policy with."""
    if module.reference is not None:
        return module.reference.sampling_model
    return build_sampling_model(checkpoints.model_cfg, checkpoints.reference_path, checkpoints.load)


def reference_callbacks(reference_cfg: ReferenceConfig, module: PreferenceModule) -> list:
    """The callback that moves the reference during training (`reference.sync_every_n_steps`,
    TR-DPO), or none. Pass it before the checkpoint callbacks (`build_trainer` appends them
    after its `callbacks`), so a checkpoint at a sync step holds the synced reference."""
    sync = build_reference_sync(reference_cfg, module.reference)
    return [sync] if sync is not None else []


def fault_hints(optim_cfg: OptimConfig, trainer_cfg, loss_cfg) -> dict[str, object]:
    """The settings a non-finite loss's message suggests changing, with their values now."""
    hints = {"optim.lr": optim_cfg.lr, "trainer.precision": trainer_cfg.precision}
    if "beta" in loss_cfg:
        hints["loss.beta"] = loss_cfg.beta
    return hints


def build_trainer(
    trainer_cfg,
    checkpoint_cfg: CheckpointConfig,
    module: PreferenceModule,
    logger,
    output_dir: str | Path,
    callbacks: list[L.Callback],
    fault_hints: dict[str, object],
) -> L.Trainer:
    """Lightning's Trainer with the run's strategy, the resume checkpoints (atomic writes) and
    the guard that stops on a non-finite loss, naming `fault_hints` (settings to try)."""
    checkpoint_dir = Path(output_dir) / CHECKPOINT_DIR
    callbacks = list(callbacks)
    extra = trainer_cfg.get("callbacks") or {}
    callbacks += [hydra.utils.instantiate(node) for node in extra.values() if node is not None]
    callbacks.append(ValidateAtTheEnd())  # before the checkpoint: it is written after validation
    if trainer_cfg.enable_progress_bar and not any(isinstance(c, ProgressBar) for c in callbacks):
        callbacks += [bar] if (bar := progress_bar()) is not None else []
    if checkpoint_cfg.enabled:
        callbacks.append(
            ResumeCheckpoint(
                checkpoint_dir, checkpoint_cfg.every_n_steps, checkpoint_cfg.every_n_minutes
            )
        )
        callbacks.append(ResumedSettings())  # a resume with changed settings: applied or refused
    callbacks.append(NonFiniteGuard(fault_hints, checkpoint_dir / LAST))
    return L.Trainer(
        **strategies.trainer_arguments(trainer_cfg, module.policy),
        logger=logger,
        default_root_dir=output_dir,
        enable_checkpointing=False,  # ResumeCheckpoint writes the checkpoints
        plugins=[AtomicCheckpointIO()],
        callbacks=callbacks,
    )


@contextlib.contextmanager
def launched(trainer: L.Trainer) -> Iterator[L.Trainer]:
    """Around fit and export: every rank ends its process group and launch afterwards, waiting
    for the others only when the block completed (a failed rank must not hang the rest)."""
    completed = False
    try:
        yield trainer
        completed = True
    finally:
        strategies.finish(trainer, completed)
