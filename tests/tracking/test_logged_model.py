"""The aligned policy as an MLflow logged model (`tracking.models`): one short toy run with
`model.register_as=toy-aligned`, shared by the assertions on its logged model, its metrics, its
registered version and loading it back; then `log_aligned_model` alone for what a run without a
name, a LoRA adapter and an unreachable store get. Real SQLite stores in tmp dirs, no mocks."""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

import mlflow
import pytest
import torch
from mlflow.entities import LoggedModelStatus
from mlflow.tracking import MlflowClient
from omegaconf import OmegaConf
from transformers import AutoModelForCausalLM

from prefopt.config.schema import LoggerConfig, ModelConfig
from prefopt.errors import PrefoptError
from prefopt.tracking.models import (
    LOGGED_MODEL_NAME,
    TASK,
    check_model_logging,
    log_aligned_model,
)
from prefopt.tracking.runs import finish_run, start_run

from ..conftest import CONF_DIR, SMALL_TOY, tiny_llama
from ..mlflow_servers import free_port

PROMPT = "review of the"
STEPS = 5


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory, toy_cache, reference_cache):
    """5 steps of DPO on the small toy world; a validation after 4, the last evaluation at 5."""
    from hydra import compose, initialize_config_dir

    from prefopt.config.schema import register_configs
    from prefopt.train import train

    tmp = tmp_path_factory.mktemp("logged_model")
    register_configs()
    overrides = [
        *SMALL_TOY,
        f"toy.cache_dir={toy_cache}",
        f"reference.cache_dir={reference_cache}",
        f"output_dir={tmp / 'out'}",
        f"logger.tracking_uri=sqlite:///{tmp / 'mlflow.db'}",
        "trainer.enable_progress_bar=false",
        f"trainer.max_steps={STEPS}",
        "trainer.val_check_interval=4",
        "trainer.limit_val_batches=2",
        "eval.num_prompts=8",
        "model.register_as=toy-aligned",
    ]
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("config", overrides=overrides)
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(tmp)  # the store's artifacts (./mlruns) in the tmp dir
        result = train(cfg)
    return cfg.logger.tracking_uri, result


def logged_models(store: str, experiment: str = "prefopt"):
    client = MlflowClient(store)
    return client.search_logged_models([client.get_experiment_by_name(experiment).experiment_id])


def test_the_run_has_its_aligned_model_with_its_final_metrics(toy_run):
    store, result = toy_run
    [model] = logged_models(store)
    assert model.name == LOGGED_MODEL_NAME and model.status == LoggedModelStatus.READY
    assert model.source_run_id == result.run_id
    run = MlflowClient(store).get_run(result.run_id)
    [output] = run.outputs.model_outputs
    assert (output.model_id, output.step) == (model.model_id, STEPS)
    linked = {m.key: (m.value, m.step) for m in model.metrics}
    last_val = max(MlflowClient(store).get_metric_history(result.run_id, "val/loss"), key=lambda m: m.step)  # fmt: skip
    assert last_val.step < STEPS  # a validation before the last step is linked too
    assert linked["val/loss"] == (run.data.metrics["val/loss"], last_val.step)
    assert linked["eval/win_rate_vs_ref"] == (run.data.metrics["eval/win_rate_vs_ref"], STEPS)
    assert not any(key.startswith("train/") for key in linked)
    assert model.params["loss/beta"] == run.data.params["loss/beta"]


def test_the_registered_version_loads_back_and_generates(toy_run):
    store, result = toy_run
    [model] = logged_models(store)
    version = MlflowClient(store).get_model_version("toy-aligned", "1")
    assert version.source == f"models:/{model.model_id}" and version.run_id == result.run_id
    mlflow.set_tracking_uri(store)
    pipeline = mlflow.transformers.load_model("models:/toy-aligned/1")
    exported = AutoModelForCausalLM.from_pretrained(result.export_dir)
    for name, weight in exported.state_dict().items():  # the logged weights are the export's
        assert torch.equal(pipeline.model.state_dict()[name], weight), name
    [generated] = pipeline(PROMPT, max_new_tokens=6, do_sample=False)
    assert generated["generated_text"].startswith(PROMPT)
    assert len(generated["generated_text"]) > len(PROMPT)
    [text] = mlflow.pyfunc.load_model("models:/toy-aligned/1").predict([PROMPT])
    assert isinstance(text, str) and text


def test_the_weights_are_on_disk_once(toy_run):
    store, result = toy_run
    [model] = logged_models(store)
    logged = Path(model.artifact_location) / "model" / "model.safetensors"
    exported = result.export_dir / "model.safetensors"
    assert os.path.samefile(logged, exported)


# --- log_aligned_model alone, on a run of its own --------------------------------------------


