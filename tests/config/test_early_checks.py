"""Bad input stops the run before anything starts: one `prefopt: error:` line naming the key or
file and the fix, exit status 2, no traceback, and no MLflow run (not even a store) created.

Each case runs in-process through `checks.reported_errors`, the code `python -m prefopt.train`
runs; one real subprocess checks the command line with the hub unreachable.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from prefopt.config import checks
from prefopt.data.sources import load_split, looks_local
from prefopt.errors import PrefoptError
from prefopt.train import train

from ..conftest import user_error

REPO = Path(__file__).resolve().parents[2]
NO_GPU = pytest.mark.skipif(torch.cuda.is_available(), reason="asserts the error without a GPU")
MONITOR = "+trainer.callbacks.lr._target_=lightning.pytorch.callbacks.LearningRateMonitor"


def no_store(cfg) -> bool:
    return not Path(cfg.logger.tracking_uri.removeprefix("sqlite:///")).exists()


@pytest.mark.parametrize(
    "overrides, expected",
    [
        (
            ["data=local", "data.path=pairs.jsonl"],  # relative, typed in the wrong folder
            "data.path=pairs.jsonl: no such file or folder (looked in {cwd}); give the path of a "
            "data file (jsonl, json, parquet or csv, optionally .gz)",
        ),
        (
            ["data=local", "data.path={cwd}", "data.val_path=val.jsonl"],
            "data.val_path=val.jsonl: no such file or folder",
        ),
        (
            ["data=local", "data.path=Anthropic/hh-rlhf"],
            "folder you start from; for a Hugging Face hub dataset of that name, use data=hub "
            "data.path=Anthropic/hh-rlhf",
        ),
        (["data=hub", "data.path=./pairs.jsonl"], "data.path=./pairs.jsonl: no such file"),
        (["data=hub", "data.path=runs/data/pairs"], "data.path=runs/data/pairs: no such file"),
        (
            ["model=local", "model.path=policy.safetensors"],
            "model.path=policy.safetensors: no such file or folder (looked in {cwd}); give the "
            "path of a folder written by save_pretrained (or a hub id, owner/name)",
        ),
        (
            ["model.reference_path=outputs/run/export"],
            "model.reference_path=outputs/run/export: no such file",
        ),
        (
            ["+loss.gamma=2"],
            "loss.gamma: loss has no key 'gamma'; its keys are: beta, label_smoothing",
        ),
        (
            ["+data.colums.prompt=q"],
            "data.colums: data has no key 'colums'; did you mean data.columns?",
        ),
        (
            ["+model.lora.alhpa=4"],
            "model.lora.alhpa: model.lora has no key 'alhpa'; did you mean model.lora.alpha?",
        ),
        (["+seeed=1"], "seeed: the config has no key 'seeed'; did you mean seed?"),
        (
            ["+trainer.gpus=1"],
            "trainer.gpus: trainer has no key 'gpus'; its keys are: accelerator,",
        ),
        (
            ["+optim.optimizer.momentum=0.9"],
            "optim.optimizer.momentum: torch.optim.AdamW takes no argument 'momentum'; it takes: "
            "params, lr, betas, eps",
        ),
        (
            [MONITOR, "+trainer.callbacks.lr.logging_intervall=step"],
            "trainer.callbacks.lr.logging_intervall: lightning.pytorch.callbacks.LearningRateMonitor "
            "takes no argument 'logging_intervall'; did you mean trainer.callbacks.lr.logging_interval?",
        ),
        (
            ["loss._target_=prefopt.losses.dpo.DPOLos"],
            "loss._target_=prefopt.losses.dpo.DPOLos: no class or function of that name",
        ),
        (
            ["trainer.accelerator=gpus"],
            "trainer.accelerator=gpus: no such accelerator; did you mean gpu?",
        ),
        (
            ["trainer=fsdp", "loop=online", "eval.num_prompts=0"],
            "trainer.strategy=fsdp with loop=online: sampling with generate on sharded weights "
            "deadlocks",
        ),
        (
            ["loss=kto", "data.batch_size=1"],
            "loss=kto with data.batch_size=1: its KL estimate pairs each prompt with another "
            "example's completion",
        ),
        pytest.param(
            ["trainer.accelerator=gpu"],
            "trainer.accelerator=gpu: torch finds no GPU on this machine; train on the CPU with "
            "trainer=cpu",
            marks=NO_GPU,
        ),
    ],
)
def test_bad_input_is_one_line_before_any_run(
    compose_config, capsys, tmp_path, monkeypatch, overrides, expected
):
    monkeypatch.chdir(tmp_path)
    cfg = compose_config(*(o.format(cwd=tmp_path) for o in overrides))
    line = user_error(capsys, train, cfg)
    assert expected.format(cwd=tmp_path) in line, line
    assert no_store(cfg)


def test_more_gpus_than_the_machine_has_is_one_line(compose_config, capsys):
    have = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if not have:
        pytest.skip("needs a GPU: without one, trainer.accelerator=gpu fails first (above)")
    cfg = compose_config("trainer.accelerator=gpu", f"trainer.devices={have + 1}")
    line = user_error(capsys, train, cfg)
    assert f"trainer.devices={have + 1}: needs {have + 1} GPUs, this machine has {have}" in line
    assert no_store(cfg)


@pytest.mark.parametrize(
    "devices, needed", [(2, 2), ("3", 3), ([0, 3], 4), ("0,1", 2), (-1, None), ("auto", None)]
)
def test_the_gpus_a_devices_value_needs(devices, needed):
    assert checks._devices_needed(devices) == needed


def test_valid_additions_and_hub_names_pass_the_checks(compose_config):
    """What the checks must not refuse: a callback with its arguments, an argument the
    optimizer takes, a judge of one's own, and hub names (never looked up here)."""
    cfg = compose_config(
        MONITOR,
        "+trainer.callbacks.lr.logging_interval=step",
        "optim.optimizer._target_=torch.optim.SGD",
        "~optim.optimizer.betas",
        "+optim.optimizer.momentum=0.9",
        "judge._target_=prefopt.judges.toy.ToyJudge",
        "data=hub",
        "data.path=Anthropic/hh-rlhf",
        "model.reference_path=Qwen/Qwen2.5-0.5B",
    )
    checks.check_config(cfg)


