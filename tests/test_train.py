"""End to end on the toy world: train, log to MLflow, export, reload."""

import subprocess
import sys

import pytest
from mlflow.tracking import MlflowClient
from transformers import AutoModelForCausalLM, AutoTokenizer

from prefopt.train import train

from .conftest import user_error


def client_for(cfg) -> MlflowClient:
    return MlflowClient(tracking_uri=cfg.logger.tracking_uri)


def test_dpo_on_the_toy_world_aligns_logs_and_exports(compose_config):
    cfg = compose_config("loss.beta=0.1", "trainer.log_every_n_steps=1")
    result = train(cfg)

    assert result.metrics["val/rewards/accuracies"] > 0.5
    client = client_for(cfg)
    run = client.get_run(result.run_id)
    assert run.info.status == "FINISHED"
    assert run.info.run_name == "dpo β=0.1 lr=5e-4"
    assert run.data.params["loss/beta"] == "0.1"
    assert run.data.params["optim/lr"] == "0.0005"
    for name in (
        "loss",
        "rewards/chosen",
        "rewards/rejected",
        "rewards/margins",
        "rewards/accuracies",
        "logps/chosen",
        "logps/rejected",
        "gradient_weight",
    ):
        assert f"train/{name}" in run.data.metrics, name
        assert f"val/{name}" in run.data.metrics, name
    artifacts = {a.path for a in client.list_artifacts(result.run_id)}
    assert "config.yaml" in artifacts
    assert run.data.tags["prefopt.export_dir"] == str(result.export_dir.resolve())

    history = [m.value for m in client.get_metric_history(result.run_id, "train/loss")]
    assert len(history) >= 10
    first, last = sum(history[:5]) / 5, sum(history[-5:]) / 5
    assert last < first, history

    model = AutoModelForCausalLM.from_pretrained(result.export_dir)
    tokenizer = AutoTokenizer.from_pretrained(result.export_dir)
    ids = tokenizer("review of the", return_tensors="pt").input_ids
    assert model.generate(ids, max_new_tokens=3, do_sample=False).shape[1] > ids.shape[1]


def test_a_failure_after_the_run_started_marks_it_failed(compose_config, capsys, tmp_path):
    broken = tmp_path / "broken.jsonl"  # exists (a missing file stops before the run starts)
    broken.write_text('{"prompt": "a", "cho\n')
    cfg = compose_config("data=local", f"data.path={broken}")
    line = user_error(capsys, train, cfg)
    assert f"{broken} line 1: invalid JSON" in line, line
    client = client_for(cfg)
    experiment = client.get_experiment_by_name("prefopt")
    runs = client.search_runs([experiment.experiment_id])
    assert [r.info.status for r in runs] == ["FAILED"]


def test_invalid_hyperparameters_fail_before_any_run(compose_config):
    cfg = compose_config("loss.beta=-0.1")
    with pytest.raises(ValueError, match="loss.beta=-0.1"):
        train(cfg)
    assert client_for(cfg).get_experiment_by_name("prefopt") is None


def test_cli_runs_from_any_directory(tmp_path, toy_cache):
    """`python -m prefopt.train` finds conf/ from another working directory; MLflow's store and
    Hydra's outputs land in that directory."""
    from .conftest import SMALL_TOY

    cmd = [
        sys.executable,
        "-m",
        "prefopt.train",
        *SMALL_TOY,
        f"toy.cache_dir={toy_cache}",
        "trainer.max_steps=3",
        "trainer.limit_val_batches=1",
        "trainer.enable_progress_bar=false",
        "optim.lr=1e-4",
    ]
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "mlflow.db").exists()
    assert list((tmp_path / "outputs").glob("*/*/model/config.json"))
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("prefopt").experiment_id])
    assert [r.info.run_name for r in runs] == ["dpo β=0.1 lr=1e-4"]


def test_a_callback_added_in_the_config_runs_with_no_python(compose_config):
    """lightning-hydra-template's habit: `trainer.callbacks.<name>` is a `_target_` node."""
    monitor = "lightning.pytorch.callbacks.LearningRateMonitor"
    cfg = compose_config(
        f"+trainer.callbacks.lr_monitor._target_={monitor}",
        "+trainer.callbacks.lr_monitor.logging_interval=step",
        "trainer.max_steps=3", "trainer.log_every_n_steps=1", "trainer.limit_val_batches=1",
        "eval.num_prompts=0", "export=false",
    )  # fmt: skip
    result = train(cfg)
    history = client_for(cfg).get_metric_history(result.run_id, "lr-AdamW")
    assert [m.step for m in history] == [0, 1, 2]  # the monitor logged each step's lr


def test_a_misspelled_callback_target_fails_before_any_run(compose_config):
    from prefopt.errors import PrefoptError

    cfg = compose_config("+trainer.callbacks.lr._target_=lightning.pytorch.callbacks.LRMonitor")
    with pytest.raises(PrefoptError, match=r"^trainer.callbacks.lr._target_=.*LRMonitor: no class"):
        train(cfg)
