"""Faults during training: non-finite losses and gradients, SIGTERM.

- `NonFiniteGuard` stops the run at the first NaN/inf loss (before backward) or gradient
  (before the optimizer step, so the weights never take a non-finite update), with a message
  naming the step and the likely causes. The checkpoint written before it stays the last good
  one; `train` ends the MLflow run FAILED. A check per step costs one gradient norm, far less
  than Lightning's `detect_anomaly`.
- `sigterm_as_interrupt` makes SIGTERM (a scheduler ending the job, `kill`) behave like Ctrl-C:
  Lightning shuts down gracefully and the MLflow run ends KILLED instead of staying RUNNING.
"""

from __future__ import annotations

import contextlib
import signal
from pathlib import Path

import lightning as L
import torch

from prefopt.errors import PrefoptError


class NonFiniteError(PrefoptError):
    pass


class NonFiniteGuard(L.Callback):
    def __init__(self, hints: dict[str, object], checkpoint: str | Path | None = None):
        """`hints`: the settings to name in the message (`optim.lr`, `loss.beta`, ...)."""
        self.hints = hints
        self.checkpoint = Path(checkpoint) if checkpoint else None

    def on_before_backward(self, trainer, pl_module, loss: torch.Tensor) -> None:
        if not torch.isfinite(loss.detach()).all():
            raise NonFiniteError(self._message(trainer, f"loss ({loss.detach().float().item()})"))

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        if "16-mixed" in str(trainer.precision):
            return  # fp16's gradient scaler skips steps with inf gradients by design
        grads = [p.grad for p in pl_module.parameters() if p.grad is not None]
        if grads and not torch.isfinite(torch.nn.utils.get_total_norm(grads)):
            raise NonFiniteError(self._message(trainer, "gradient norm"))

    def _message(self, trainer, what: str) -> str:
        settings = ", ".join(f"{key}={value}" for key, value in self.hints.items())
        if self.checkpoint is not None and self.checkpoint.is_file():
            kept = f"the last good checkpoint is {self.checkpoint} (continue with ckpt_path=…)"
        else:
            kept = "no checkpoint had been written yet"
        return (
            f"non-finite {what} at step {trainer.global_step} (epoch {trainer.current_epoch}); "
            f"training stopped before the weights were updated. Likely causes: a learning rate "
            f"too high, a β too large, fp16 overflow (use bf16-mixed or 32-true precision) or a "
            f"bad batch ({settings}); {kept}"
        )


@contextlib.contextmanager
def sigterm_as_interrupt():
    """Within the block, SIGTERM raises KeyboardInterrupt in the main thread."""

    def interrupt(signum, frame):
        raise KeyboardInterrupt(f"signal {signum} (SIGTERM)")

    try:
        previous = signal.signal(signal.SIGTERM, interrupt)
    except ValueError:  # not the main thread (e.g. a launcher's worker thread): leave it
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
