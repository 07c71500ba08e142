"""Checkpoints a killed run can continue from: writing, verifying and reading them.

`<output_dir>/checkpoints/last.ckpt` holds everything a run needs to go on as if it had never
stopped: the policy, the optimizer and scheduler states, Lightning's loop counters, the data
position within the epoch (the data module's `state_dict`, `data/order.py`) and the random
number generators. It is written every `checkpoint.every_n_steps` optimizer steps, at the end of
the first step that ends `checkpoint.every_n_minutes` after the last write (or the start of
training), at the end of training, and at the end of the step during which a stop was
requested (Ctrl-C, SIGTERM: `faults.py`). One callback does both (Lightning's `ModelCheckpoint`
takes a step or a time interval, not both, and writes no verified `last.ckpt`). Each write goes to a temporary file in the same folder, is fsynced, and only then
replaces `last.ckpt`; the file it replaces is kept as `previous.ckpt`, so a kill -9 at any
moment leaves at least one whole checkpoint, and a damaged newest one still has an older one.

A checkpoint carries its own content check: PyTorch writes it as a zip archive with a CRC-32 of
every record and the archive's directory last, so a truncated file has no directory and a
changed byte fails its record's CRC. `checkpoint_damage` reads the whole file against them
before it is used; `torch.load` itself checks neither. Which run to continue, and the
`run.json` beside the checkpoints, are `resume.py`'s.

Checkpoints load with `torch.load(weights_only=True)`: tensors and plain values only, so a
checkpoint file cannot run code.
"""

from __future__ import annotations

import logging
import os
import pickle
import random
import time
import zipfile
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from prefopt.errors import PrefoptError
from prefopt.files import atomic_write
from prefopt.training import faults

log = logging.getLogger("prefopt.resume")

CHECKPOINT_DIR = "checkpoints"
LAST = "last.ckpt"
PREVIOUS = "previous.ckpt"
"""What `last.ckpt` was before its latest write: the fallback when the newest is damaged."""
SET_ASIDE = ".corrupt"
RUN_FILE = "run.json"
"""Beside the checkpoints: the MLflow run and lineage they belong to (`resume.py`)."""


# ---------------------------------------------------------------------------------------------
# Writing, verifying and reading checkpoint files


def safe_load(path: str | Path, mmap: bool = False) -> dict[str, Any]:
    """A checkpoint's contents, refusing anything but tensors and plain values (`mmap`: the
    tensors are mapped, not read, for a look at the plain values only)."""
    try:
        return torch.load(path, map_location="cpu", mmap=mmap, weights_only=True)
    except pickle.UnpicklingError as error:
        first_line = str(error).strip().splitlines()[0][:200]
        raise PrefoptError(
            f"{path}: refused to load: it holds Python objects other than tensors and plain "
            f"values ({first_line}); prefopt loads checkpoints with weights_only=True, so use a "
            "checkpoint written by prefopt"
        ) from None
    except (OSError, EOFError, RuntimeError) as error:
        raise PrefoptError(
            f"{path}: cannot read the checkpoint ({type(error).__name__}: {str(error)[:200]}); "
            "it may be truncated: use an earlier one"
        ) from None


def checkpoint_damage(path: Path) -> str | None:
    """None when `path` is a whole PyTorch checkpoint (its zip directory present, every record
    matching its CRC-32); else what is wrong with it, in a few words. Reads the whole file.
    A file that vanishes meanwhile (another rank set it aside) raises FileNotFoundError."""
    size = path.stat().st_size
    try:
        with zipfile.ZipFile(path) as archive:
            if not any(name.endswith("data.pkl") for name in archive.namelist()):
                return f"not a PyTorch checkpoint ({size} bytes, a zip without data.pkl)"
            damaged = archive.testzip()
    except FileNotFoundError:
        raise
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as error:
        return f"truncated or not a checkpoint ({size} bytes; {str(error)[:100]})"
    if damaged is not None:
        return f"damaged ({size} bytes; record {damaged} does not match its CRC-32)"
    return None


def set_aside(path: Path) -> Path:
    """Rename a damaged checkpoint to `<name>.corrupt`, so that nothing picks it up again."""
    aside = path.with_name(path.name + SET_ASIDE)
    os.replace(path, aside)
    return aside


def write_checkpoint(checkpoint: dict[str, Any], path: Path) -> None:
    """`torch.save` written atomically (`files.atomic_write`); a `last.ckpt` it replaces becomes
    `previous.ckpt`. Records carry their CRC-32 whatever the process-wide setting, since
    `checkpoint_damage` checks them."""
    for leftover in path.parent.glob(f".{path.name}.*.tmp"):  # of a write killed -9
        leftover.unlink(missing_ok=True)
    previous = path.with_name(PREVIOUS) if path.name == LAST else None
    crc32 = torch.serialization.get_crc32_options()
    try:
        torch.serialization.set_crc32_options(True)
        atomic_write(
            path,
            lambda handle: torch.save(checkpoint, handle),
            keep_previous=previous,
            hint="point output_dir at a larger disk",
        )
    finally:
        torch.serialization.set_crc32_options(crc32)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint I/O with atomic local writes that keep the previous checkpoint,
    and weights-only loading."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options=None) -> None:
        write_checkpoint(checkpoint, Path(path))

    def load_checkpoint(self, path, map_location=None, weights_only=None) -> dict[str, Any]:
        return safe_load(path)


