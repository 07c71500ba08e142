"""`build_reference`: the one `Reference` a run's `reference` and `model` sections ask for.

- LoRA with no `model.reference_path`: the policy with its adapter disabled (the policy must be
  built first); else the `reference_path` checkpoint, loaded as a frozen model.
- `reference.cache=true` (the default): that reference scores all data once, before training,
  and training reads the stored log-probs (`CachedReference`); on a cache hit no model is
  loaded. A model loaded only to fill the cache is dropped afterwards. The cache is computed
  under the training precision (`trainer.precision`), part of its key (`precision.py`).
- `reference.cache=false`, a moving reference (`reference.sync_every_n_steps`, `sync.py`),
  or a checkpoint with no local files to fingerprint: the reference runs online at every step
  (`OnlineReference`, or the adapter-disabled policy). A moving one gets its own
  `SamplingModel`, so that evaluation keeps comparing with the initial reference.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from torch import nn

from prefopt.config.schema import ModelConfig, ReferenceConfig
from prefopt.model.packing import PairPacking
from prefopt.reference.adapter import AdapterDisabledReference
from prefopt.reference.base import Reference, SamplingModel
from prefopt.reference.cached import (
    cache_key,
    checkpoint_fingerprint,
    default_cache_dir,
    load_or_compute,
    local_checkpoint,
)
from prefopt.reference.online import OnlineReference
from prefopt.reference.precision import precision_name

log = logging.getLogger("prefopt.reference")


def build_reference(
    reference_cfg: ReferenceConfig,
    model_cfg: ModelConfig,
    *,
    reference_path: str,
    datamodule,
    load_model: Callable[[str], nn.Module],
    packing: PairPacking | None = None,
    policy: nn.Module | None = None,
    batch_size: int | None = None,
    data_seed: int | None = None,
    precision="32-true",
) -> Reference:
    """π_ref for training and evaluation.

    `reference_path`: the reference checkpoint (`model.reference_path`, or the policy's own when
    that is unset). `datamodule`: the set-up data (its `paired`, `fingerprint` and
    `reference_loaders()`). `load_model(path)` loads a checkpoint. `packing`: how the reference
    scores pairs, online and for the cache (ignored for unpaired data). `policy`: the PEFT
    policy, needed with LoRA when `model.reference_path` is unset. `batch_size`, `data_seed`
    (`data.batch_size`, `data.seed`): for unpaired data (KTO), whose mismatched rows depend
    on how examples are grouped into batches. `precision`: `trainer.precision`, the one the
    cache is computed in (and keyed by), so that it equals the reference run during training.
    """
    chunk_size = model_cfg.logits_chunk_size or None
    packing = packing if datamodule.paired else None  # KTO scores its rows as they are
    held: Reference | None = None  # a reference whose model is in memory anyway
    if model_cfg.lora.enabled and not model_cfg.reference_path:
        if policy is None:
            raise ValueError("LoRA without model.reference_path: build the policy first")
        held = AdapterDisabledReference(policy, chunk_size, packing)

    loaded: Reference | None = held

    moving = reference_cfg.sync_every_n_steps > 0
    # A moving reference's own model changes: evaluation keeps the initial one apart.
    sampling_model = build_sampling_model(model_cfg, reference_path, load_model) if moving else None

    def run_online() -> Reference:
        nonlocal loaded
        if loaded is None:
            model = load_model(reference_path)
            loaded = OnlineReference(model, chunk_size, packing, sampling_model)
        return loaded

    if reference_cfg.cache and moving and held is None:
        log.info(
            "reference.sync_every_n_steps: the reference moves, so it runs online (its "
            "log-probs cannot be cached)"
        )
    if not reference_cfg.cache or (moving and held is None):
        return run_online()
    checkpoint = local_checkpoint(reference_path)
    if checkpoint is None:
        # A hub id not downloaded yet: loading it fills the Hugging Face cache, whose snapshot
        # the cache key then hashes (the next job finds it there and loads nothing).
        run_online()
        checkpoint = local_checkpoint(reference_path)
    if checkpoint is None:
        log.info(
            "reference log-probs: %s has no local files to fingerprint; running it online",
            reference_path,
        )
        return run_online()
    if not datamodule.paired and (batch_size is None or data_seed is None):
        raise ValueError("build_reference: unpaired data needs batch_size and data_seed")
    settings = {
        "dtype": model_cfg.dtype,
        "precision": precision_name(precision),
        "paired": datamodule.paired,
        # KTO's mismatched rows depend on how examples are grouped into batches.
        "batching": None if datamodule.paired else [batch_size, data_seed],
    }
    key = cache_key(checkpoint_fingerprint(checkpoint), datamodule.fingerprint, settings)
    path = Path(reference_cfg.cache_dir or default_cache_dir()) / f"{key}.pt"
    if held is not None:
        sampling_model = held.sampling_model
    else:
        sampling_model = build_sampling_model(model_cfg, reference_path, load_model)
    return load_or_compute(
        path, reference_path, run_online, datamodule.reference_loaders, sampling_model, precision
    )


def build_sampling_model(
    model_cfg: ModelConfig, reference_path: str, load_model: Callable[[str], nn.Module]
) -> SamplingModel:
    """π_ref as a model for evaluation when no model of it is held: the `model.reference_path`
    checkpoint loaded at the first evaluation, or else a copy of the initial policy."""
    if model_cfg.reference_path:
        return SamplingModel(load=lambda: load_model(reference_path))
    return SamplingModel()
