"""Faults during training: non-finite losses and gradients, Ctrl-C and SIGTERM.

- `NonFiniteGuard` stops the run at the first NaN/inf loss (before backward) or gradient
  (before the optimizer step, so the weights never take a non-finite update), with a message
  naming the step and the likely causes. The checkpoint written before it stays the last good
  one; `train` ends the MLflow run FAILED. A check per step costs one gradient norm, far less
  than Lightning's `detect_anomaly`. The decision is collective: each rank's finding goes
  through the strategy's `reduce_boolean_decision` (one small all-reduce; nothing on one
  process), so every rank raises together: a rank that raised alone would leave the others
  waiting in the next collective (DDP's gradient all-reduce, FSDP's all-gathers) forever.
- `graceful_interrupts` handles Ctrl-C (SIGINT) and SIGTERM (a scheduler ending the job,
  `kill`) alike. During a training step the request waits for the step to end: the resume
  checkpoint (`checkpoint.ResumeCheckpoint`, which opens and closes that window with
  `defer_stops`) saves that step and stops the run at the next batch, so no progress is lost.
  Anywhere else (loading, validation, export), or at a second signal, KeyboardInterrupt is
  raised at once. Either way Lightning shuts down gracefully and the MLflow run ends KILLED
  instead of staying RUNNING; `resume=true` continues from the newest checkpoint.
"""

from __future__ import annotations

import contextlib
import logging
import os
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
        finite = bool(torch.isfinite(loss.detach()).all())
        if not _on_every_rank(trainer, finite):
            value = (
                loss.detach().float().item() if not finite else "finite here, not on another rank"
            )
            raise NonFiniteError(self._message(trainer, f"loss ({value})"))

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        if "16-mixed" in str(trainer.precision):
            return  # fp16's gradient scaler skips steps with inf gradients by design
        grads = [p.grad for p in pl_module.parameters() if p.grad is not None]
        # Every rank decides, with or without gradients of its own (FSDP shards them).
        finite = not grads or bool(torch.isfinite(torch.nn.utils.get_total_norm(grads)))
        if not _on_every_rank(trainer, finite):
            raise NonFiniteError(self._message(trainer, "gradient norm"))

    def _message(self, trainer, what: str) -> str:
        settings = ", ".join(f"{key}={value}" for key, value in self.hints.items())
        if self.checkpoint is not None and self.checkpoint.is_file():
            kept = (
                f"the last good checkpoint is {self.checkpoint}: continue from it with the "
                f"setting changed, e.g. ckpt_path={self.checkpoint} optim.lr=<lower>"
            )
        else:
            kept = "no checkpoint had been written yet"
        return (
            f"non-finite {what} at step {trainer.global_step} (epoch {trainer.current_epoch}); "
            f"training stopped before the weights were updated. Likely causes: a learning rate "
            f"too high, a β too large, fp16 overflow (use bf16-mixed or 32-true precision) or a "
            f"bad batch ({settings}); {kept}"
        )


def _on_every_rank(trainer, finite: bool) -> bool:
    """True when `finite` holds on every rank: one decision that all ranks take together."""
    return bool(trainer.strategy.reduce_boolean_decision(finite, all=True))


log = logging.getLogger("prefopt")


class _StopRequests:
    """Process-wide, as signal handlers are: whether a stop now waits for the step to end, and
    the signal that asked for one."""

    deferring = False
    requested: str | None = None
    announced = False  # whether the request has been logged

    @classmethod
    def reset(cls) -> None:
        cls.deferring, cls.requested, cls.announced = False, None, False


def defer_stops(deferring: bool) -> None:
    """Open (True) or close the window in which a stop request waits for the step's end."""
    _StopRequests.deferring = deferring


def stop_requested() -> bool:
    """Whether a signal asked for a stop; the first call that sees one logs it (a signal
    handler itself must not: logging there can re-enter a stream that is mid-write)."""
    if _StopRequests.requested is not None and not _StopRequests.announced:
        _StopRequests.announced = True
        log.warning(
            "%s: stopping once this step ends and its checkpoint is written "
            "(send it again to stop at once; resume=true continues)",
            _StopRequests.requested,
        )
    return _StopRequests.requested is not None


def _on_signal(signum, frame) -> None:
    name = signal.Signals(signum).name
    if _StopRequests.deferring and _StopRequests.requested is None:
        _StopRequests.requested = name
        # Acknowledge at once, as one unbuffered write: the handler may run while a logging
        # handler or `print` is inside the same buffered stream, and re-entering it raises.
        with contextlib.suppress(OSError):  # no stderr (a daemon): the log line still comes
            os.write(2, f"\n{name} received: the run stops once this step ends\n".encode())
        return
    raise KeyboardInterrupt(f"signal {signum} ({name})")


@contextlib.contextmanager
def graceful_interrupts():
    """Within the block, SIGINT and SIGTERM stop the run as the module docstring says."""
    _StopRequests.reset()
    try:
        previous = {sig: signal.signal(sig, _on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    except ValueError:  # not the main thread (e.g. a launcher's worker thread): leave it
        yield
        return
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        _StopRequests.reset()