@pytest.mark.parametrize(
    "name, local",
    [
        ("pairs.jsonl", True),
        ("data/pairs.parquet", True),
        ("./pairs", True),
        ("~/pairs", True),
        ("/data/pairs", True),
        ("runs/a/export", True),
        ("Anthropic/hh-rlhf", False),
        ("Qwen/Qwen2.5-0.5B", False),
        ("imdb", False),
    ],
)
def test_which_names_can_only_be_local(name, local):
    assert looks_local(name) is local


def test_a_local_looking_name_never_reaches_the_hub(tmp_path, monkeypatch):
    """`datasets.load_dataset` would take it for a hub dataset and retry the network."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(PrefoptError, match=r"^pairs.jsonl: no such file or folder"):
        load_split("pairs.jsonl", "train")


def test_the_command_line_stops_a_missing_data_file_in_one_line_with_the_hub_unreachable(tmp_path):
    """The hub is a closed port on 127.0.0.1, and not offline: a lookup would be tried (and
    retried) if the path reached `datasets`."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO / "src"),
        "HF_ENDPOINT": f"http://127.0.0.1:{closed}",
    }
    env.pop("HF_HUB_OFFLINE", None)
    env.pop("HF_DATASETS_OFFLINE", None)
    proc = subprocess.run(
        [sys.executable, "-m", "prefopt.train", "data=local", "data.path=pairs.jsonl"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == (
        f"prefopt: error: data.path=pairs.jsonl: no such file or folder (looked in {tmp_path}); "
        "give the path of a data file (jsonl, json, parquet or csv, optionally .gz) or a dataset "
        "folder, absolute or relative to the folder you start from"
    )
    assert not (tmp_path / "mlflow.db").exists()
