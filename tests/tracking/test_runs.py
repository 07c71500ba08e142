"""A run's life in MLflow (`tracked_run`), its logger's public `tracking_uri`, the params a
config becomes, and the two functions the rest of prefopt logs through (`set_tags`,
`log_table`). Everything against a real SQLite store, one for the module (creating one takes about
a second): a test that counts runs counts those of its own experiment. Nothing of MLflow is
mocked."""

from __future__ import annotations

import logging

import pytest
from lightning.pytorch.loggers import CSVLogger
from mlflow.tracking import MlflowClient
from omegaconf import OmegaConf

from prefopt.config.schema import LoggerConfig
from prefopt.tracking import log_table, set_tags, start_run, tracked_run
from prefopt.tracking.runs import PARAM_VALUE_LIMIT, flatten_params

CONFIG = {"loss": {"beta": 0.1, "name": "dpo"}, "optim": {"lr": 5e-4}, "seed": 0}


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> str:
    return f"sqlite:///{tmp_path_factory.mktemp('store') / 'mlflow.db'}"


@pytest.fixture
def experiment(request) -> str:
    """An experiment of the test's own in the module's store: its runs are the test's alone."""
    return request.node.name


def only_run(store: str, experiment: str):
    client = MlflowClient(tracking_uri=store)
    runs = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    assert len(runs) == 1, [r.info.run_name for r in runs]
    return client, runs[0]


def test_a_run_that_completes_ends_finished_with_its_config_tags_and_params(
    store, experiment, tmp_path
):
    with tracked_run(
        LoggerConfig(
            tracking_uri=store,
            experiment_name=experiment,
            tags={"team": "a"},
            log_system_metrics=False,
        ),
        "dpo β=0.1 lr=5e-4",
        OmegaConf.create(CONFIG),
        tags={"prefopt.sweep_job": "3"},
        params={"loss": "dpo"},
        offline_dir=tmp_path,
    ) as logger:
        assert MlflowClient(store).get_run(logger.run_id).info.status == "RUNNING"
        logger.log_metrics({"train/loss": 0.5}, step=1)
    client, run = only_run(store, experiment)
    assert run.info.run_id == logger.run_id
    assert run.info.status == "FINISHED"
    assert run.info.run_name == "dpo β=0.1 lr=5e-4"
    assert run.data.params == {
        "loss/beta": "0.1",
        "loss/name": "dpo",
        "optim/lr": "0.0005",
        "seed": "0",
        "loss": "dpo",
    }
    assert run.data.tags["team"] == "a" and run.data.tags["prefopt.sweep_job"] == "3"
    assert "prefopt.resumed_from" not in run.data.tags
    assert run.data.metrics == {"train/loss": 0.5}
    assert {a.path for a in client.list_artifacts(run.info.run_id)} == {"config.yaml"}


def test_a_run_that_raises_ends_failed_and_the_error_goes_on(store, experiment):
    logger_cfg = LoggerConfig(tracking_uri=store, experiment_name=experiment)
    with pytest.raises(RuntimeError, match="out of memory"):
        with tracked_run(logger_cfg, "run", OmegaConf.create(CONFIG)):
            raise RuntimeError("out of memory")
    assert only_run(store, experiment)[1].info.status == "FAILED"


@pytest.mark.parametrize("interrupt", [KeyboardInterrupt, SystemExit])
def test_an_interrupted_run_ends_killed(store, experiment, interrupt):
    logger_cfg = LoggerConfig(tracking_uri=store, experiment_name=experiment)
    with pytest.raises(interrupt):
        with tracked_run(logger_cfg, "run", OmegaConf.create(CONFIG)):
            raise interrupt()
    assert only_run(store, experiment)[1].info.status == "KILLED"


def test_a_resumed_run_continues_keeps_its_params_and_warns_about_changed_ones(
    store, experiment, tmp_path, caplog
):
    logger_cfg = LoggerConfig(tracking_uri=store, experiment_name=experiment)
    long_value = "x" * (PARAM_VALUE_LIMIT + 50)  # longer than a param: compared whole
    first = {**CONFIG, "notes": long_value}
    with tracked_run(logger_cfg, "run", OmegaConf.create(first)) as logger:
        run_id = logger.run_id
    checkpoint = tmp_path / "checkpoints" / "last.ckpt"
    changed = {**first, "optim": {"lr": 1e-3}, "trainer": {"max_steps": 7}}  # a new key param
    with caplog.at_level(logging.WARNING, logger="prefopt.tracking"):
        with tracked_run(
            logger_cfg,
            "run",
            OmegaConf.create(changed),
            run_id=run_id,
            resumed_from=checkpoint,
        ) as logger:
            assert logger.run_id == run_id
            assert MlflowClient(store).get_run(run_id).info.status == "RUNNING"
    client, run = only_run(store, experiment)  # continued: no second run
    assert run.info.status == "FINISHED"
    assert run.data.params["optim/lr"] == "0.0005"  # MLflow never changes a param
    assert run.data.params["trainer/max_steps"] == "7"
    assert run.data.tags["prefopt.resumed_from"] == str(checkpoint.resolve())
    warnings = [r.getMessage() for r in caplog.records if "resumed with changed" in r.message]
    assert warnings == [
        "resumed with changed settings (params keep their first value): ['optim/lr']"
    ]
    artifacts = {a.path for a in client.list_artifacts(run_id)}
    assert artifacts == {"config.yaml", "config_resumed.yaml"}


