"""`task=reward` end to end on the (small) toy world: a run trains a reward model, logs what it
is worth, exports it for `judge=reward_model`, and resumes like any run."""

import math
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient

from prefopt.config.judges_schema import RewardModelJudgeConfig
from prefopt.judges import build_judge
from prefopt.judges.reward_model import RewardModelJudge
from prefopt.reward.scores import sequence_scores
from prefopt.train import train

REWARD_RUN = [
    "task=reward",
    "trainer.max_steps=6",
    "trainer.val_check_interval=6",
    "data.batch_size=8",
    "checkpoint.every_n_steps=3",
]


@pytest.fixture(scope="module")
def reward_run(tmp_path_factory, toy_cache, reference_cache):
    """One short reward run (module-scoped: trained once for the tests below)."""
    from hydra import compose, initialize_config_dir

    from prefopt.config.schema import register_configs

    from ..conftest import CONF_DIR, SMALL_TOY

    tmp = tmp_path_factory.mktemp("reward_run")
    register_configs()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("config", overrides=[
            *SMALL_TOY, f"toy.cache_dir={toy_cache}", f"output_dir={tmp / 'out'}",
            f"logger.tracking_uri=sqlite:///{tmp / 'mlflow.db'}", "trainer.enable_progress_bar=false",
            *REWARD_RUN,
        ])  # fmt: skip
    return cfg, train(cfg)


def test_a_reward_run_logs_its_metrics_and_its_calibration(reward_run, tmp_path):
    cfg, result = reward_run
    client = MlflowClient(cfg.logger.tracking_uri)
    run = client.get_run(result.run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "reward model lr=0.001"
    metrics = run.data.metrics
    for key in ("train/loss", "train/accuracy", "train/margin", "val/loss", "val/accuracy",
                "val/margin", "val/calibration_error", "test/true_agreement",
                "train/label_agreement", "train/true_agreement", "train/labels_true_agreement"):  # fmt: skip
        assert key in metrics and math.isfinite(metrics[key]), key
    # The toy world's noisy labels agree with its true reward on most, not all, pairs.
    assert 0.6 < metrics["train/labels_true_agreement"] < 1
    artifacts = [a.path for a in client.list_artifacts(result.run_id)]
    assert "reward_calibration.png" in artifacts
    assert run.data.tags["prefopt.export_dir"] == str(Path(result.export_dir).resolve())


@torch.no_grad()
def test_the_export_loads_as_the_reward_model_judge_and_ranks_as_its_scores_say(reward_run):
    cfg, result = reward_run
    judge = build_judge(RewardModelJudgeConfig(path=str(result.export_dir), batch_size=3), True)
    assert isinstance(judge, RewardModelJudge)
    assert judge.model.config.pad_token_id == judge.tokenizer.pad_token_id
    prompt = "review of the new red phone :"
    completions = [" the price is great and i loved the sound .", " the price is awful .",
                   " i noticed the size .", " it is bad but the design is superb ."]  # fmt: skip
    scores = judge.score([prompt] * 4, completions)
    # The trained module scores the same ids (BOS, text, EOS) alike, one at a time.
    module = result.module.eval()
    for completion, score in zip(completions, scores):
        ids = torch.tensor([judge.encode(prompt + completion)])
        want = sequence_scores(module.policy, ids, torch.ones_like(ids)).item()
        assert score == pytest.approx(want, rel=1e-4, abs=1e-5)
    # Ranked by the judge as by its scores: the judge's pairwise verdicts follow them.
    order = sorted(range(4), key=lambda i: -scores[i])
    ranked = judge.score([prompt] * 4, [completions[i] for i in order])
    assert ranked == sorted(ranked, reverse=True)


class StopAtStep:
    """Ctrl-C at the start of a training step (the step ends, is saved, and the run stops)."""

    def __init__(self, step: int):
        self.step = step

    def on_train_batch_start(self, trainer, *args):
        if trainer.global_step == self.step:
            raise KeyboardInterrupt


@pytest.mark.slow  # two more reward runs (~20 s on 2 busy cores)
def test_a_stopped_reward_run_resumes_and_ends_as_if_never_stopped(
    reward_run, tmp_path, monkeypatch
):
    import lightning as L

    import prefopt.training.tasks as tasks

    cfg, uninterrupted = reward_run
    build = tasks.build_reward_model

    class Stop(StopAtStep, L.Callback):
        pass

    def with_stop(*args):
        module, datamodule, callbacks, tokenizer = build(*args)
        return module, datamodule, [*callbacks, Stop(4)], tokenizer

    stopped = cfg.copy()
    stopped.output_dir = str(tmp_path / "outputs" / "2026-01-01" / "10-00-00")
    stopped.logger.tracking_uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    with monkeypatch.context() as patch:
        patch.setattr(tasks, "build_reward_model", with_stop)
        with pytest.raises(SystemExit):
            train(stopped)
    resumed_cfg = stopped.copy()
    resumed_cfg.resume = True
    resumed = train(resumed_cfg)
    run = MlflowClient(resumed_cfg.logger.tracking_uri).get_run(resumed.run_id)
    assert run.info.status == "FINISHED"
    for key in ("val/loss", "val/accuracy", "test/true_agreement", "train/label_agreement"):
        assert math.isclose(resumed.metrics[key], uninterrupted.metrics[key], rel_tol=1e-4,
                            abs_tol=1e-5), key  # fmt: skip


@pytest.mark.slow  # a tiny toy world built, and two reward runs on it (~30 s)
def test_a_second_run_ends_as_the_first_though_the_toy_world_is_cached_now(tmp_path):
    """The first run builds its toy world (which reseeds torch's generator), the second finds
    it cached: the new score head is drawn from `seed` either way, so the two runs are one."""
    from hydra import compose, initialize_config_dir

    from prefopt.config.schema import register_configs

    from ..conftest import CONF_DIR

    tiny_world = ["toy.n_train_prompts=64", "toy.n_val_prompts=16", "toy.n_test_prompts=16",
                  "toy.sft_texts=200", "toy.sft_steps=20", f"toy.cache_dir={tmp_path / 'toy'}"]  # fmt: skip
    register_configs()
    results = []
    for name in ("first", "second"):
        with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
            cfg = compose("config", overrides=[
                *tiny_world, f"output_dir={tmp_path / name}", "trainer.enable_progress_bar=false",
                f"logger.tracking_uri=sqlite:///{tmp_path / 'mlflow.db'}", *REWARD_RUN,
            ])  # fmt: skip
        results.append(train(cfg).metrics)
    first, second = results
    for key, value in first.items():
        assert math.isclose(second[key], value, rel_tol=1e-5, abs_tol=1e-7), key
