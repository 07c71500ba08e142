"""Issue 23: caches checked before use, a kill -9 at every phase, a full disk.

Every test works on files a real run wrote: caches are cut short or overwritten and the run
repeated; runs are killed with SIGKILL at a chosen phase (`kill_at.py`) and run again; a disk
is filled for real (a small tmpfs, skipped where mounting is not permitted, and /dev/full,
which answers every write with ENOSPC on any Linux). Each repeated run must end with the
numbers of an uninterrupted run.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from hydra import compose, initialize_config_dir
from mlflow.tracking import MlflowClient
from safetensors.torch import load_file

from prefopt.config import checks
from prefopt.config.schema import ToyWorldConfig, register_configs
from prefopt.errors import PrefoptError
from prefopt.files import MANIFEST, seal_problem
from prefopt.reference.cached import load_cache, read_cache, save_cache, table_digest
from prefopt.toy.world import build_toy_world
from prefopt.tracking.report import report_sweep
from prefopt.tracking.tags import PARENT_TAG, TAG_JOB
from prefopt.train import train
from prefopt.training.checkpoint import CHECKPOINT_DIR, LAST, PREVIOUS, safe_load

from .conftest import CONF_DIR, SMALL_TOY
from .kill_at import PHASES

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent

RUN = [
    *SMALL_TOY,
    "trainer.max_steps=4",
    "checkpoint.every_n_steps=2",
    "trainer.limit_val_batches=2",
    "trainer.log_every_n_steps=1",
    "trainer.enable_progress_bar=false",
    "eval.num_prompts=0",  # no generation: not what these tests are about
]


def overrides(toy_cache: Path, root: Path, **paths: Path) -> list[str]:
    """A short toy run whose caches, output and MLflow store all live under `root`."""
    where = {
        "data.cache_dir": root / "data",
        "reference.cache_dir": root / "reference",
        "output_dir": root / "out",
        **{key.replace("__", "."): value for key, value in paths.items()},
    }
    return [
        *RUN,
        f"toy.cache_dir={toy_cache}",
        *(f"{key}={value}" for key, value in where.items()),
        f"logger.tracking_uri=sqlite:///{root / 'mlflow.db'}",
    ]


def config(args: list[str]):
    register_configs()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose("config", overrides=args)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, toy_cache):
    """The run every faulty run is compared with: clean caches, never interrupted."""
    root = tmp_path_factory.mktemp("uninterrupted")
    return SimpleNamespace(root=root, result=train(config(overrides(toy_cache, root))))


def assert_same_numbers(result, expected, tolerance: float = 1e-6) -> None:
    compared = [k for k in expected.metrics if k.startswith(("train/", "val/", "eval/"))]
    assert compared
    for key in compared:
        assert math.isclose(
            result.metrics[key], expected.metrics[key], rel_tol=tolerance, abs_tol=tolerance
        ), (key, result.metrics[key], expected.metrics[key])


def prepared_entries(root: Path) -> list[Path]:
    return [p for p in (root / "data").iterdir() if p.is_dir() and not p.name.startswith(".")]


def set_aside_entries(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.corrupt-*"))


# ---------------------------------------------------------------------------------------------
# Damaged caches


def cut_short(path: Path) -> None:
    os.truncate(path, path.stat().st_size // 2)


def flip_a_byte(path: Path) -> None:
    """Change one byte in the middle: same size, still a well-formed file for most bytes."""
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def garbage(path: Path) -> None:
    path.write_bytes(os.urandom(path.stat().st_size))


def change_a_value_keep_the_hash(path: Path) -> None:
    """A well-formed table with one log-prob changed and the hash of the original kept."""
    stored = torch.load(path, weights_only=True)
    stored["table"]["train"][0, 0] += 1.0
    torch.save(stored, path)


DAMAGES = {
    "truncated": (cut_short, garbage),
    "changed": (flip_a_byte, change_a_value_keep_the_hash),
}
"""(what is done to the prepared data's Arrow file, to the reference log-prob table)"""


@pytest.mark.parametrize("damage", DAMAGES)
def test_a_damaged_cache_is_reported_set_aside_and_rebuilt_to_the_same_numbers(
    damage, uninterrupted, toy_cache, tmp_path, caplog
):
    """The prepared data's Arrow file and the reference log-prob table of a real run are
    damaged; the next run warns once per cache naming it, moves it aside, rebuilds it and
    trains to the uninterrupted run's numbers. The second variant keeps both files readable:
    only their content check tells them apart from the originals."""
    for cache in ("data", "reference"):
        shutil.copytree(uninterrupted.root / cache, tmp_path / cache)
    [entry] = prepared_entries(tmp_path)
    [table] = (tmp_path / "reference").glob("*.pt")
    damage_arrow, damage_table = DAMAGES[damage]
    damage_arrow(entry / "train.arrow")
    damage_table(table)

    caplog.set_level("WARNING", logger="prefopt.files")
    result = train(config(overrides(toy_cache, tmp_path)))

    warnings = [r.getMessage() for r in caplog.records if r.name == "prefopt.files"]
    assert len(warnings) == 2, warnings
    for path, warning in zip((entry, table), sorted(warnings, key=lambda w: "reference" in w)):
        assert warning.startswith(f"{path} is corrupt (") and "moved aside" in warning
        assert "\n" not in warning
    assert len(set_aside_entries(tmp_path / "data")) == 1
    assert len(set_aside_entries(tmp_path / "reference")) == 1
    assert seal_problem(entry) is None  # rebuilt and sealed
    assert read_cache(table)[1] is None
    assert result.module.reference.precompute_calls > 0  # the reference scored the data again
    assert_same_numbers(result, uninterrupted.result)


def test_an_unreadable_or_unsealed_prepared_entry_is_rebuilt(uninterrupted, toy_cache, tmp_path):
    """A manifest that is missing (an entry written before sealing existed, or by hand) or
    unreadable is as untrusted as a changed file."""
    shutil.copytree(uninterrupted.root / "data", tmp_path / "data")
    [entry] = prepared_entries(tmp_path)
    (entry / MANIFEST).unlink()
    from prefopt.data.cache import load_verified

    assert load_verified(entry) is None
    assert not entry.exists() and len(set_aside_entries(tmp_path / "data")) == 1
    [aside] = set_aside_entries(tmp_path / "data")
    (aside / MANIFEST).write_text("{not json")
    assert "unreadable manifest.json" in seal_problem(aside)


def tiny_world_config(cache_dir: Path) -> ToyWorldConfig:
    return ToyWorldConfig(
        n_train_prompts=16,
        n_val_prompts=4,
        n_test_prompts=4,
        sft_texts=64,
        sft_steps=5,
        hidden_size=16,
        num_layers=1,
        num_heads=2,
        max_new_tokens=8,
        cache_dir=str(cache_dir),
    )


def world_contents(root: Path) -> dict[str, bytes]:
    """Every file of a world but its build log (`world.json` holds the build's duration)."""
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name not in ("world.json", MANIFEST)
    }


