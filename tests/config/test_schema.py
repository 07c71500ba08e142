"""Typed choices: a wrong one fails when Hydra composes, naming the key and the valid values;
a right one behaves as its string everywhere the code, JSON and MLflow see it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf

from prefopt.config import checks
from prefopt.config.schema import (
    DataFormat,
    ModelDtype,
    OnInvalid,
    Scheduler,
)
from prefopt.errors import PrefoptError

CONF = Path(__file__).resolve().parents[2] / "conf"


@pytest.mark.parametrize(
    "key, wrong, valid",
    [
        ("optim.scheduler", "cosin", "constant, linear, cosine"),
        ("data.format", "tsv", "auto, explicit, conversational, implicit, unpaired"),
        ("data.on_invalid", "ignore", "error, skip"),
        ("data.source", "s3", "toy, local, hub"),
        ("model.dtype", "fp8", "float32, bfloat16, float16"),
    ],
)
def test_a_wrong_choice_fails_at_compose_time_with_the_valid_values(
    compose_config, key, wrong, valid
):
    with pytest.raises(ConfigCompositionException) as error:
        compose_config(f"{key}={wrong}")
    cause = str(error.value.__cause__)
    assert f"Invalid value '{wrong}', expected one of [{valid}]" in cause
    assert f"full_key: {key}" in cause
    # and before Hydra composes, the command line's one-line error says the same
    with pytest.raises(PrefoptError) as line:
        checks.check_overrides([f"{key}={wrong}"], CONF)
    assert str(line.value) == f"{key}='{wrong}': choose one of {valid}"


def test_choice_overrides_are_checked_value_by_value():
    checks.check_overrides(
        [
            "optim.scheduler=cosine",
            "optim.scheduler='constant'",
            "--multirun",
            "data.format=explicit,unpaired",
            "optim.scheduler=choice(linear,cosine)",  # a sweep function: Hydra's to parse
            "model.dtype=${oc.env:DTYPE}",
            "~data.on_invalid",
        ],
        CONF,
    )
    with pytest.raises(PrefoptError, match=r"^optim.scheduler='cosin': choose one of"):
        checks.check_overrides(["optim.scheduler=linear,cosin"], CONF)


def test_choice_fields_are_found_through_the_schemas():
    assert checks.choice_type("optim.scheduler") is Scheduler
    assert checks.choice_type("model.dtype") is ModelDtype
    assert checks.choice_type("data.on_invalid") is OnInvalid
    assert checks.choice_type("model.lora.r") is None
    assert checks.choice_type("toy.seed") is None
    assert checks.choice_type("loss.beta") is None
    assert checks.choice_type("no.such.key") is None


def test_a_choice_behaves_as_its_string(compose_config):
    cfg = compose_config("optim.scheduler=cosine")
    value = cfg.optim.scheduler
    assert value is Scheduler.cosine
    assert value == "cosine" and value in ("linear", "cosine") and {"cosine": 1}[value] == 1
    assert str(value) == f"{value}" == "cosine"
    assert json.dumps({"s": value}) == '{"s": "cosine"}'
    assert "scheduler: cosine" in OmegaConf.to_yaml(cfg.optim)
    assert OmegaConf.to_container(cfg.data, resolve=True)["format"] == "explicit"


def test_the_data_format_choice_lists_every_format_the_data_code_reads():
    from prefopt.data.formats import LAYOUTS

    assert set(DataFormat.values()) == {"auto", "unpaired", *LAYOUTS}


def test_an_optimizer_target_that_cannot_be_imported_fails_at_start(compose_config):
    cfg = compose_config("optim.optimizer._target_=torch.optim.Adamw")
    with pytest.raises(
        PrefoptError, match=r"^optim.optimizer._target_=torch.optim.Adamw: no class or function"
    ):
        checks.check_optim(cfg.optim)
    checks.check_optim(compose_config("optim=sgd").optim)


def test_every_dtype_choice_loads():
    from prefopt.model.loading import DTYPES

    assert set(DTYPES) == set(ModelDtype.values())
