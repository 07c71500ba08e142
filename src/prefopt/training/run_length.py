"""What a user sees of a run's length: a progress bar that counts what the run counts, and a
validation at the end of every run.

- `loop=online` trains one epoch per round with `max_epochs=-1` (rounds go on until
  `trainer.max_steps`); Lightning's Rich progress bar then reads "Epoch 3/-2". `RunProgressBar`
  reads "Round 4/16" there (rounds counted from 1, their number from `max_steps`), and for an
  offline run with `max_epochs=-1` "Epoch 3/15" from `max_steps` likewise.
- A run whose last step is not a validation step (`trainer.max_steps` below the validation
  interval, or not a multiple of it) would end with "final validation metrics: (none)", or with
  the metrics of a policy several steps older than the exported one. `ValidateAtTheEnd` asks
  Lightning to validate after the last step, through its public `trainer.should_stop` (set on
  the last step, when training ends anyway; Lightning validates a step at which it stops). A
  last step that validates anyway is validated once.
"""

from __future__ import annotations

import math

import lightning as L


class ValidateAtTheEnd(L.Callback):
    """Put it before the checkpoint callback: a checkpoint of the last step is then written
    after its validation, as for any validated step (`checkpoint.validation_follows`)."""

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if is_last_step(trainer, batch_idx):
            trainer.should_stop = True


def is_last_step(trainer, batch_idx: int) -> bool:
    """Whether the batch that just ended was the run's last optimizer step: `max_steps`
    reached, or the last batch of the last epoch."""
    if trainer.max_steps is not None and 0 < trainer.max_steps <= trainer.global_step:
        return True
    batches = trainer.num_training_batches
    epochs = trainer.max_epochs  # -1 (online rounds): epochs go on until max_steps
    last_epoch = epochs is not None and 0 < epochs <= trainer.current_epoch + 1
    return last_epoch and isinstance(batches, int) and batch_idx + 1 >= batches


def progress_bar() -> L.Callback | None:
    """The run's progress bar, where Lightning would show a Rich one; None where it would show
    tqdm's (without `rich`), whose "Epoch 3" has no total to get wrong."""
    try:
        import rich  # noqa: F401
    except ImportError:
        return None
    from lightning.pytorch.callbacks import RichProgressBar

    class RunProgressBar(RichProgressBar):
        """Lightning's Rich bar, its description counting rounds or epochs that end."""

        def _get_train_description(self, current_epoch: int) -> str:
            # Lightning's one place for the description (tests/training/test_lightning_internals.py).
            return epoch_description(self.trainer, current_epoch, self.validation_description)

    return RunProgressBar()


def epoch_description(trainer, current_epoch: int, validation_description: str = "") -> str:
    """ "Epoch 0/2" as Lightning writes it; with `max_epochs=-1` the total from `max_steps`,
    and "Round 4/16" (counted from 1) when the data module's epochs are rounds."""
    rounds = getattr(trainer.datamodule, "epoch_name", None) == "Round"
    total = trainer.max_epochs
    if total is None or total < 0:
        total = epochs_until_max_steps(trainer)
    if rounds:
        text = f"Round {current_epoch + 1}" + (f"/{total}" if total else "")
    else:
        text = f"Epoch {current_epoch}" + (f"/{total - 1}" if total else "")
    return f"{text:{len(validation_description)}}"  # as wide as "Validation": no flicker


def epochs_until_max_steps(trainer) -> int | None:
    """Epochs (online: rounds) that `max_steps` takes, each `num_training_batches` long."""
    batches = trainer.num_training_batches
    steps = trainer.max_steps
    if not steps or steps < 0 or not isinstance(batches, int) or batches <= 0:
        return None
    steps_per_epoch = max(1, batches // max(1, trainer.accumulate_grad_batches))
    return math.ceil(steps / steps_per_epoch)
