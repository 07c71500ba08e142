"""Issue 23: a resume chain that never loses its checkpoint, verified checkpoints, and Ctrl-C.

Runs are killed for real (`python -m prefopt.train` in a subprocess, SIGKILL or SIGINT when a
file it writes appears) or stopped in-process by a signal sent at a chosen step; each resumed
run must end with the final metrics of one run that was never interrupted (same seed).
"""

from __future__ import annotations

import io
import json
import logging
import math
import os
import signal
import struct
import subprocess
import zipfile
from pathlib import Path

import lightning as L
import pytest
import torch
from mlflow.tracking import MlflowClient

from prefopt.errors import PrefoptError
from prefopt.tracking import run_datasets
from prefopt.train import train
from prefopt.training import checkpoint as checkpoint_module
from prefopt.training.checkpoint import (
    CHECKPOINT_DIR,
    LAST,
    PREVIOUS,
    RUN_FILE,
    checkpoint_damage,
    safe_load,
    write_checkpoint,
)
from prefopt.training.resume import find_resume_point, write_run_file

from ..conftest import CONF_DIR
from ..test_reliability import RESUME_ARGS, runs_in, start_training, user_error, wait_for


def compose(tmp: Path, toy_cache, reference_cache, *overrides: str):
    """The config `python -m prefopt.train` composes for `RESUME_ARGS` and `overrides`, with
    the session's toy world and reference cache and an MLflow store in `tmp`."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from prefopt.config.schema import register_configs

    register_configs()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return hydra_compose(
            "config", overrides=[*cli_args(tmp, toy_cache, reference_cache), *overrides]
        )


def cli_args(tmp: Path, toy_cache, reference_cache) -> list[str]:
    return [
        *RESUME_ARGS,
        f"toy.cache_dir={toy_cache}",
        f"reference.cache_dir={reference_cache}",
        f"logger.tracking_uri=sqlite:///{tmp / 'mlflow.db'}",
    ]


def run_folder(tmp: Path) -> Path:
    """An output folder as deep as Hydra's (`outputs/<date>/<time>`): `resume=true` looks for
    other runs two levels up, which must be this test's folder, not pytest's shared one."""
    return tmp / "outputs" / "2026-01-01" / "10-00-00"


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, toy_cache, reference_cache) -> dict[str, float]:
    """The final metrics of the run the interrupted ones must end up equal to."""
    tmp = tmp_path_factory.mktemp("uninterrupted")
    return train(compose(tmp, toy_cache, reference_cache, f"output_dir={run_folder(tmp)}")).metrics


def assert_ends_as_if_never_interrupted(metrics: dict[str, float], uninterrupted) -> None:
    compared = [key for key in uninterrupted if key.startswith(("val/", "eval/"))]
    assert compared
    for key in compared:
        assert math.isclose(metrics[key], uninterrupted[key], rel_tol=1e-4, abs_tol=1e-5), key


def the_one_run(tmp: Path):
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("prefopt").experiment_id])
    assert len(runs) == 1, [(r.info.run_id, r.info.status) for r in runs]
    return client, runs[0]


def step_of(checkpoint: Path) -> int:
    return safe_load(checkpoint)["global_step"]


# ---------------------------------------------------------------------------------------------
# A chain of kills


def test_a_successor_killed_before_its_first_checkpoint_leaves_the_first_one_on_offer(
    tmp_path, toy_cache, reference_cache, uninterrupted
):
    """Run a is killed -9 after its first checkpoint; run b (resume=true, a new Hydra folder)
    is killed -9 right after it started, before a checkpoint of its own; run c (resume=true)
    continues a's checkpoint to the end, in the one MLflow run, with the uninterrupted run's
    final metrics."""
    args = cli_args(tmp_path, toy_cache, reference_cache)
    day = tmp_path / "outputs" / "2026-01-01"

    def killed_once(name: str, waits_for: str, *extra: str) -> Path:
        out = day / name
        proc = start_training(
            *args, f"output_dir={out}", *extra, cwd=tmp_path,
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )  # fmt: skip
        wait_for(out / CHECKPOINT_DIR / waits_for, proc, timeout=300)
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(timeout=30) == -signal.SIGKILL, proc.stderr.read()[-3000:]
        return out / CHECKPOINT_DIR

    a = killed_once("a", LAST)
    killed_at = step_of(a / LAST)
    assert 3 <= killed_at < 10
    b = killed_once("b", RUN_FILE, "resume=true")
    assert not (b / LAST).exists()  # killed before its first checkpoint
    run_a, run_b = (json.loads((folder / RUN_FILE).read_text()) for folder in (a, b))
    assert run_b["lineage"] == run_a["lineage"] and run_b["run_id"] == run_a["run_id"]

    resumed = train(
        compose(tmp_path, toy_cache, reference_cache, f"output_dir={day / 'c'}", "resume=true")
    )

    client, run = the_one_run(tmp_path)
    assert (run.info.run_id, run.info.status) == (run_a["run_id"], "FINISHED")
    assert resumed.run_id == run_a["run_id"]
    assert run.data.tags["prefopt.resumed_from"] == str((a / LAST).resolve())
    steps = {m.step for m in client.get_metric_history(run.info.run_id, "train/loss")}
    assert set(range(10)) - {killed_at - 1} <= steps  # see the kill -9 test in test_reliability
    assert_ends_as_if_never_interrupted(resumed.metrics, uninterrupted)
    assert len(run.inputs.dataset_inputs) == 2  # train and validation, none logged twice
    assert sorted(run_datasets(run)) == ["train", "validation"]
    assert step_of(day / "c" / CHECKPOINT_DIR / LAST) == 10
    assert json.loads((day / "c" / CHECKPOINT_DIR / RUN_FILE).read_text())["finished"] is True
    # the chain has finished: nothing of it is offered again
    with pytest.raises(PrefoptError, match="no unfinished run with a checkpoint"):
        find_resume_point(day / "d", resume=True, ckpt_path=None)


# ---------------------------------------------------------------------------------------------
# Damaged checkpoints


class StopAtStep(L.Callback):
    """Ctrl-C as a test can raise it: KeyboardInterrupt when `step` steps are done."""

    def __init__(self, step: int):
        self.step = step

    def on_train_batch_start(self, trainer, *args):
        if trainer.global_step == self.step:
            raise KeyboardInterrupt


def with_callback(monkeypatch, callback: L.Callback) -> None:
    import prefopt.training.tasks as train_module  # its builders call build_callbacks

    build = train_module.build_callbacks
    monkeypatch.setattr(train_module, "build_callbacks", lambda *a: [*build(*a), callback])


@pytest.mark.slow  # two trainings (~1 min on 2 busy cores); the unit test below is the fast one
def test_a_truncated_newest_checkpoint_is_set_aside_and_the_previous_one_continues(
    tmp_path, toy_cache, reference_cache, uninterrupted, monkeypatch, caplog
):
    out = run_folder(tmp_path)
    cfg = compose(tmp_path, toy_cache, reference_cache, f"output_dir={out}")
    with monkeypatch.context() as patch:
        with_callback(patch, StopAtStep(7))
        with pytest.raises(SystemExit):
            train(cfg)
    folder = out / CHECKPOINT_DIR
    assert (step_of(folder / PREVIOUS), step_of(folder / LAST)) == (3, 6)
    whole = (folder / LAST).read_bytes()
    (folder / LAST).write_bytes(whole[: len(whole) // 2])

    with caplog.at_level(logging.WARNING, logger="prefopt.resume"):
        resumed = train(
            compose(tmp_path, toy_cache, reference_cache, f"output_dir={out}", "resume=true")
        )

    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    warnings = [w for w in warnings if str(folder / LAST) in w]
    assert len(warnings) == 1 and "truncated" in warnings[0], warnings
    assert (folder / (LAST + ".corrupt")).stat().st_size == len(whole) // 2
    _, run = the_one_run(tmp_path)
    assert run.info.status == "FINISHED"
    assert run.data.tags["prefopt.resumed_from"] == str((folder / PREVIOUS).resolve())
    assert step_of(folder / LAST) == 10
    assert_ends_as_if_never_interrupted(resumed.metrics, uninterrupted)


def damaged(kind: str, whole: bytes) -> bytes:
    if kind == "truncated":
        return whole[:-1]
    if kind == "garbage":
        return os.urandom(len(whole))
    with zipfile.ZipFile(io.BytesIO(whole)) as archive:
        header = next(i for i in archive.infolist() if i.filename.endswith("data/0")).header_offset
    name_length, extra_length = struct.unpack("<HH", whole[header + 26 : header + 30])
    flipped = bytearray(whole)  # one byte of the tensor's data changed
    flipped[header + 30 + name_length + extra_length + 100] ^= 0xFF
    return bytes(flipped)


@pytest.mark.parametrize("kind", ["truncated", "garbage", "flipped"])
def test_every_kind_of_damage_is_found_and_the_older_checkpoint_offered(tmp_path, kind, caplog):
    folder = run_folder(tmp_path) / CHECKPOINT_DIR
    write_checkpoint({"global_step": 3, "weights": torch.arange(5000.0)}, folder / LAST)
    write_checkpoint({"global_step": 6, "weights": torch.arange(5000.0) * 2}, folder / LAST)
    assert checkpoint_damage(folder / LAST) is None
    (folder / LAST).write_bytes(damaged(kind, (folder / LAST).read_bytes()))
    if kind == "flipped":  # what torch.load alone would have trained on
        assert not torch.equal(safe_load(folder / LAST)["weights"], torch.arange(5000.0) * 2)

    problem = checkpoint_damage(folder / LAST)
    point = find_resume_point(run_folder(tmp_path), resume=True, ckpt_path=None)

    assert problem is not None
    assert point.checkpoint == folder / PREVIOUS and step_of(point.checkpoint) == 3
    assert not (folder / LAST).exists() and (folder / (LAST + ".corrupt")).exists()
    assert [r.getMessage() for r in caplog.records] == [
        f"{folder / LAST} is {problem}: moved it to {folder / LAST}.corrupt; "
        "trying an older checkpoint"
    ]


def test_a_kill_between_the_renames_of_a_write_leaves_a_whole_checkpoint(tmp_path, monkeypatch):
    folder = run_folder(tmp_path) / CHECKPOINT_DIR
    write_checkpoint({"global_step": 3}, folder / LAST)
    write_checkpoint({"global_step": 6}, folder / LAST)
    renames = []

    def killed_after_one_rename(src, dst):
        if renames:
            raise SystemExit("killed")
        renames.append(dst)
        os.rename(src, dst)

    monkeypatch.setattr(checkpoint_module.os, "replace", killed_after_one_rename)
    with pytest.raises(SystemExit):
        write_checkpoint({"global_step": 9}, folder / LAST)
    monkeypatch.undo()

    assert renames == [folder / PREVIOUS] and not (folder / LAST).exists()
    point = find_resume_point(run_folder(tmp_path), resume=True, ckpt_path=None)
    assert point.checkpoint == folder / PREVIOUS and step_of(point.checkpoint) == 6
    assert sorted(p.name for p in folder.iterdir()) == [PREVIOUS]  # no temporary file left
    # a kill -9 mid-write leaves its temporary file (no `finally` runs): the next write removes it
    (folder / f".{LAST}.99999.tmp").write_bytes(b"half a checkpoint")
    write_checkpoint({"global_step": 9}, folder / LAST)
    assert sorted(p.name for p in folder.iterdir()) == [LAST, PREVIOUS]
    assert (step_of(folder / PREVIOUS), step_of(folder / LAST)) == (6, 9)


def test_a_damaged_checkpoint_named_by_ckpt_path_is_refused_in_one_line(
    tmp_path, toy_cache, reference_cache, capsys
):
    old = run_folder(tmp_path).with_name("09-00-00")
    folder = old / CHECKPOINT_DIR
    write_checkpoint({"global_step": 3}, folder / LAST)
    write_checkpoint({"global_step": 6}, folder / LAST)
    (folder / LAST).write_bytes(b"\0" * 100)
    cfg = compose(
        tmp_path,
        toy_cache,
        reference_cache,
        f"ckpt_path={old}",
        f"output_dir={run_folder(tmp_path)}",
    )
    line = user_error(capsys, train, cfg)
    assert line == (
        f"prefopt: error: ckpt_path={old}: {folder / LAST} is truncated or not a "
        f"checkpoint (100 bytes; File is not a zip file); name an older one ({folder / PREVIOUS})"
    )
    assert not (tmp_path / "mlflow.db").exists()  # refused before the MLflow run started
    assert (folder / LAST).exists()  # a file the user named is never moved


# ---------------------------------------------------------------------------------------------
# Ctrl-C and SIGTERM


class SignalDuringStep(L.Callback):
    """Sends `signum` to this process as the step after `step` starts."""

    def __init__(self, signum: int, step: int):
        self.signum, self.step = signum, step

    def on_train_batch_start(self, trainer, *args):
        if trainer.global_step == self.step:
            os.kill(os.getpid(), self.signum)


@pytest.mark.parametrize(
    "signum",
    [signal.SIGINT, signal.SIGTERM],  # ~25 s each; SIGTERM is what a cluster's scheduler sends
    ids=["SIGINT", "SIGTERM"],
)
def test_a_signal_during_a_step_saves_that_step_then_ends_the_run_killed(
    tmp_path, toy_cache, reference_cache, monkeypatch, signum
):
    """Checkpoints every 3 steps; the signal arrives during step 5, which a validation
    follows: the step and its validation complete, step 5 is saved, and the run stops."""
    out = run_folder(tmp_path)
    cfg = compose(tmp_path, toy_cache, reference_cache, f"output_dir={out}", "eval.num_prompts=0")
    with_callback(monkeypatch, SignalDuringStep(signum, 4))
    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    with pytest.raises(SystemExit):
        train(cfg)
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before
    client, runs = runs_in(cfg)
    assert [r.info.status for r in runs] == ["KILLED"]
    assert step_of(out / CHECKPOINT_DIR / LAST) == 5
    steps = {m.step for m in client.get_metric_history(runs[0].info.run_id, "train/loss")}
    assert steps == set(range(5))  # nothing since the checkpoint is lost, nothing after it ran
    assert "val/loss" in runs[0].data.metrics


@pytest.mark.slow  # a subprocess and two trainings; the in-process SIGINT test is the fast one
def test_ctrl_c_on_the_command_line_saves_stops_killed_and_resumes_as_if_never_stopped(
    tmp_path, toy_cache, reference_cache, uninterrupted
):
    out = run_folder(tmp_path)
    args = [*cli_args(tmp_path, toy_cache, reference_cache), f"output_dir={out}"]
    log = tmp_path / "output.log"
    with open(log, "w") as handle:  # a file, not a pipe nobody reads while it runs
        proc = start_training(*args, cwd=tmp_path, stdout=handle, stderr=subprocess.STDOUT)
    wait_for(out / CHECKPOINT_DIR / LAST, proc, timeout=300)
    proc.send_signal(signal.SIGINT)
    proc.wait(timeout=120)
    output = log.read_text()
    assert proc.returncode == 1, output[-3000:]
    assert "SIGINT: stopping once this step ends" in output and "Traceback" not in output

    client, run = the_one_run(tmp_path)
    assert run.info.status == "KILLED"
    stopped_at = step_of(out / CHECKPOINT_DIR / LAST)
    logged = {m.step for m in client.get_metric_history(run.info.run_id, "train/loss")}
    assert 3 < stopped_at < 10 and logged == set(range(stopped_at))  # no step lost

    resumed = train(
        compose(tmp_path, toy_cache, reference_cache, f"output_dir={out}", "resume=true")
    )

    _, run = the_one_run(tmp_path)
    assert run.info.status == "FINISHED" and resumed.run_id == run.info.run_id
    assert_ends_as_if_never_interrupted(resumed.metrics, uninterrupted)


class _OneWriterStream(io.StringIO):
    """A stream that, like `io.BufferedWriter`, refuses a write that starts inside another;
    the first write sends `signum` to this process, as a Ctrl-C arriving mid-log would."""

    def __init__(self, signum: int):
        super().__init__()
        self.signum, self.writing, self.sent = signum, False, False

    def write(self, text: str) -> int:
        if self.writing:
            raise RuntimeError("reentrant call inside the log stream")
        self.writing = True
        try:
            if not self.sent:
                self.sent = True
                os.kill(os.getpid(), self.signum)
            return super().write(text)
        finally:
            self.writing = False


def test_a_signal_arriving_while_a_log_line_is_written_does_not_reenter_the_stream():
    """The CI failure this guards: Ctrl-C landed while the checkpoint's log line was being
    flushed, the handler logged to the same stream, and a traceback was printed."""
    from prefopt.training.faults import defer_stops, graceful_interrupts, stop_requested

    stream = _OneWriterStream(signal.SIGINT)
    handler = logging.StreamHandler(stream)
    handler.handleError = lambda record: (_ for _ in ()).throw(RuntimeError("logging error"))
    logger = logging.getLogger("prefopt")
    logger.addHandler(handler)
    try:
        with graceful_interrupts():
            defer_stops(True)
            logger.warning("checkpoint at step 4")  # the signal arrives inside this write
            assert stop_requested()
    finally:
        logger.removeHandler(handler)
    lines = stream.getvalue().splitlines()
    assert lines[0] == "checkpoint at step 4" and lines[1].startswith("SIGINT: stopping once")


def test_a_second_signal_or_one_outside_a_step_stops_at_once(caplog, capfd):
    from prefopt.training.faults import defer_stops, graceful_interrupts, stop_requested

    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    with graceful_interrupts():
        with pytest.raises(KeyboardInterrupt, match="SIGINT"):
            os.kill(os.getpid(), signal.SIGINT)  # not within a step: at once
        defer_stops(True)  # a step is running
        os.kill(os.getpid(), signal.SIGTERM)
        assert "SIGTERM received: the run stops once this step ends" in capfd.readouterr().err
        assert not caplog.records  # logged by the step's end, not by the handler
        assert stop_requested() and stop_requested()
        with pytest.raises(KeyboardInterrupt, match="SIGTERM"):
            os.kill(os.getpid(), signal.SIGTERM)  # asked twice: at once
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before
    assert not stop_requested()
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == [
        "SIGTERM: stopping once this step ends and its checkpoint is written "
        "(send it again to stop at once; resume=true continues)"
    ]


def test_resume_true_passes_over_sibling_runs_of_another_mlflow_store(tmp_path):
    """On a shared disk, `resume=true` never continues a run that logged elsewhere: only the
    sibling folders whose `run.json` names this run's store are offered."""

    def killed_run(name, store, modified):
        out = tmp_path / "outputs" / name
        (out / CHECKPOINT_DIR).mkdir(parents=True)
        torch.save({"global_step": 1}, out / CHECKPOINT_DIR / LAST)
        write_run_file(out, run_id=name, tracking_uri=store, lineage=name)
        os.utime(out / CHECKPOINT_DIR / LAST, (modified, modified))
        return out

    # the other store's run is the newest by a minute: without the store filter it would win
    mine = killed_run("2025-01-01/10-00-00", "sqlite:////me/mlflow.db", 1_700_000_000)
    killed_run("2025-01-01/11-00-00", "sqlite:////someone-else/mlflow.db", 1_700_000_060)
    new = tmp_path / "outputs" / "2025-01-02" / "08-00-00"
    point = find_resume_point(new, True, None, "sqlite:////me/mlflow.db")
    assert point.checkpoint == mine / CHECKPOINT_DIR / LAST
    with pytest.raises(PrefoptError, match="that logged to sqlite:////third/mlflow.db"):
        find_resume_point(new, True, None, "sqlite:////third/mlflow.db")


