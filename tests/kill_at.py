"""Kill this process with SIGKILL at a named phase of a run: `python kill_at.py PHASE [ARGS]`
runs `python -m prefopt.train ARGS` and dies the moment PHASE is reached (exit status -9).

Test-only: the kill is installed by wrapping one prefopt (or library) function in this child
process, so production code carries no hook. Each phase dies at the point where a half-written
file would do the most harm: after the work of that phase, before its result is renamed into
place or completed. A test that finds the process exited otherwise knows the phase was never
reached (the wrapped function moved): it fails instead of passing vacuously.
"""

from __future__ import annotations

import functools
import os
import runpy
import signal
import sys
from pathlib import Path

PHASES = (
    "reading",
    "tokenizing",
    "reference precompute",
    "training",
    "checkpoint write",
    "export",
    "sweep summary",
)


def die() -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def _after(owner, name: str, when=lambda *args, **kwargs: True) -> None:
    """Replace `owner.name` with a function that calls it, then dies if `when(...)`."""
    original = getattr(owner, name)

    @functools.wraps(original)
    def wrapper(*args, **kwargs):
        result = original(*args, **kwargs)
        if when(*args, **kwargs):
            die()
        return result

    setattr(owner, name, wrapper)


def _before_rename(target_name: str, occurrence: int = 1) -> None:
    """Die when a finished temporary file is about to be renamed to `target_name` for the
    `occurrence`-th time: the file is complete and fsynced, its final name not yet taken."""
    original, seen = os.replace, [0]

    def replace(src, dst, *args, **kwargs):
        if Path(dst).name == target_name or Path(dst).suffix == target_name:
            seen[0] += 1
            if seen[0] == occurrence:
                die()
        return original(src, dst, *args, **kwargs)

    os.replace = replace


def install(phase: str) -> None:
    """Arrange for this process to SIGKILL itself at `phase` (one of `PHASES`)."""
    if phase == "reading":  # rows read into the scratch table, the staging entry begun
        import prefopt.data.prepare as prepare

        _after(prepare, "load_rows")
    elif phase == "tokenizing":  # the first batch of rows tokenized, its Arrow file open
        from prefopt.data.batch_job import BatchJob

        _after(BatchJob, "__call__")
    elif phase == "reference precompute":  # the log-prob table written, not yet renamed
        _before_rename(".pt")
    elif phase == "training":  # in the third optimizer step, after the checkpoint of step 2
        from prefopt.training.module import PreferenceModule

        _after(PreferenceModule, "training_step", lambda self, batch, index: index == 2)
    elif phase == "checkpoint write":  # the second checkpoint written, not yet renamed
        _before_rename("last.ckpt", occurrence=2)
    elif phase == "export":  # the policy's weights written, the tokenizer not yet
        from transformers import PreTrainedModel

        _after(PreTrainedModel, "save_pretrained")
    elif phase == "sweep summary":  # the table and the first plot written, the rest not
        import prefopt.tracking.report as report

        _after(report, "plot_key")
    else:
        raise SystemExit(f"kill_at.py: unknown phase {phase!r}; one of {PHASES}")


if __name__ == "__main__":
    install(sys.argv[1])
    sys.argv = ["prefopt.train", *sys.argv[2:]]
    runpy.run_module("prefopt.train", run_name="__main__", alter_sys=True)
