"""A killed sweep relaunched with `--multirun ... resume=true`: each job continues its own
checkpoint (the same swept values, whatever its job number), a finished job is left as it is,
a job that never started starts fresh. Before this, every relaunched job continued the newest
unfinished checkpoint under `multirun/<date>/`, whichever job wrote it.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient
from omegaconf import OmegaConf

from prefopt.tracking.sweep import SweepJob
from prefopt.training.resume import find_resume_point, read_run_file, recorded_run

from ..conftest import SMALL_TOY
from ..test_reliability import cli_env, start_training

STORE = "sqlite:///mlflow.db"


def killed_sweep(tmp_path: Path, date: str = "2026-01-31") -> Path:
    """Jobs 0 (β=0.05) and 1 (β=0.1) finished, job 2 (β=0.5) was killed with a checkpoint."""
    sweep = tmp_path / "multirun" / date / "10-42-07"
    for job, beta, finished in ((0, 0.05, True), (1, 0.1, True), (2, 0.5, False)):
        folder = sweep / str(job) / "checkpoints"
        folder.mkdir(parents=True)
        torch.save({"state_dict": {"w": torch.zeros(2)}}, folder / "last.ckpt")
        run = {"run_id": f"run{job}", "tracking_uri": STORE, "lineage": str(job)}
        run["job"] = {"loss.beta": beta}
        (folder / "run.json").write_text(json.dumps({**run, "finished": finished}))
    return sweep


def relaunched(tmp_path: Path, job: int, date: str = "2026-01-31") -> Path:
    return tmp_path / "multirun" / date / "11-00-00" / str(job)


def test_each_relaunched_job_continues_its_own_checkpoint_whatever_its_number(tmp_path):
    """The relaunch sweeps β=0.5,0.05,0.2: its job 0 is the old job 2 (continued), its job 1
    the old job 0 (finished: passed over), its job 2 never ran before (starts fresh)."""
    sweep = killed_sweep(tmp_path)
    point = find_resume_point(relaunched(tmp_path, 0), True, None, STORE, {"loss.beta": 0.5})
    assert point.checkpoint == sweep / "2" / "checkpoints" / "last.ckpt"
    assert (point.run["run_id"], point.finished) == ("run2", False)

    done = find_resume_point(relaunched(tmp_path, 1), True, None, STORE, {"loss.beta": 0.05})
    assert (done.run["run_id"], done.finished) == ("run0", True)

    assert find_resume_point(relaunched(tmp_path, 2), True, None, STORE, {"loss.beta": 0.2}) is None


def test_a_sweep_relaunched_on_the_next_day_finds_its_jobs(tmp_path):
    """Hydra puts the relaunch under multirun/<its own date>/: the jobs of every date count."""
    sweep = killed_sweep(tmp_path, date="2026-01-31")
    job = relaunched(tmp_path, 2, date="2026-02-01")
    point = find_resume_point(job, True, None, STORE, {"loss.beta": 0.5})
    assert point.checkpoint == sweep / "2" / "checkpoints" / "last.ckpt"


def test_a_run_json_without_the_job_is_never_taken_for_a_sweep_job(tmp_path):
    """A folder written before jobs were recorded might be any job's: a sweep job starts fresh
    rather than train another job's weights with its own values. A plain run (no job) still
    continues the newest unfinished checkpoint, as before."""
    sweep = killed_sweep(tmp_path)
    for job in (0, 1, 2):
        folder = sweep / str(job) / "checkpoints"
        run = read_run_file(folder)
        del run["job"]
        (folder / "run.json").write_text(json.dumps(run))
    assert find_resume_point(relaunched(tmp_path, 0), True, None, STORE, {"loss.beta": 0.5}) is None
    plain = find_resume_point(relaunched(tmp_path, 0), True, None, STORE)
    assert plain.checkpoint == sweep / "2" / "checkpoints" / "last.ckpt"


def test_the_job_is_recorded_in_run_json_when_the_run_starts(tmp_path):
    with recorded_run(tmp_path, True, None, "run9", STORE, {"loss.beta": 0.5}):
        assert read_run_file(tmp_path / "checkpoints")["job"] == {"loss.beta": 0.5}
    assert read_run_file(tmp_path / "checkpoints")["finished"] is True


def test_a_job_is_identified_by_its_swept_values_or_else_its_overrides():
    """Swept keys known (from the parent run): their values, a group by its option's name.
    Unknown (no parent run): every key the job overrides but resume and ckpt_path."""
    config = OmegaConf.create({"loss": {"beta": 0.5}, "optim": {"lr": 1e-4}, "resume": True})
    job = SweepJob("s", 3, "parent", ("loss", "loss.beta"), {"loss": "ipo", "optim": "adamw"})
    assert job.identity(config) == {"loss": "ipo", "loss.beta": 0.5}
    overrides = ("loss.beta=0.5", "optim.lr=1e-4", "resume=true", "hydra.verbose=true")
    alone = SweepJob("s", 3, None, (), {"loss": "ipo"}, overrides)
    assert alone.identity(config) == {"loss.beta": 0.5, "optim.lr": 1e-4}


@pytest.mark.slow  # a real toy sweep (two jobs of 4 steps), killed, relaunched: ~40 s alone
def test_a_killed_sweep_relaunched_with_resume_true_finishes_each_job_as_its_own(
    tmp_path, toy_cache, prefopt_cache
):
    """`--multirun loss.beta=0.05,0.5` killed -9 once job 1 (β=0.5) wrote a checkpoint, then
    the same command plus resume=true: job 0 finished and is left alone (not trained again),
    job 1 continues its own checkpoint into its own MLflow run, no job starts anew, and the
    relaunch's parent shows both jobs and ends FINISHED. Before, the relaunched job 0 continued
    job 1's checkpoint and run (with β=0.05), and job 1 then failed: nothing left to resume."""
    args = [
        "--multirun",
        *SMALL_TOY,
        f"toy.cache_dir={toy_cache}",
        "trainer.max_steps=4",
        "trainer.val_check_interval=2",
        "trainer.limit_val_batches=1",
        "trainer.log_every_n_steps=1",
        "trainer.enable_progress_bar=false",
        "checkpoint.every_n_steps=1",
        "eval.num_prompts=0",
        "export=false",
        "loss.beta=0.05,0.5",
    ]
    env = cli_env(PREFOPT_CACHE=str(prefopt_cache), MPLBACKEND="Agg")
    sweep = start_training(*args, cwd=tmp_path, env=env)
    deadline = time.monotonic() + 600
    while sweep.poll() is None and time.monotonic() < deadline:
        if list(tmp_path.glob("multirun/*/*/1/checkpoints/last.ckpt")):
            sweep.kill()
            break
        time.sleep(0.02)
    assert sweep.wait() == -9, "the sweep ended before job 1 wrote a checkpoint"

    relaunch = subprocess.run(
        [sys.executable, "-m", "prefopt.train", *args, "resume=true"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert relaunch.returncode == 0, relaunch.stderr[-3000:]

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("prefopt").experiment_id])
    parents = [r for r in runs if r.data.tags.get("prefopt.sweep_role") == "parent"]
    jobs = {float(r.data.params["loss/beta"]): r for r in runs if r not in parents}
    assert len(parents) == 2 and set(jobs) == {0.05, 0.5}, "no job started anew"
    latest = max(parents, key=lambda r: r.info.start_time)
    assert latest.info.status == "FINISHED"
    for beta, job in jobs.items():
        assert job.info.status == "FINISHED", beta
        assert job.data.tags["mlflow.parentRunId"] == latest.info.run_id, beta
        steps = [m.step for m in client.get_metric_history(job.info.run_id, "train/loss")]
        assert max(steps) == 3, (beta, steps)  # trained to the end
    # Finished: left alone, each step logged once. (A kill -9 may lose job 1's unflushed
    # metrics of the steps before its checkpoint; those are not trained again.)
    history = client.get_metric_history(jobs[0.05].info.run_id, "train/loss")
    assert sorted(m.step for m in history) == [0, 1, 2, 3]
    assert "prefopt.resumed_from" not in jobs[0.05].data.tags
    resumed_from = Path(jobs[0.5].data.tags["prefopt.resumed_from"])
    assert resumed_from.parent.parent.name == "1", resumed_from  # its own checkpoint
