"""Which checkpoint a run continues from, and the `run.json` that lets later runs find it.

`<output_dir>/checkpoints/run.json` names the MLflow run (`run_id`, `tracking_uri`), so that a
resumed run logs into the same MLflow run, and its `lineage`: one id shared by a run and every
run that resumed it, wherever Hydra put their folders. `finished` is set once a run exported.

`resume=true` continues the newest sound checkpoint of an unfinished lineage: this run's
`output_dir` first, then its sibling run folders (Hydra gives every launch a new one) whose run
logged to the same MLflow store. Nothing
is ever written into another run's folder, so a run is passed over only once a run of its
lineage has a newer checkpoint or finished: a successor killed before its first checkpoint
leaves its predecessor's checkpoint on offer, after any number of kills. A checkpoint that
fails its content check (`checkpoint.checkpoint_damage`) is reported in one line, renamed
`*.corrupt`, and the next older one is offered (`previous.ckpt`, then other folders').

A job of a sweep (`--multirun`) continues only a checkpoint of the same job: `run.json` records
the job's swept values (`job`, from `SweepJob.identity`) when it starts, and a relaunched job is
offered only sibling folders whose `job` equals its own, whatever its job number (siblings of
every date under `multirun/`). A job with no such checkpoint starts fresh; one whose own job
finished is passed over (`ResumePoint.finished`: the relaunch leaves it alone). A folder whose
`run.json` predates `job` is never taken for a sweep job: continuing another job's weights with
this job's values would be silent, starting again is not (name it with `ckpt_path=`). A plain
run keeps the rule above: its relaunch may change e.g. `optim.lr` (`resume_config`).

"Newest" is a total order (`_newest_first`), so that the choice never rests on chance: the
checkpoint file's modification time first; among equal times (file systems that keep whole
seconds, or two seconds, make ties common) the run that started later (`started` in `run.json`,
the clock's time when it began, so not rounded to the file system's resolution), then
`last.ckpt` before `previous.ckpt` of one folder, then the path that sorts last (Hydra names
run folders by date and time).
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lightning.pytorch.utilities import rank_zero_only

from prefopt.errors import PrefoptError
from prefopt.files import atomic_write
from prefopt.training.checkpoint import (
    CHECKPOINT_DIR,
    LAST,
    PREVIOUS,
    RUN_FILE,
    checkpoint_damage,
    set_aside,
)

log = logging.getLogger("prefopt.resume")


@dataclass
class ResumePoint:
    checkpoint: Path
    run: dict[str, Any]
    """`run.json` of the interrupted run: its MLflow `run_id` and `tracking_uri` (may be empty)."""
    finished: bool = False
    """A sweep job's own run finished already: nothing to train, the relaunch passes it over."""

    def run_id_for(self, tracking_uri: str) -> str | None:
        """The MLflow run to continue: the interrupted run's, when it used the same store."""
        if self.run.get("tracking_uri") == tracking_uri:
            return self.run.get("run_id")
        return None

    @property
    def lineage(self) -> str:
        return lineage_of(self.checkpoint.parent, self.run)


def write_run_file(output_dir: str | Path, **fields: Any) -> None:
    """Add `fields` to the run's `run.json` (created if missing)."""
    path = Path(output_dir) / CHECKPOINT_DIR / RUN_FILE
    current = read_run_file(path.parent)
    current.update(fields)
    atomic_write(path, lambda handle: handle.write(json.dumps(current, indent=1).encode()))


def read_run_file(checkpoint_dir: Path) -> dict[str, Any]:
    try:
        return json.loads((checkpoint_dir / RUN_FILE).read_text())
    except (OSError, ValueError):
        return {}


def lineage_of(checkpoint_dir: Path, run: dict[str, Any], seen: frozenset = frozenset()) -> str:
    """The lineage a checkpoint folder belongs to. Folders written before lineages existed
    count as their successor's (`resumed_by`, set when it started), else as their own."""
    if run.get("lineage"):
        return run["lineage"]
    successor = run.get("resumed_by")
    if successor and successor not in seen:
        successor_dir = Path(successor) / CHECKPOINT_DIR
        return lineage_of(successor_dir, read_run_file(successor_dir), seen | {successor})
    return str(checkpoint_dir.resolve())


def checkpoints_in(checkpoint_dir: Path) -> list[Path]:
    """The folder's checkpoints, newest first."""
    return [path for path in (checkpoint_dir / LAST, checkpoint_dir / PREVIOUS) if path.is_file()]


