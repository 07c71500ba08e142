"""Issue 8, reliability: bad input, faults and resume, safe loading.

Most cases run in-process through `checks.reported_errors`, the code `python -m prefopt.train`
runs, and assert the exit status and the single stderr line; two subprocess tests check the
real command line (no traceback, nothing loaded). Resume after a real kill -9, and the signals a
run stops on, are tested in `training/test_resume_chain.py` (with the settings below).
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from hydra.errors import ConfigCompositionException
from mlflow.tracking import MlflowClient

from prefopt.config import checks
from prefopt.toy import build_toy_world
from prefopt.tracking import run_datasets
from prefopt.train import train
from prefopt.training.checkpoint import CHECKPOINT_DIR, LAST, RUN_FILE, safe_load

from .conftest import SMALL_TOY, user_error
from .mlflow_servers import free_port, start_mlflow_server, stop_server

REPO = Path(__file__).resolve().parents[1]


def runs_in(cfg):
    client = MlflowClient(tracking_uri=cfg.logger.tracking_uri)
    experiment = client.get_experiment_by_name(cfg.logger.experiment_name)
    return client, ([] if experiment is None else client.search_runs([experiment.experiment_id]))


def toy_train_rows(cfg, n: int) -> list[dict]:
    world = build_toy_world(cfg.toy, progress=False)
    return [json.loads(line) for line in open(world.train_path)][:n]


def write_jsonl(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


# ---------------------------------------------------------------------------------------------
# Config: fail in the first seconds, before anything loads, with one line


@pytest.mark.parametrize(
    "overrides, expected",
    [
        (["loss.beta=0"], "loss.beta=0.0 for loss 'dpo': it must be > 0"),
        (["optim.lr=-1e-3"], "optim.lr=-0.001: the learning rate must be > 0"),
        (["data=toy_unpaired"], "loss=dpo trains on pairs"),
        (
            ["model=local", "model.path=/no/such/checkpoint"],
            "model.path=/no/such/checkpoint: no such directory",
        ),
        (["model=local"], "model.path: required, and not set"),
        (
            ["data.max_prompt_length=64"],
            "data.max_prompt_length=64 must be positive and below data.max_length=64",
        ),
        (["data.path=pairs.jsonl"], "data.path=pairs.jsonl has no effect with data.source=toy"),
        (
            ["data.packing=true", "data.packing_row_tokens=0"],
            "data.packing_row_tokens=0: it must be >= 1, or null",
        ),
        (["resume=true"], "resume=true: no unfinished run with a checkpoint"),
    ],
)
def test_config_errors_are_one_line_before_any_run(compose_config, capsys, overrides, expected):
    cfg = compose_config(*overrides)
    line = user_error(capsys, train, cfg)
    assert expected in line
    # stopped before the MLflow run (and anything else) started: not even a store was created
    assert not Path(cfg.logger.tracking_uri.removeprefix("sqlite:///")).exists()


def test_unknown_group_option_lists_the_valid_ones(capsys):
    line = user_error(capsys, checks.check_overrides, ["loss=dpoo"], REPO / "conf")
    options = sorted(path.stem for path in (REPO / "conf" / "loss").glob("*.yaml"))
    assert {"dpo", "ipo", "kto", "simpo", "orpo", "mix"} <= set(options)
    assert line == (
        f"prefopt: error: loss=dpoo: there is no such loss; did you mean dpo? "
        f"(all: {', '.join(options)})"
    )
    checks.check_overrides(
        ["loss=ipo", "model=local", "--multirun", "loss.beta=0.1"], REPO / "conf"
    )


def test_a_wrong_choice_is_one_line_listing_the_valid_ones(compose_config, capsys):
    """Typed in the schema, a wrong choice cannot even compose; on the command line it is
    caught just before, as one line."""
    line = user_error(capsys, checks.check_overrides, ["data.on_invalid=ignore"], REPO / "conf")
    assert line == "prefopt: error: data.on_invalid='ignore': choose one of error, skip"
    with pytest.raises(ConfigCompositionException, match="data.on_invalid=ignore") as error:
        compose_config("data.on_invalid=ignore")
    assert "expected one of [error, skip]" in str(error.value.__cause__)


def test_an_unreachable_tracking_server_is_reported_at_start(compose_config, capsys, monkeypatch):
    """Reported after one probe of the server with a short timeout, not after MLflow's client
    retried for minutes, and before anything else started (no output folder)."""
    import urllib.request

    import mlflow.utils.rest_utils

    def no_mlflow_request(*args, **kwargs):
        raise AssertionError("MLflow's retrying client was called before the check")

    probes = []
    urlopen = urllib.request.urlopen

    def probe(url, *args, timeout, **kwargs):
        probes.append((url, timeout))
        return urlopen(url, *args, timeout=timeout, **kwargs)

    monkeypatch.setattr(urllib.request, "urlopen", probe)
    monkeypatch.setattr(mlflow.utils.rest_utils, "http_request", no_mlflow_request)
    url = f"http://127.0.0.1:{free_port()}"
    cfg = compose_config(f"logger.tracking_uri={url}")
    line = user_error(capsys, train, cfg)
    assert "no MLflow server answers" in line and "logger.tracking_uri=sqlite:///mlflow.db" in line
    assert probes == [(f"{url}/health", 3.0)]
    assert not Path(cfg.output_dir).exists()


def cli_env(**extra: str) -> dict[str, str]:
    """The environment of a `python -m prefopt...` child: this checkout's sources first."""
    return {**os.environ, "PYTHONPATH": str(REPO / "src"), **extra}