@pytest.mark.parametrize("damage", [cut_short, garbage, flip_a_byte], ids=lambda f: f.__name__)
def test_a_damaged_toy_world_is_set_aside_and_built_again_identical(damage, tmp_path, caplog):
    cfg = tiny_world_config(tmp_path)
    world = build_toy_world(cfg, progress=False)
    clean = world_contents(world.root)
    damage(world.model_dir / "model.safetensors")
    damage(world.train_path)

    caplog.set_level("WARNING", logger="prefopt.files")
    again = build_toy_world(cfg, progress=False)

    [warning] = [r.getMessage() for r in caplog.records if r.name == "prefopt.files"]
    assert warning.startswith(f"{world.root} is corrupt (") and "moved aside" in warning
    assert len(set_aside_entries(tmp_path)) == 1
    assert again.root == world.root and seal_problem(again.root) is None
    assert world_contents(again.root) == clean


# ---------------------------------------------------------------------------------------------
# Kill -9 at every phase


def child_env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": f"{REPO / 'src'}{os.pathsep}{TESTS}", "MPLBACKEND": "Agg"}


def run_killed_at(phase: str, args: list[str], cwd: Path) -> None:
    proc = subprocess.run(
        [sys.executable, str(TESTS / "kill_at.py"), phase, *args],
        cwd=cwd,
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    # Any other status means the phase was never reached: the test would prove nothing.
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-4000:]


def assert_nothing_half_written(root: Path, toy_cache: Path) -> None:
    """Whatever a later run would pick up under its final name is complete and checks out."""
    for entry in prepared_entries(root):
        assert seal_problem(entry) is None, entry
    for table in (root / "reference").glob("*.pt"):
        assert read_cache(table)[1] is None, table
    for world in (p for p in toy_cache.iterdir() if p.is_dir() and not p.name.startswith(".")):
        assert seal_problem(world) is None, world
    checkpoint = root / "out" / CHECKPOINT_DIR / LAST
    if checkpoint.exists():
        safe_load(checkpoint)
    model = root / "out" / "model"
    if model.exists():
        assert {"config.json", "model.safetensors", "tokenizer.json"} <= set(os.listdir(model))