def find_resume_point(
    output_dir: str | Path,
    resume: bool,
    ckpt_path: str | None,
    tracking_uri: str | None = None,
    job: dict[str, Any] | None = None,
) -> ResumePoint | None:
    """The checkpoint `ckpt_path=` names (refused in one line when damaged), or with
    `resume=true` the newest sound checkpoint of an unfinished run, as the module says.

    `tracking_uri`: only sibling folders whose run logged to this MLflow store are offered, so
    that an `output_dir` on a shared disk never picks up someone else's run (continuing means
    logging into the same MLflow run, which only the same store holds).

    `job`: a sweep job's identity (`SweepJob.identity`), None for a plain run: only folders of
    the same job are offered; none gives None (the job starts fresh), and a finished one a
    point with `finished` set (the job is passed over)."""
    if ckpt_path:
        return _named(ckpt_path)
    if not resume:
        return None
    output_dir = Path(output_dir)
    own = output_dir / CHECKPOINT_DIR
    if checkpoints_in(own) and (job is None or read_run_file(own).get("job") == job):
        if read_run_file(own).get("finished"):
            if job is not None:
                return _finished(checkpoints_in(own)[0], job)
            raise PrefoptError(
                f"resume=true: the run in {output_dir} finished already; nothing to resume"
            )
        if point := _first_sound(checkpoints_in(own)):
            return point
    # A sweep job's siblings: every job folder under multirun/ (<date>/<time>/<job>), so that a
    # sweep relaunched after midnight still finds its jobs; they are matched on `job`.
    root = output_dir.resolve().parents[2] if job is not None else output_dir.parent.parent
    folders = {
        folder
        for pattern in (f"*/*/{CHECKPOINT_DIR}", f"*/*/*/{CHECKPOINT_DIR}")
        for folder in root.glob(pattern)
    }
    runs = {folder: read_run_file(folder) for folder in folders}
    if tracking_uri is not None:
        runs = {
            folder: run for folder, run in runs.items() if run.get("tracking_uri") == tracking_uri
        }
    if job is not None:
        runs = {folder: run for folder, run in runs.items() if run.get("job") == job}
    finished = {lineage_of(folder, run) for folder, run in runs.items() if run.get("finished")}
    candidates = [
        path
        for folder, run in runs.items()
        if lineage_of(folder, run) not in finished
        for path in checkpoints_in(folder)
    ]
    candidates.sort(key=_newest_first, reverse=True)
    point = _first_sound(candidates)
    if point is None and job is not None:
        done = sorted(
            (path for folder, run in runs.items() if run.get("finished")
             for path in checkpoints_in(folder)),
            key=_newest_first,
        )  # fmt: skip
        if done:
            return _finished(done[-1], job)
        log.info("resume=true: no checkpoint of sweep job %s under %s; it starts fresh", job, root)
        return None
    if point is None:
        raise PrefoptError(
            f"resume=true: no unfinished run with a checkpoint in {output_dir} or under {root}"
            + (f" that logged to {tracking_uri}" if tracking_uri else "")
            + "; "
            "start a new run without resume=true, or name one with ckpt_path=<run folder or .ckpt>"
        )
    return point


@contextlib.contextmanager
def recorded_run(
    output_dir: str | Path,
    enabled: bool,
    resume: ResumePoint | None,
    run_id: str,
    tracking_uri: str,
    job: dict[str, Any] | None = None,
):
    """Around a training with checkpoints `enabled`: `run.json` names the MLflow run and the
    lineage (the resumed run's, else a new one) while it trains, and is marked `finished` once
    the block (fit and export) completed. Checkpoints of another run left in `output_dir` are
    removed first: they would otherwise be offered as this run's. `job`: a sweep job's
    identity (`SweepJob.identity`), recorded as `job`."""
    writes = enabled and rank_zero_only.rank == 0
    if writes:
        own = Path(output_dir) / CHECKPOINT_DIR
        if resume is None or resume.checkpoint.parent.resolve() != own.resolve():
            for stale in checkpoints_in(own):
                stale.unlink()
                log.info("removed %s: a checkpoint of the run this one replaces", stale)
        run = {"run_id": run_id, "tracking_uri": tracking_uri, "started": time.time()}
        run["lineage"] = resume.lineage if resume else uuid.uuid4().hex
        if job is not None:  # which sweep job this is, so that a relaunch finds its own
            run["job"] = job
        if resume:
            run["resumed_from"] = str(resume.checkpoint.resolve())
        path = own / RUN_FILE
        atomic_write(path, lambda handle: handle.write(json.dumps(run, indent=1).encode()))
    yield
    if writes:
        write_run_file(output_dir, finished=True)


def _named(ckpt_path: str) -> ResumePoint:
    path = Path(ckpt_path).expanduser()
    checkpoint = next(
        (c for c in (path, path / LAST, path / CHECKPOINT_DIR / LAST) if c.is_file()), None
    )
    if checkpoint is None:
        raise PrefoptError(
            f"ckpt_path={ckpt_path}: no checkpoint there; give a .ckpt file, or a run's "
            f"output folder holding {CHECKPOINT_DIR}/{LAST}"
        )
    if problem := checkpoint_damage(checkpoint):
        older = checkpoint.with_name(PREVIOUS)
        hint = f"name an older one ({older})" if older.is_file() else "name an older checkpoint"
        raise PrefoptError(f"ckpt_path={ckpt_path}: {checkpoint} is {problem}; {hint}")
    return ResumePoint(checkpoint, read_run_file(checkpoint.parent))


def _finished(checkpoint: Path, job: dict[str, Any]) -> ResumePoint:
    log.info("resume=true: sweep job %s finished already (%s); left as it is", job, checkpoint)
    return ResumePoint(checkpoint, read_run_file(checkpoint.parent), finished=True)


def _first_sound(checkpoints: list[Path]) -> ResumePoint | None:
    """The first checkpoint that passes its content check; each damaged one before it is set
    aside with a one-line warning."""
    for checkpoint in checkpoints:
        try:
            problem = checkpoint_damage(checkpoint)
            if problem is None:
                return ResumePoint(checkpoint, read_run_file(checkpoint.parent))
            aside = set_aside(checkpoint)
        except FileNotFoundError:  # set aside meanwhile by another rank
            continue
        log.warning(
            "%s is %s: moved it to %s; trying an older checkpoint", checkpoint, problem, aside
        )
    return None


def _newest_first(checkpoint: Path) -> tuple[float, float, bool, str]:
    """The sort key of "newest" (highest first), as the module says: modification time, the
    run's start (0 for a `run.json` written before starts were recorded), `last.ckpt` over
    `previous.ckpt`, then the path."""
    try:
        modified = checkpoint.stat().st_mtime
    except FileNotFoundError:  # set aside meanwhile by another rank
        modified = 0.0
    started = read_run_file(checkpoint.parent).get("started")
    if not isinstance(started, int | float):
        started = 0.0
    return modified, float(started), checkpoint.name == LAST, str(checkpoint)