def cli(*args, cwd, timeout=180):
    return subprocess.run(
        [sys.executable, "-m", "prefopt.train", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=cli_env(),
    )


def start_training(*args, cwd, env=None, **popen_kwargs) -> subprocess.Popen:
    """`python -m prefopt.train` running in the background."""
    return subprocess.Popen(
        [sys.executable, "-m", "prefopt.train", *args],
        cwd=cwd,
        env=env or cli_env(),
        text=True,
        **popen_kwargs,
    )


def wait_for(path: Path, proc: subprocess.Popen, timeout: float = 600) -> None:
    """Until `path` exists, `proc` has ended, or `timeout` seconds have passed."""
    deadline = time.monotonic() + timeout
    while not path.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)


def test_cli_prints_one_line_without_traceback(tmp_path):
    """Every path through the real command: a bad group option or choice (before Hydra
    composes) and a bad value (after): exit status 2, one line, no traceback, no MLflow store
    created."""
    for args, expected in (
        (
            ["model=qwen"],
            "prefopt: error: model=qwen: there is no such model; choose one of: llama3-8b, local, qwen2.5-0.5b, toy",
        ),
        (
            ["loss=ipo", "loss.beta=-1"],
            "prefopt: error: loss.beta=-1.0 for loss 'ipo': it must be > 0",
        ),
        (
            ["optim.scheduler=cosin"],
            "prefopt: error: optim.scheduler='cosin': choose one of constant, linear, cosine",
        ),
    ):
        proc = cli(*args, cwd=tmp_path)
        assert proc.returncode == 2, proc.stderr[-2000:]
        assert "Traceback" not in proc.stderr
        assert proc.stderr.strip().splitlines()[-1] == expected
    assert not (tmp_path / "mlflow.db").exists()


# ---------------------------------------------------------------------------------------------
# Data: every bad-input class names file, row, field and the fix; `skip` drops and counts


BAD_ROWS = [
    (
        {"prompt": " review of a phone :", "chosn": " good .", "rejected": " bad ."},
        "missing_column",
        "line 3: found columns ['chosn', 'prompt', 'rejected']; expected explicit (prompt, chosen, rejected",
    ),
    (
        {"prompt": " review of a phone :", "chosen": 5, "rejected": " bad ."},
        "wrong_type",
        "line 3: field 'chosen' is a int, expected a string",
    ),
    (
        {"prompt": "", "chosen": " good .", "rejected": " bad ."},
        "empty",
        "line 3: field 'prompt' is empty",
    ),
    (
        {"prompt": " review of a phone :", "chosen": " same .", "rejected": " same ."},
        "identical",
        "line 3: 'chosen' and 'rejected' are identical",
    ),
    (
        {
            "prompt": " review of a phone :",
            "chosen": " great" * 600 + " delightful .",
            "rejected": " great" * 600 + " annoying .",
        },
        "truncated_identical",
        "line 3: 'chosen' and 'rejected' differ only past data.max_length=512",
    ),
]


