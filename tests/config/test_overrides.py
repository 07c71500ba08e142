"""The command line's misspellings, before Hydra composes: a key without `+`, a group's option
(of every group, `loop` and `sweep` included), each one line with exit status 2 naming the
closest valid names; Hydra would answer with six to ten lines and exit 1 (advising, for a
misspelled key, to add it with `+`, and listing `loop_schema` among the loop's options)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from prefopt.config import checks, config_dir
from prefopt.config.schema import register_configs

from ..conftest import user_error

REPO = Path(__file__).resolve().parents[2]
CONF = config_dir()


@pytest.fixture(autouse=True, scope="module")
def schemas_registered():
    register_configs()  # the losses' and judges' schemas, as `python -m prefopt.train` has them


@pytest.mark.parametrize(
    "args, line",
    [
        (["loss.betta=0.1"], "loss.betta: loss has no key 'betta'; did you mean loss.beta?"),
        (
            ["trainer.max_stepz=3"],
            "trainer.max_stepz: trainer has no key 'max_stepz'; did you mean trainer.max_steps?",
        ),
        (["betta=0.1"], "betta: the config has no key 'betta'; did you mean loss.beta?"),
        (
            ["max_steps=3"],
            "max_steps: the config has no key 'max_steps'; did you mean trainer.max_steps?",
        ),
        (["seeed=1"], "seeed: the config has no key 'seeed'; did you mean seed?"),
        (
            ["model.lora.alhpa=4"],
            "model.lora.alhpa: model.lora has no key 'alhpa'; did you mean model.lora.alpha?",
        ),
        (
            ["checkpoint.every_n_step=3"],
            "checkpoint.every_n_step: checkpoint has no key 'every_n_step'; did you mean "
            "checkpoint.every_n_steps?",
        ),
        (
            ["--multirun", "eval.num_prompt=3,4"],
            "eval.num_prompt: eval has no key 'num_prompt'; did you mean eval.num_prompts?",
        ),
        (  # the chosen loss's keys, not every loss's
            ["loss=ipo", "loss.label_smoothing=0.1"],
            "loss.label_smoothing: loss has no key 'label_smoothing'; its keys are: beta,",
        ),
        (
            ["loop=onlin"],
            "loop=onlin: there is no such loop; did you mean online or offline? "
            "(all: offline, online)",
        ),
        (
            ["judge=tyo"],
            "judge=tyo: there is no such judge; did you mean toy? (all: learned_toy, none, python,",
        ),
        (
            ["optim=adamm"],
            "optim=adamm: there is no such optim; did you mean adamw? (all: adamw, sgd)",
        ),
        (["sweep=beta_dp"], "sweep=beta_dp: there is no such sweep; did you mean beta_dpo"),
        (
            ["--multirun", "loss.betta=interval(0.01,1)"],  # a sweep function's key too
            "loss.betta: loss has no key 'betta'; did you mean loss.beta?",
        ),
        (
            ["--multirun", "loss=dpo,ipoo"],
            "loss=ipoo: there is no such loss; did you mean ipo or simpo?",
        ),
        (["+experiment=qwen"], "experiment=qwen: there is no such experiment; choose one of:"),
        (["model=qwen2.5"], "model=qwen2.5: there is no such model; did you mean qwen2.5-0.5b?"),
        (["trainer=gpus"], "trainer=gpus: there is no such trainer; did you mean gpu"),
    ],
)
def test_a_misspelling_is_one_line_with_the_closest_names(capsys, args, line):
    error = user_error(capsys, checks.check_overrides, args, CONF)
    assert error.startswith(f"prefopt: error: {line}"), error
    assert "_schema" not in error  # internal names are never offered


def test_valid_keys_and_options_pass():
    """What must not be refused: keys a schema cannot check (an optimizer's arguments, a
    callback), a key of the chosen loss or judge, any loss's key when a sweep chooses, Hydra's
    own settings, sweep values."""
    checks.check_overrides(
        [
            "--multirun",
            "loss.beta=0.05,0.1",
            "optim.lr=interval(1e-5,1e-3)",
            "loss=choice(dpo,ipo)",
            "loss.simpo_gamma=1",  # sweep=… may choose a loss that has it
            "optim.optimizer.momentum=0.9",
            "trainer.callbacks.lr=null",
            "data.columns.prompt=question",
            "model.lora.r=8",
            "loop=online",
            "loop.kind=online",
            "judge=python",
            "judge.function=a.b",
            "hydra/launcher=slurm",
            "hydra.run.dir=runs/x",
            "+trainer.callbacks.lr._target_=lightning.pytorch.callbacks.LearningRateMonitor",
            "sweep=losses",
            "+experiment=qwen2.5-0.5b",
            "output_dir=/tmp/x",
            "ckpt_path=last.ckpt",
            "checkpoint.every_n_minutes=0.5",
        ],
        CONF,
    )


def test_every_folder_of_conf_is_a_checked_group_but_hydras_own():
    from prefopt.config.overrides import config_groups

    assert set(config_groups(CONF)) == {p.name for p in Path(CONF).iterdir() if p.is_dir()} - {
        "hydra",
        "local",
    }
    assert {"loop", "sweep", "judge", "experiment"} <= set(config_groups(CONF))


def test_the_command_line_answers_a_misspelled_key_in_one_line(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "prefopt.train", "loss.betta=0.1"],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(REPO / "src")},
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert proc.stderr.strip().splitlines() == [
        "prefopt: error: loss.betta: loss has no key 'betta'; did you mean loss.beta?"
    ]
    assert not (tmp_path / "mlflow.db").exists()
