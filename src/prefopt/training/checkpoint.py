"""Checkpoints a killed run can continue from, and finding the run to continue.

`<output_dir>/checkpoints/last.ckpt` holds everything a run needs to go on as if it had never
stopped: the policy, the optimizer and scheduler states, Lightning's loop counters, the data
position within the epoch (the data module's `state_dict`, `data/order.py`) and the random
number generators. It is written every `checkpoint.every_n_steps` optimizer steps and at the
end of training, atomically (a temporary file in the same folder, fsynced, then renamed over the
old one), so a kill -9 at any moment leaves the previous checkpoint intact. `run.json` beside it names the MLflow run, so that
a resumed run logs into the same MLflow run; `finished` is set once the run has exported.

Checkpoints load with `torch.load(weights_only=True)`: tensors and plain values only, so a
checkpoint file cannot run code.
"""

from __future__ import annotations

import contextlib
import json
import logging
import pickle
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from prefopt.errors import PrefoptError
from prefopt.files import atomic_write

log = logging.getLogger("prefopt.resume")

CHECKPOINT_DIR = "checkpoints"
LAST = "last.ckpt"
RUN_FILE = "run.json"


# ---------------------------------------------------------------------------------------------
# Writing and reading checkpoint files


def safe_load(path: str | Path) -> dict[str, Any]:
    """A checkpoint's contents, refusing anything but tensors and plain values."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
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


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint I/O with atomic local writes and weights-only loading."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options=None) -> None:
        atomic_write(Path(path), lambda handle: torch.save(checkpoint, handle))

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
    """Write `last.ckpt` every `every_n_steps` optimizer steps and at the end of training.

    A step that is followed by a validation is saved after that validation: Lightning treats a
    checkpoint taken between a step and its validation as if the validation had run.
    """

    def __init__(self, dirpath: str | Path, every_n_steps: int):
        self.path = Path(dirpath) / LAST
        self.every_n_steps = every_n_steps
        self._saved_step = -1
        self._pending = False

    @property
    def state_key(self) -> str:
        return "ResumeCheckpoint"

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if not self.every_n_steps or step == 0 or step % self.every_n_steps:
            return
        if step == self._saved_step or self._pending:
            return
        if validation_follows(trainer):
            self._pending = True
        else:
            self.save(trainer)

    def on_validation_end(self, trainer, pl_module) -> None:
        if self._pending and not trainer.sanity_checking:
            self._pending = False
            self.save(trainer)

    def on_train_end(self, trainer, pl_module) -> None:
        if trainer.global_step != self._saved_step:
            self.save(trainer)

    def save(self, trainer) -> None:
        # The full state (optimizer, loops, RNG), not weights only: resuming needs all of it.
        trainer.save_checkpoint(self.path, weights_only=False)
        self._saved_step = trainer.global_step
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
    checkpoint is not written between a step and its validation; tests/test_checkpoint.py fails
    if Lightning renames it or changes what it takes.
    """
    fit_loop = trainer.fit_loop
    return bool(fit_loop.epoch_loop._should_check_val_fx(fit_loop._data_fetcher))


# ---------------------------------------------------------------------------------------------
# Which run to continue


@dataclass
class ResumePoint:
    checkpoint: Path
    run: dict[str, Any]
    """`run.json` of the interrupted run: its MLflow `run_id` and `tracking_uri` (may be empty)."""

    def run_id_for(self, tracking_uri: str) -> str | None:
        """The MLflow run to continue: the interrupted run's, when it used the same store."""
        if self.run.get("tracking_uri") == tracking_uri:
            return self.run.get("run_id")
        return None


def write_run_file(output_dir: str | Path, **fields: Any) -> None:
    path = Path(output_dir) / CHECKPOINT_DIR / RUN_FILE
    current = read_run_file(path.parent)
    current.update(fields)
    atomic_write(path, lambda handle: handle.write(json.dumps(current, indent=1).encode()))


def read_run_file(checkpoint_dir: Path) -> dict[str, Any]:
    try:
        return json.loads((checkpoint_dir / RUN_FILE).read_text())
    except (OSError, ValueError):
        return {}


def find_resume_point(
    output_dir: str | Path, resume: bool, ckpt_path: str | None
) -> ResumePoint | None:
    """The checkpoint `ckpt_path=` names, or with `resume=true` the latest unfinished run's
    (this run's `output_dir` first, then its sibling run folders)."""
    if ckpt_path:
        checkpoint = _checkpoint_in(Path(ckpt_path).expanduser())
        if checkpoint is None:
            raise PrefoptError(
                f"ckpt_path={ckpt_path}: no checkpoint there; give a .ckpt file, or a run's "
                f"output folder holding {CHECKPOINT_DIR}/{LAST}"
            )
        return ResumePoint(checkpoint, read_run_file(checkpoint.parent))
    if not resume:
        return None
    output_dir = Path(output_dir)
    own = output_dir / CHECKPOINT_DIR
    if (own / LAST).is_file():
        if read_run_file(own).get("finished"):
            raise PrefoptError(
                f"resume=true: the run in {output_dir} finished already; nothing to resume"
            )
        return ResumePoint(own / LAST, read_run_file(own))
    # Hydra gives every launch a new folder (outputs/<date>/<time>): look at its siblings.
    root = output_dir.parent.parent
    candidates = [
        path
        for pattern in (f"*/*/{CHECKPOINT_DIR}/{LAST}", f"*/*/*/{CHECKPOINT_DIR}/{LAST}")
        for path in root.glob(pattern)
        if not _done(read_run_file(path.parent))
    ]
    if not candidates:
        raise PrefoptError(
            f"resume=true: no unfinished run with a checkpoint in {output_dir} or under {root}; "
            "start a new run without resume=true, or name one with ckpt_path=<run folder or .ckpt>"
        )
    checkpoint = max(candidates, key=lambda path: path.stat().st_mtime)
    return ResumePoint(checkpoint, read_run_file(checkpoint.parent))


def mark_resumed(point: ResumePoint, output_dir: str | Path) -> None:
    """Record in the interrupted run's folder that `output_dir` took over, so that a later
    `resume=true` does not pick the interrupted run again."""
    checkpoint_dir = point.checkpoint.parent
    if checkpoint_dir.name != CHECKPOINT_DIR or not (checkpoint_dir / RUN_FILE).is_file():
        return
    if checkpoint_dir.resolve() == (Path(output_dir) / CHECKPOINT_DIR).resolve():
        return
    write_run_file(checkpoint_dir.parent, resumed_by=str(Path(output_dir).resolve()))


@contextlib.contextmanager
def recorded_run(
    output_dir: str | Path,
    enabled: bool,
    resume: ResumePoint | None,
    run_id: str,
    tracking_uri: str,
):
    """Around a training: a resumed run first marks the checkpoint folder it continues from;
    with checkpoints `enabled`, `run.json` names the MLflow run while it trains and is marked
    `finished` once the block (fit and export) completed."""
    if resume:
        mark_resumed(resume, output_dir)
    if enabled:
        write_run_file(output_dir, run_id=run_id, tracking_uri=tracking_uri)
    yield
    if enabled:
        write_run_file(output_dir, finished=True)


def _done(run: dict[str, Any]) -> bool:
    return bool(run.get("finished") or run.get("resumed_by"))


def _checkpoint_in(path: Path) -> Path | None:
    for candidate in (path, path / LAST, path / CHECKPOINT_DIR / LAST):
        if candidate.is_file():
            return candidate
    return None