# ---------------------------------------------------------------------------------------------
# The callback that writes them


def rng_states() -> dict[str, Any]:
    name, keys, position, has_gauss, gauss = np.random.get_state()
    states = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": [name, torch.from_numpy(keys.astype(np.int64)), position, has_gauss, gauss],
    }
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict[str, Any]) -> None:
    torch.set_rng_state(states["torch"])
    version, internal, gauss = states["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, position, has_gauss, gauss = states["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), position, has_gauss, gauss))
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


class ResumeCheckpoint(L.Callback):
    """Write `last.ckpt` every `every_n_steps` optimizer steps, after the first step that ends
    `every_n_minutes` after the last write (rank 0's clock decides for all ranks), at the end of
    training, and at the end of the step during which a stop was requested
    (`faults.graceful_interrupts`).

    A step that is followed by a validation is saved after that validation: Lightning treats a
    checkpoint taken between a step and its validation as if the validation had run. After a
    requested stop is saved, the run stops at the next batch start (once the step's metrics
    are logged) by raising KeyboardInterrupt, Lightning's own graceful shutdown.
    """

    def __init__(self, dirpath: str | Path, every_n_steps: int, every_n_minutes: float = 0.0):
        self.path = Path(dirpath) / LAST
        self.every_n_steps = every_n_steps
        self.every_n_seconds = 60.0 * every_n_minutes
        self._last_write = time.monotonic()
        self._saved_step = -1
        self._pending = False
        self._step_at_batch_start = 0
        self._stop_due = False

    @property
    def state_key(self) -> str:
        return "ResumeCheckpoint"

    def on_train_start(self, trainer, pl_module) -> None:
        faults.defer_stops(True)
        self._last_write = time.monotonic()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self._stop_due:
            raise KeyboardInterrupt(f"stopped at step {trainer.global_step} as requested")
        self._step_at_batch_start = trainer.global_step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if step == self._step_at_batch_start:
            return  # within gradient accumulation: not a state a checkpoint can hold
        self._stop_due = self._stop_requested(trainer)
        due = (self.every_n_steps and step % self.every_n_steps == 0) or self._time_due(trainer)
        if not (due or self._stop_due) or step == self._saved_step or self._pending:
            return
        if validation_follows(trainer):
            self._pending = True
        else:
            self.save(trainer)

    def on_validation_start(self, trainer, pl_module) -> None:
        if not trainer.sanity_checking:
            faults.defer_stops(False)  # a stop during validation (generations) is immediate

    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking:
            return
        if self._pending:
            self._pending = False
            self.save(trainer)
        faults.defer_stops(True)

    def on_train_end(self, trainer, pl_module) -> None:
        faults.defer_stops(False)
        if trainer.global_step != self._saved_step:
            self.save(trainer)
        if self._stop_due:
            raise KeyboardInterrupt(f"stopped at step {trainer.global_step} as requested")

    def on_exception(self, trainer, pl_module, exception) -> None:
        faults.defer_stops(False)

    def _time_due(self, trainer) -> bool:
        if not self.every_n_seconds:
            return False
        due = time.monotonic() - self._last_write >= self.every_n_seconds
        if trainer.world_size > 1:  # one clock decides, so that every rank saves the same step
            due = bool(trainer.strategy.broadcast(due, src=0))
        return due

    def _stop_requested(self, trainer) -> bool:
        requested = faults.stop_requested()
        if trainer.world_size > 1:  # every rank saves and stops at the same step
            requested = trainer.strategy.reduce_boolean_decision(requested, all=False)
        return requested

    def save(self, trainer) -> None:
        # The full state (optimizer, loops, RNG), not weights only: resuming needs all of it.
        trainer.save_checkpoint(self.path, weights_only=False)
        self._saved_step = trainer.global_step
        self._last_write = time.monotonic()
        log.info("checkpoint at step %d: %s", trainer.global_step, self.path)

    def state_dict(self) -> dict[str, Any]:
        return {"rng": rng_states(), "step": self._saved_step}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        set_rng_states(state_dict["rng"])
        self._saved_step = state_dict.get("step", -1)


def validation_follows(trainer) -> bool:
    """Whether Lightning validates after the training batch that just ended.

    Lightning has no public way to ask; its training epoch loop decides with the private
    `_should_check_val_fx(data_fetcher)`. This is the one place that calls it, so that a
    checkpoint is not written between a step and its validation;
    tests/training/test_lightning_internals.py fails if Lightning renames it or changes what it
    takes.
    """
    fit_loop = trainer.fit_loop
    return bool(fit_loop.epoch_loop._should_check_val_fx(fit_loop._data_fetcher))