@pytest.fixture
def toy_data(compose_config, tmp_path):
    """(good toy rows, a function that sets up the data module the CLI would build for a file)."""
    from prefopt.data import PreferenceDataModule
    from prefopt.model.loading import load_tokenizer

    cfg = compose_config()
    world = build_toy_world(cfg.toy, progress=False)
    rows = [json.loads(line) for line in open(world.train_path)][:40]
    tokenizer = load_tokenizer(str(world.model_dir), cfg.model)

    def setup(path, *overrides, paired=True):
        data = compose_config("data=local", f"data.path={path}", *overrides).data
        module = PreferenceDataModule(data, tokenizer, paired=paired)
        module.setup("fit")
        return module

    return rows, setup


@pytest.mark.parametrize(
    "row, reason, expected", BAD_ROWS, ids=[f"{r[1]}{i}" for i, r in enumerate(BAD_ROWS)]
)
def test_a_bad_row_stops_naming_file_row_and_field(
    toy_data, capsys, tmp_path, row, reason, expected
):
    good, setup = toy_data
    path = write_jsonl(tmp_path / "pairs.jsonl", good[:2] + [row] + good[2:])
    line = user_error(capsys, setup, path, f"data.val_path={path}")
    assert f"{path} {expected}" in line, line
    assert "data.on_invalid=skip" in line


def test_a_bad_row_fails_the_run_before_training(compose_config, capsys, tmp_path):
    good = toy_train_rows(compose_config(), 40)
    row = {"prompt": " review of a phone :", "chosen": " same .", "rejected": " same ."}
    path = write_jsonl(tmp_path / "pairs.jsonl", good[:30] + [row] + good[30:])
    cfg = compose_config("data=local", f"data.path={path}", "data.val_fraction=0")
    line = user_error(capsys, train, cfg)
    assert f"{path} line 31: 'chosen' and 'rejected' are identical" in line
    _, runs = runs_in(cfg)
    assert [r.info.status for r in runs] == ["FAILED"]
    assert "train/loss" not in runs[0].data.metrics


def test_kto_labels_must_be_booleans(compose_config, capsys, tmp_path):
    rows = [
        {"prompt": " review of a cup :", "completion": " great .", "label": i % 2 == 0}
        for i in range(8)
    ]
    rows[5]["label"] = "maybe"
    path = write_jsonl(tmp_path / "kto.jsonl", rows)
    cfg = compose_config("loss=kto", "data=local", f"data.path={path}")
    line = user_error(capsys, train, cfg)
    assert f"{path} line 6: field 'label' is 'maybe'; it must be a boolean" in line