@pytest.fixture
def run_logger(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    logger = start_run(LoggerConfig(tracking_uri=store), "run", offline_dir=tmp_path / "out")
    logger.log_metrics({"val/loss": 0.6}, step=3)
    yield logger
    finish_run(logger, "FINISHED")


@pytest.fixture
def toy_export(toy_run, tmp_path) -> Path:
    """A copy of the toy run's export (logging it again hard-links its weights elsewhere)."""
    return Path(shutil.copytree(toy_run[1].export_dir, tmp_path / "export"))


def test_without_register_as_the_model_is_logged_and_nothing_registered(run_logger, toy_export):
    uri = log_aligned_model(run_logger, {"prefopt.export_dir": toy_export}, ModelConfig(), 3)
    store = run_logger.tracking_uri
    [model] = logged_models(store)
    assert uri == f"models:/{model.model_id}"
    assert {m.key: m.value for m in model.metrics} == {"val/loss": 0.6}
    assert MlflowClient(store).search_registered_models() == []


def test_model_log_model_false_logs_nothing(run_logger, toy_export):
    cfg = ModelConfig(log_model=False)
    assert log_aligned_model(run_logger, {"prefopt.export_dir": toy_export}, cfg, 3) is None
    assert logged_models(run_logger.tracking_uri) == []


def test_register_as_needs_an_exported_logged_model():
    check_model_logging(OmegaConf.structured(ModelConfig(register_as="x")), export=True)
    for cfg, export in ((ModelConfig(register_as="x"), False), (ModelConfig(register_as="x", log_model=False), True)):  # fmt: skip
        with pytest.raises(PrefoptError, match="model.register_as=x"):
            check_model_logging(cfg, export)


def test_a_lora_adapter_is_logged_with_its_base_referenced_not_copied(run_logger, tmp_path):
    from peft import LoraConfig, get_peft_model

    from prefopt.toy.tokenizer import build_tokenizer

    tokenizer = build_tokenizer()
    base_dir, adapter_dir = tmp_path / "base", tmp_path / "adapter"
    tiny_llama(vocab_size=len(tokenizer)).save_pretrained(base_dir)
    base = AutoModelForCausalLM.from_pretrained(base_dir)
    policy = get_peft_model(base, LoraConfig(r=2, target_modules=["q_proj", "v_proj"]))
    policy.save_pretrained(adapter_dir)  # as export_policy writes a LoRA policy
    tokenizer.save_pretrained(adapter_dir)

    cfg = ModelConfig(register_as="toy-lora")
    assert log_aligned_model(run_logger, {"prefopt.export_dir": adapter_dir}, cfg, 3)
    [model] = logged_models(run_logger.tracking_uri)
    files = {p.relative_to(model.artifact_location).as_posix() for p in Path(model.artifact_location).rglob("*")}  # fmt: skip
    assert "peft/adapter_model.safetensors" in files
    assert not any(name.startswith("model/") for name in files)  # the base is referenced
    mlflow.set_tracking_uri(run_logger.tracking_uri)
    pipeline = mlflow.transformers.load_model("models:/toy-lora/1")
    [generated] = pipeline(PROMPT, max_new_tokens=3, do_sample=False)
    assert generated["generated_text"].startswith(PROMPT)


def test_an_offline_run_logs_no_model_and_says_where_the_export_is(
    run_logger, toy_export, caplog, monkeypatch
):
    """The store goes away (the client pointed at a closed port, as in test_reliability)."""
    store = run_logger.tracking_uri
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    run_logger.experiment._client = MlflowClient(f"http://127.0.0.1:{free_port()}")
    run_logger.experiment.set_tag(run_logger.run_id, "prefopt.export_dir", str(toy_export))
    assert run_logger.offline
    with caplog.at_level(logging.WARNING, "prefopt.tracking"):
        cfg = ModelConfig(register_as="toy-aligned")
        assert log_aligned_model(run_logger, {"prefopt.export_dir": toy_export}, cfg, 3) is None
    [warning] = [r.getMessage() for r in caplog.records if "aligned model" in r.getMessage()]
    assert "unreachable" in warning and str(toy_export) in warning and "\n" not in warning
    assert logged_models(store) == []


def test_a_store_that_fails_while_the_model_is_logged_does_not_fail_the_run(
    run_logger, toy_export, caplog, monkeypatch
):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setattr(run_logger, "tracking_uri", f"http://127.0.0.1:{free_port()}")
    with caplog.at_level(logging.WARNING, "prefopt.tracking"):
        assert log_aligned_model(run_logger, {"prefopt.export_dir": toy_export}, ModelConfig(), 3) is None  # fmt: skip
    [warning] = [r.getMessage() for r in caplog.records if "aligned model" in r.getMessage()]
    assert "MLflow is unreachable" in warning and str(toy_export) in warning


def test_mlflow_s_local_checkpoint_path_still_fails_under_this_transformers(toy_export, tmp_path):
    """Why `tracking.models` loads the exported folder instead of handing MLflow its path: when
    this fails, MLflow can log the folder without loading it; switch to
    `log_model(str(folder), task=TASK)` there."""
    with pytest.raises(AttributeError, match="__name__"):
        mlflow.transformers.save_model(str(toy_export), path=tmp_path / "m", task=TASK)