RESUMED = ("training", "checkpoint write")
"""Phases after a checkpoint exists: the later run is `resume=true` in the same folder."""
FAST_PHASE = "tokenizing"
"""The one phase of the fast suite; the others are `slow` (a subprocess each, ~20 s)."""


@pytest.mark.parametrize(
    "phase",
    [
        pytest.param(p, marks=() if p == FAST_PHASE else pytest.mark.slow)
        for p in PHASES
        if p != "sweep summary"
    ],
)
def test_a_kill_at_any_phase_leaves_nothing_half_written_and_the_next_run_ends_the_same(
    phase, uninterrupted, toy_cache, tmp_path
):
    args = overrides(toy_cache, tmp_path)
    run_killed_at(phase, args, tmp_path)
    assert_nothing_half_written(tmp_path, toy_cache)
    checkpoint = tmp_path / "out" / CHECKPOINT_DIR / LAST
    if phase in RESUMED:
        # The one before the kill, intact: still `last.ckpt` when killed mid-step; when killed
        # between a write's two renames it became `previous.ckpt` and no `last.ckpt` is left.
        newest = checkpoint if checkpoint.exists() else checkpoint.with_name(PREVIOUS)
        assert phase == "training" or newest.name == PREVIOUS
        assert safe_load(newest)["global_step"] == 2
        again = train(config([*args, "resume=true"]))
        assert_same_numbers(again, uninterrupted.result, tolerance=1e-4)
        return
    if phase == "export":
        assert not (tmp_path / "out" / "model").exists()
    else:
        assert not checkpoint.exists()
    again = train(config([*args, f"output_dir={tmp_path / 'again'}"]))
    assert_same_numbers(again, uninterrupted.result)
    if phase == "export":
        exported = load_file(again.export_dir / "model.safetensors")
        expected = load_file(uninterrupted.result.export_dir / "model.safetensors")
        assert exported.keys() == expected.keys()
        for name, weight in expected.items():
            torch.testing.assert_close(exported[name], weight, rtol=1e-6, atol=1e-6)


def sweep_store(tmp_path: Path) -> tuple[MlflowClient, str]:
    """An MLflow parent run with two finished job runs, as a β sweep leaves them."""
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.create_experiment("prefopt")
    parent = client.create_run(experiment, run_name="sweep").info.run_id
    for job, beta in enumerate(("0.1", "0.5")):
        run = client.create_run(
            experiment, run_name=f"dpo β={beta}", tags={PARENT_TAG: parent, TAG_JOB: str(job)}
        ).info.run_id
        client.log_param(run, "loss/beta", beta)
        for step in range(3):
            client.log_metric(run, "val/rewards/margins", float(beta) * step, step=step)
            client.log_metric(run, "val/rewards/accuracies", 0.5 + 0.1 * step, step=step)
        client.set_terminated(run, "FINISHED")
    return client, parent


@pytest.mark.slow  # a subprocess importing MLflow and matplotlib: ~20 s on a busy machine
def test_a_kill_during_the_sweep_summary_leaves_no_half_summary(tmp_path):
    client, parent = sweep_store(tmp_path)
    killed = tmp_path / "killed_sweep"
    code = (
        "import kill_at; kill_at.install('sweep summary')\n"
        "from mlflow.tracking import MlflowClient\n"
        "from prefopt.tracking.report import report_sweep\n"
        f"report_sweep(MlflowClient({client.tracking_uri!r}), {parent!r}, ['loss.beta'],"
        f" {str(killed)!r})\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=child_env(), capture_output=True,
        text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-4000:]
    assert not (killed / "summary").exists()

    report_sweep(client, parent, ["loss.beta"], str(killed))  # the summary written again
    report_sweep(client, parent, ["loss.beta"], str(tmp_path / "clean_sweep"))
    summaries = [sorted(os.listdir(d / "summary")) for d in (killed, tmp_path / "clean_sweep")]
    assert summaries[0] == summaries[1] == ["loss.beta.png", "margins.png", "summary.csv"]
    csvs = [(d / "summary" / "summary.csv").read_text() for d in (killed, tmp_path / "clean_sweep")]
    assert csvs[0] == csvs[1] and len(csvs[0].splitlines()) == 3


# ---------------------------------------------------------------------------------------------
# A full disk