def test_among_equal_modification_times_resume_picks_by_a_documented_order(tmp_path):
    """On a file system that keeps whole (or two) seconds, checkpoints written close together
    share one modification time: the choice is then the run that started later (`started` in
    `run.json`), else the path that sorts last (Hydra's date/time names), never chance."""
    store = "sqlite:////me/mlflow.db"
    same_time = 1_700_000_000
    names = [f"2025-01-01/10-00-{second:02d}" for second in range(12)]

    def killed_runs(root: Path, started: dict[str, float]) -> None:
        for name in names:
            out = root / "outputs" / name
            (out / CHECKPOINT_DIR).mkdir(parents=True)
            for file in (PREVIOUS, LAST):
                torch.save({"global_step": 1}, out / CHECKPOINT_DIR / file)
                os.utime(out / CHECKPOINT_DIR / file, (same_time, same_time))
            fields = {"started": started[name]} if name in started else {}
            write_run_file(out, run_id=name, tracking_uri=store, lineage=name, **fields)

    def picked(root: Path) -> Path:
        new = root / "outputs" / "2025-01-02" / "08-00-00"
        return find_resume_point(new, True, None, store).checkpoint

    # run.json files of before starts were recorded: the path decides, last.ckpt of that folder
    killed_runs(tmp_path / "old", {})
    assert picked(tmp_path / "old") == tmp_path / "old/outputs" / names[-1] / CHECKPOINT_DIR / LAST
    # recorded starts decide before the path (the latest start is not the last path here)
    starts = {name: same_time - 3600 + 7 * ((5 * i) % 12) for i, name in enumerate(names)}
    latest = max(starts, key=starts.get)
    assert latest not in (names[0], names[-1])
    killed_runs(tmp_path / "new", starts)
    assert picked(tmp_path / "new") == tmp_path / "new/outputs" / latest / CHECKPOINT_DIR / LAST