@pytest.mark.parametrize(
    "name, content, expected",
    [
        (
            "cut.jsonl",
            '{"prompt": "a", "chosen": "b", "rejected": "c"}\n{"prompt": "a", "cho',
            "line 2: invalid JSON",
        ),
        ("cut.jsonl.gz", None, "cannot read the file"),
        (
            "latin1.jsonl",
            '{"prompt": "a", "chosen": "b", "rejected": "c"}\n{"prompt": "caf\u00e9"}\n'.encode(
                "latin-1"
            ),
            "line 2: not UTF-8 text",
        ),
        (
            "columns.jsonl",
            '{"question": "a", "good": "b", "bad": "c"}\n',
            "found columns ['bad', 'good', 'question']; expected explicit",
        ),
    ],
)
def test_unreadable_files_and_misspelled_columns(
    toy_data, capsys, tmp_path, name, content, expected
):
    path = tmp_path / name
    if content is None:  # a gzip file cut in the middle
        import gzip

        whole = gzip.compress(b'{"prompt": "a", "chosen": "b", "rejected": "c"}\n' * 50)
        path.write_bytes(whole[: len(whole) // 2])
    elif isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    line = user_error(capsys, toy_data[1], path)
    assert str(path) in line and expected in line, line


def test_skip_drops_bad_rows_counts_them_in_mlflow_and_trains(compose_config, tmp_path, caplog):
    good = toy_train_rows(compose_config(), 48)
    bad = [row for row, _, _ in BAD_ROWS]
    path = write_jsonl(tmp_path / "pairs.jsonl", good[:20] + bad + good[20:])
    cfg = compose_config(
        "data=local",
        f"data.path={path}",
        "data.val_fraction=0",
        "data.on_invalid=skip",
        "trainer.max_steps=2",
        "eval.num_prompts=0",
        "export=false",
    )
    result = train(cfg)
    client, runs = runs_in(cfg)
    counts = run_datasets(client.get_run(result.run_id))["train"]["profile"]
    assert counts["pairs"] == 48
    assert counts["dropped_missing_column"] == 1
    assert counts["dropped_wrong_type"] == 1
    assert counts["dropped_empty"] == 1
    assert counts["dropped_identical"] == 1
    assert counts["dropped_truncated_identical"] == 1
    assert any("skipped 5 of 53 rows" in r.getMessage() for r in caplog.records)


def test_nothing_left_after_filtering_is_an_error(toy_data, capsys, tmp_path):
    rows = [{"prompt": " review :", "chosen": " same .", "rejected": " same ."}] * 4
    path = write_jsonl(tmp_path / "pairs.jsonl", rows)
    line = user_error(capsys, toy_data[1], path, "data.on_invalid=skip")
    assert "no training data left after filtering" in line and "identical" in line


# ---------------------------------------------------------------------------------------------
# Faults: NaN, SIGTERM, a tracking server that goes away


def test_a_nan_loss_stops_the_run_keeps_the_last_good_checkpoint_and_fails_it(
    compose_config, capsys, monkeypatch
):
    """NaN injected into the loss at the 7th step; checkpoints every 3 steps."""
    from prefopt.losses.dpo import DPOLoss

    original, calls = DPOLoss.__call__, []

    def poisoned(self, policy, reference):
        out = original(self, policy, reference)
        if torch.is_grad_enabled():
            calls.append(1)
            if len(calls) == 7:
                out.loss = out.loss * float("nan")
        return out

    monkeypatch.setattr(DPOLoss, "__call__", poisoned)
    cfg = compose_config(
        "trainer.max_steps=12",
        "checkpoint.every_n_steps=3",
        "trainer.limit_val_batches=0",
        "eval.num_prompts=0",
    )
    line = user_error(capsys, train, cfg)
    checkpoint = Path(cfg.output_dir) / CHECKPOINT_DIR / LAST
    assert "non-finite loss (nan) at step 6" in line
    assert "optim.lr=0.0005" in line and "loss.beta=0.1" in line
    assert f"the last good checkpoint is {checkpoint}" in line
    # advice that holds: a resume trains with the changed lr (tests/training/test_resume_settings.py)
    assert (
        f"continue from it with the setting changed, e.g. ckpt_path={checkpoint} optim.lr=" in line
    )
    state = safe_load(checkpoint)
    assert state["global_step"] == 6
    assert all(torch.isfinite(v).all() for v in state["state_dict"].values())
    _, runs = runs_in(cfg)
    assert [r.info.status for r in runs] == ["FAILED"]


def test_metrics_are_buffered_when_the_server_goes_away_and_sync_uploads_them(tmp_path, caplog):
    """A real store for the start, then the client pointed at a closed port on 127.0.0.1 (the
    server is gone): logging goes on into the local buffer; `prefopt.sync` uploads it."""
    from prefopt.config.schema import LoggerConfig
    from prefopt.tracking.runs import finish_run, start_run
    from prefopt.tracking.sync import main as sync_main

    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    logger = start_run(LoggerConfig(tracking_uri=store), "run", offline_dir=tmp_path / "out")
    logger.log_metrics({"train/loss": 0.7}, step=1)
    logger.experiment._client = MlflowClient(tracking_uri=f"http://127.0.0.1:{free_port()}")
    os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = "0"
    try:
        logger.log_metrics({"train/loss": 0.5}, step=2)  # fails once, then buffered
        logger.log_metrics({"train/loss": 0.4}, step=3)
        logger.experiment.set_tag(logger.run_id, "prefopt.note", "offline")
        finish_run(logger, "FINISHED")
    finally:
        del os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"]
    assert any("python -m prefopt.sync" in r.getMessage() for r in caplog.records)
    client = MlflowClient(tracking_uri=store)
    assert client.get_run(logger.run_id).info.status == "RUNNING"
    assert sync_main([str(tmp_path / "out")]) == 0
    run = client.get_run(logger.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags["prefopt.note"] == "offline"
    history = [(m.step, m.value) for m in client.get_metric_history(logger.run_id, "train/loss")]
    assert sorted(history) == [(1, 0.7), (2, 0.5), (3, 0.4)]


# ---------------------------------------------------------------------------------------------
# Resume: the settings of the kill -9 tests in training/test_resume_chain.py


RESUME_ARGS = [
    *SMALL_TOY,
    "trainer.max_steps=10",
    "trainer.val_check_interval=5",
    "trainer.log_every_n_steps=1",
    "trainer.limit_val_batches=2",
    "trainer.enable_progress_bar=false",
    "checkpoint.every_n_steps=3",
    "eval.num_prompts=4",
    "eval.max_new_tokens=8",
    "export=false",
]


# ---------------------------------------------------------------------------------------------
# Safe loading


class _Payload:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_a_checkpoint_that_would_run_code_is_refused(compose_config, capsys, tmp_path):
    marker = tmp_path / "code_ran"
    evil = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "payload": _Payload(marker)}, evil)
    cfg = compose_config(f"ckpt_path={evil}", "eval.num_prompts=0", "trainer.max_steps=1")
    line = user_error(capsys, train, cfg)
    assert f"{evil}: refused to load" in line
    assert not marker.exists()
    _, runs = runs_in(cfg)
    assert runs == []  # refused before the MLflow run starts: nothing half-recorded


def test_no_unsafe_loading_in_the_source():
    """Every torch.load passes weights_only=True; nothing unpickles; remote code is opt-in."""
    from prefopt.config.schema import ModelConfig

    assert ModelConfig.trust_remote_code is False
    for path in (REPO / "src" / "prefopt").rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
                name = f"{getattr(node.func.value, 'id', '')}.{node.func.attr}"
                assert name not in ("pickle.load", "pickle.loads", "dill.load"), path
                if name == "torch.load":
                    kwargs = {k.arg: k.value for k in node.keywords}
                    assert isinstance(kwargs.get("weights_only"), ast.Constant), path
                    assert kwargs["weights_only"].value is True, path
                for keyword in node.keywords:
                    if keyword.arg == "trust_remote_code":
                        assert not (
                            isinstance(keyword.value, ast.Constant) and keyword.value.value
                        ), path


@pytest.mark.slow  # two server starts and a training run: a few minutes on 2 busy cores
def test_a_server_that_dies_mid_run_does_not_stop_training(tmp_path, toy_cache, reference_cache):
    port = free_port()
    server = start_mlflow_server(tmp_path, port)
    out = tmp_path / "out"
    args = [
        *RESUME_ARGS,
        f"toy.cache_dir={toy_cache}",
        f"reference.cache_dir={reference_cache}",
        f"output_dir={out}",
        f"logger.tracking_uri=http://127.0.0.1:{port}",
    ]
    env = cli_env(NO_PROXY="127.0.0.1")
    proc = start_training(
        *args, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    try:
        wait_for(out / CHECKPOINT_DIR / LAST, proc)
    finally:
        stop_server(server, at_once=True)  # the server goes away at step 3 of 10
    output, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, output[-4000:]
    assert "python -m prefopt.sync" in output
    assert (out / "mlflow_offline.jsonl").exists()

    server = start_mlflow_server(tmp_path, port)
    try:
        synced = subprocess.run(
            [sys.executable, "-m", "prefopt.sync", str(out)],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert synced.returncode == 0, synced.stderr[-3000:]
        client = MlflowClient(f"http://127.0.0.1:{port}")
        run_id = json.loads((out / CHECKPOINT_DIR / RUN_FILE).read_text())["run_id"]
        run = client.get_run(run_id)
        assert run.info.status == "FINISHED"
        steps = {m.step for m in client.get_metric_history(run_id, "train/loss")}
        assert steps == set(range(10))
        assert "val/rewards/accuracies" in run.data.metrics
    finally:
        stop_server(server)


def test_a_tokenizer_without_pad_token_gets_one_and_says_so(tmp_path, caplog):
    from prefopt.config.schema import ModelConfig
    from prefopt.model.loading import load_tokenizer

    from .data.conftest import build_tokenizer

    build_tokenizer(pad=False).save_pretrained(tmp_path / "tok")
    tokenizer = load_tokenizer(str(tmp_path / "tok"), ModelConfig(path=str(tmp_path / "tok")))
    assert tokenizer.pad_token == tokenizer.eos_token is not None
    assert any(
        "no pad token" in r.getMessage() and r.levelname == "WARNING" for r in caplog.records
    )


def test_real_errors_from_the_store_are_not_taken_for_an_outage(tmp_path):
    """Only an unreachable store sends logging offline; a wrong call still raises."""
    from mlflow.exceptions import MlflowException

    from prefopt.config.schema import LoggerConfig
    from prefopt.tracking.runs import start_run

    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    logger = start_run(LoggerConfig(tracking_uri=store), "run", offline_dir=tmp_path)
    logger.log_hyperparams({"x": 1})
    with pytest.raises(MlflowException):
        logger.log_hyperparams({"x": 2})  # MLflow never changes a param
    assert not logger.offline


def test_resume_true_finds_the_newest_unfinished_run_among_hydra_s_run_folders(tmp_path):
    from prefopt.training.resume import find_resume_point, recorded_run, write_run_file

    def checkpoint_in(out, modified):
        """A checkpoint with the modification time `modified` (set, never waited for)."""
        (out / CHECKPOINT_DIR).mkdir(parents=True, exist_ok=True)
        torch.save({"global_step": 1}, out / CHECKPOINT_DIR / LAST)
        os.utime(out / CHECKPOINT_DIR / LAST, (modified, modified))

    def run_folder(name, modified, **fields):
        out = tmp_path / "outputs" / name
        checkpoint_in(out, modified)
        write_run_file(out, run_id=name, tracking_uri="sqlite:///x.db", **fields)
        return out

    day = 1_700_000_000
    run_folder("2025-01-01/10-00-00", day)
    killed = run_folder("2025-01-02/09-00-00", day + 100)
    run_folder("2025-01-02/11-00-00", day + 200, finished=True)
    new = tmp_path / "outputs" / "2025-01-03" / "08-00-00"
    point = find_resume_point(str(new), resume=True, ckpt_path=None)
    assert point.checkpoint == killed / CHECKPOINT_DIR / LAST
    assert point.run_id_for("sqlite:///x.db") == "2025-01-02/09-00-00"
    assert point.run_id_for("sqlite:///other.db") is None

    with recorded_run(new, True, point, "2025-01-02/09-00-00", "sqlite:///x.db"):
        # the new run has no checkpoint of its own yet: the killed run's stays on offer
        again = find_resume_point(str(new), resume=True, ckpt_path=None)
        assert again.checkpoint == killed / CHECKPOINT_DIR / LAST
        # now it took over, within the second the killed run's checkpoint was written (one
        # modification time on a file system that keeps whole seconds): the later start wins
        checkpoint_in(new, day + 100)
        assert "started" in json.loads((new / CHECKPOINT_DIR / RUN_FILE).read_text())
        taken_over = find_resume_point(str(tmp_path / "outputs" / "x" / "y"), True, None)
        assert taken_over.checkpoint == new / CHECKPOINT_DIR / LAST
        assert taken_over.lineage == point.lineage
    # the new run finished: neither it nor the run it continued is picked again
    later = tmp_path / "outputs" / "2025-01-04" / "08-00-00"
    next_point = find_resume_point(str(later), resume=True, ckpt_path=None)
    assert next_point.checkpoint.parent.parent.name == "10-00-00"
    # naming a run folder works whatever its state
    named = find_resume_point(str(new), resume=True, ckpt_path=str(killed))
    assert named.checkpoint == killed / CHECKPOINT_DIR / LAST