@contextmanager
def tmpfs(path: Path, size: str):
    """A real tmpfs of `size` at `path`; the test is skipped where mounting is not permitted."""
    path.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
        capture_output=True,
        text=True,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({mounted.stderr.strip()})")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def one_error_line(capsys, cfg) -> str:
    """`train(cfg)` as the command line runs it: exit status 2 and one line, no traceback."""
    with pytest.raises(SystemExit) as exit_info:
        with checks.reported_errors():
            train(cfg)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("prefopt: error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def needed_and_free(line: str) -> tuple[int, int]:
    match = re.search(r"needs (?:more than )?([\d,]+) bytes, ([\d,]+) free there", line)
    assert match, line
    return tuple(int(n.replace(",", "")) for n in match.groups())


def only_run_status(root: Path) -> str:
    client = MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    [run] = client.search_runs([client.get_experiment_by_name("prefopt").experiment_id])
    return run.info.status


@pytest.mark.parametrize("writer", ["checkpoint", pytest.param("export", marks=pytest.mark.slow)])
def test_a_full_output_disk_fails_the_run_naming_the_path_and_its_size(
    writer, uninterrupted, toy_cache, tmp_path, capsys
):
    """The run's folder on a 256 KB tmpfs: run.json fits; the first checkpoint (the policy
    with its optimizer state) does not, nor, with checkpoints off, the exported model."""
    with tmpfs(tmp_path / "disk", "256k") as disk:
        out = disk / "out"
        caches = {"data__cache_dir": uninterrupted.root / "data"}  # the prepared data, reused
        args = overrides(toy_cache, tmp_path, output_dir=out, **caches)
        if writer == "export":
            args.append("checkpoint.enabled=false")
        line = one_error_line(capsys, config(args))

        path = out / CHECKPOINT_DIR / LAST if writer == "checkpoint" else out / "model"
        assert f"{path}: the disk is full" in line
        needed, free = needed_and_free(line)
        assert needed > free and needed > 1_000_000
        assert only_run_status(tmp_path) == "FAILED"
        left = sorted(str(p.relative_to(out)) for p in out.rglob("*"))
        # No checkpoint, no model, no temporary file or folder.
        assert left == (
            [CHECKPOINT_DIR, f"{CHECKPOINT_DIR}/run.json"] if writer == "checkpoint" else []
        )


def test_a_full_cache_disk_fails_the_run_and_leaves_no_cache_entry(toy_cache, tmp_path, capsys):
    """The prepared-data cache on a 64 KB tmpfs: tokenizing the toy data needs more."""
    with tmpfs(tmp_path / "disk", "64k") as disk:
        cfg = config(overrides(toy_cache, tmp_path, data__cache_dir=disk / "data"))
        line = one_error_line(capsys, cfg)

        assert re.search(rf"{disk / 'data'}/[0-9a-f]{{32}}: the disk is full", line), line
        needed, free = needed_and_free(line)
        assert needed > 0 and "data.cache_dir" in line
        assert only_run_status(tmp_path) == "FAILED"
        assert [p.suffix for p in (disk / "data").iterdir()] == [".lock"]  # no entry, no staging


def table_bytes(table) -> int:
    import io

    buffer = io.BytesIO()
    torch.save({"table": table, "digest": table_digest(table)}, buffer)
    return buffer.tell()


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="no /dev/full")
def test_a_cache_write_meeting_enospc_keeps_the_old_file_and_says_how_much_it_needs(tmp_path):
    """/dev/full answers every write with ENOSPC from the kernel, on any Linux and without
    root: the temporary file of the write is made a link to it."""
    path = tmp_path / "reference" / "table.pt"
    old = {"train": torch.zeros(3, 2), "val": torch.zeros(1, 2)}
    save_cache(path, old)
    new = {"train": torch.randn(500, 2), "val": torch.randn(50, 2)}
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.symlink_to("/dev/full")

    with pytest.raises(PrefoptError) as error:
        save_cache(path, new)

    message = str(error.value)
    assert message.startswith(f"{path}: the disk is full (ENOSPC): it needs ")
    assert f"needs {table_bytes(new):,} bytes" in message and "\n" not in message
    assert not temporary.exists() and not temporary.is_symlink()
    torch.testing.assert_close(load_cache(path), old)  # the old cache, untouched
    assert json.dumps(sorted(os.listdir(path.parent))) == '["table.pt"]'


def test_a_full_disk_is_recognised_through_the_errors_libraries_raise_from_it():
    """torch raises a RuntimeError from the OSError of the write; a quota counts as full."""
    import errno

    from prefopt.files import disk_full_reason

    try:
        try:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        except OSError:
            raise RuntimeError("[enforce fail at inline_container.cc] unexpected pos") from None
    except RuntimeError as error:
        chained = error
    assert disk_full_reason(chained) == "ENOSPC"
    assert disk_full_reason(OSError(errno.EDQUOT, "quota")).startswith("EDQUOT")
    assert disk_full_reason(OSError(errno.EACCES, "denied")) is None
    assert disk_full_reason(PrefoptError("a row says No space left on device")) is None