def test_the_logger_says_which_store_it_writes_to(tmp_path, monkeypatch):
    """`tracking_uri` is public and resolved: a relative sqlite path becomes absolute, so the
    run file of a checkpoint and the summary line name the database wherever they are read."""
    monkeypatch.chdir(tmp_path)
    logger = start_run(LoggerConfig(tracking_uri="sqlite:///mlflow.db"), "run")
    assert logger.tracking_uri == f"sqlite:///{tmp_path / 'mlflow.db'}"
    run = MlflowClient(tracking_uri=logger.tracking_uri).get_run(logger.run_id)
    assert run.info.run_name == "run"


def test_flattened_params_are_the_params_lightning_logs(store):
    """`flatten_params` (used to compare a resumed run's config) gives exactly what
    `MLFlowLogger.log_hyperparams` stores: fails loudly if Lightning changes how it flattens."""
    config = {
        "model": {"path": "toy", "lora": {"r": 8, "target_modules": ["q_proj", "v_proj"]}},
        "judges": [{"name": "toy", "weight": 1.0}, {"name": "rm", "weight": None}],
        "empty_list": [],
        "empty_group": {},
        "flag": True,
        "lr": 5e-7,
        "long": "y" * (PARAM_VALUE_LIMIT + 10),
    }
    logger = start_run(LoggerConfig(tracking_uri=store), "run")
    logger.log_hyperparams(config)
    stored = MlflowClient(store).get_run(logger.run_id).data.params
    expected = {k: str(v)[:PARAM_VALUE_LIMIT] for k, v in flatten_params(config).items()}
    assert stored == expected
    assert expected["judges/1/weight"] == "None"
    assert expected["model/lora/target_modules"] == "['q_proj', 'v_proj']"


def test_tags_and_tables_reach_the_run_and_skip_other_loggers(store, tmp_path):
    logger = start_run(LoggerConfig(tracking_uri=store), "run")
    set_tags(logger, {"diagnostics.margin_stalled": "true", "prefopt.step": 3})
    table = {"step": [1, 1], "prompt": ["a", "b"], "policy": ["c", "d"]}
    log_table(logger, table, "eval/generations.json")
    log_table(logger, {"step": [2], "prompt": ["e"], "policy": ["f"]}, "eval/generations.json")
    client = MlflowClient(store)
    tags = client.get_run(logger.run_id).data.tags
    assert tags["diagnostics.margin_stalled"] == "true" and tags["prefopt.step"] == "3"
    loaded = client.load_table(
        client.get_experiment_by_name("prefopt").experiment_id,
        "eval/generations.json",
        run_ids=[logger.run_id],
    )
    assert loaded["prompt"].tolist() == ["a", "b", "e"]

    for other in (None, CSVLogger(tmp_path)):  # no MLflow run: nothing to do, no error
        set_tags(other, {"a": "b"})
        log_table(other, table, "eval/generations.json")
    assert not (tmp_path / "lightning_logs").exists()


def test_system_metrics_are_sampled_while_the_run_lasts_and_only_when_asked(store, monkeypatch):
    """MLflow's system-metrics monitor, started for a run Lightning's logger created: this
    fails when MLflow moves or changes that class. Sampled every 0.1 s here (10 s by default).
    A run without system metrics lasts around one with them until that one got two samples (or
    30 s went by): had it a monitor, it would have sampled as often."""
    import time

    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "0.1")
    config = OmegaConf.create(CONFIG)
    client = MlflowClient(store)

    def samples(run_id):
        return client.get_metric_history(run_id, "system/cpu_utilization_percentage")

    off_cfg = LoggerConfig(tracking_uri=store, log_system_metrics=False)
    with tracked_run(off_cfg, "off", config) as off:
        on_cfg = LoggerConfig(tracking_uri=store, log_system_metrics=True)
        with tracked_run(on_cfg, "on", config) as on:
            deadline = time.monotonic() + 30
            while len(samples(on.run_id)) < 2 and time.monotonic() < deadline:
                time.sleep(0.05)
            assert len(samples(on.run_id)) >= 2  # sampled while the run lasts, not once
    for logger, enabled in ((on, True), (off, False)):
        run = client.get_run(logger.run_id)
        system = {k for k in run.data.metrics if k.startswith("system/")}
        if enabled:
            assert {
                "system/cpu_utilization_percentage",
                "system/system_memory_usage_megabytes",
            } <= system
        else:
            assert not system
        assert run.info.status == "FINISHED"
