"""A resumed run whose config differs from its checkpoint's: the changed values are the ones
trained with (the learning rate read from the optimizer at the steps after the resume), and
are logged; a change the checkpoint cannot honour is refused in one line. And time-based
checkpoints: a run killed before its first step-based checkpoint still has one to resume."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from prefopt.train import train
from prefopt.training.checkpoint import CHECKPOINT_DIR, LAST, safe_load
from prefopt.training.module import PreferenceModule

from ..conftest import user_error
from ..test_reliability import runs_in

CHANGED_TAG = "prefopt.resume.changed"
QUICK = [
    "trainer.limit_val_batches=0",
    "eval.num_prompts=0",
    "export=false",
    "trainer.log_every_n_steps=1",
]


@pytest.fixture
def steps_seen(monkeypatch) -> list[tuple[int, float, list[float]]]:
    """(global step, lr the step trains with, the schedule's base lrs) of every training step."""
    seen: list[tuple[int, float, list[float]]] = []
    original = PreferenceModule.training_step

    def recording(self, batch, batch_idx):
        scheduler = self.lr_schedulers()
        lr = self.trainer.optimizers[0].param_groups[0]["lr"]
        seen.append((self.trainer.global_step, lr, list(scheduler.base_lrs)))
        return original(self, batch, batch_idx)

    monkeypatch.setattr(PreferenceModule, "training_step", recording)
    return seen


def test_a_resume_with_a_lower_lr_trains_with_it_and_says_so(compose_config, steps_seen, caplog):
    """8 steps at the toy model's lr 5e-4, then `ckpt_path=<last.ckpt> optim.lr=1e-5
    loss.beta=0.2 trainer.max_steps=12`. The default schedule (linear decay after 10% warm-up) over 12
    steps: warm-up int(0.1 * 12) = 1 step, so at step 8 the multiplier is
    1 - (8 - 1) / (12 - 1) = 4/11, and the lr of step 8 is 1e-5 * 4/11 = 3.6364e-6.
    Before: Lightning restored the old optimizer and schedule, base lr 5e-4, and step 8
    trained at 5e-4 * 4/11 = 1.818e-4."""
    first = compose_config(*QUICK, "trainer.max_steps=8", "checkpoint.every_n_steps=4")
    train(first)
    checkpoint = Path(first.output_dir) / CHECKPOINT_DIR / LAST
    assert safe_load(checkpoint)["global_step"] == 8
    steps_seen.clear()
    resumed = compose_config(
        *QUICK,
        "trainer.max_steps=12",
        f"ckpt_path={checkpoint}",
        "optim.lr=1e-5",
        "loss.beta=0.2",
    )
    with caplog.at_level(logging.WARNING, logger="prefopt.resume"):
        result = train(resumed)
    step, lr, base_lrs = steps_seen[0]
    assert step == 8
    assert base_lrs == [1e-5]
    assert lr == pytest.approx(1e-5 * 4 / 11, rel=1e-6)
    assert [s for s, _, _ in steps_seen] == [8, 9, 10, 11]
    assert steps_seen[-1][1] == pytest.approx(1e-5 * (1 - 10 / 11), rel=1e-6)
    # said on the console, as a tag, and as params beside the first ones
    assert (
        "resumed at step 8 with changed settings, applied: loss.beta 0.1 -> 0.2, optim.lr 0.0005 -> 1e-05"
        in (caplog.text)
    )
    run = MlflowClient(resumed.logger.tracking_uri).get_run(result.run_id)
    assert "optim.lr 0.0005 -> 1e-05" in run.data.tags[CHANGED_TAG]
    assert "trainer.max_steps 8 -> 12" in run.data.tags[CHANGED_TAG]
    assert "loss.beta 0.1 -> 0.2" in run.data.tags[CHANGED_TAG]
    assert result.module.loss.beta == 0.2  # the loss is built from the new config
    assert run.data.params["resumed_at_step_8/optim.lr"] == "1e-05"


REFUSED = [
    (["loss=ipo"], "loss._target_ (prefopt.losses.dpo.DPOLoss -> prefopt.losses.ipo.IPOLoss)"),
    (["data.batch_size=4"], "data.batch_size (16 -> 4)"),
    (["optim=sgd"], "optim.optimizer._target_ (torch.optim.AdamW -> torch.optim.SGD)"),
]


def test_a_change_the_checkpoint_cannot_honour_is_refused_in_one_line(compose_config, capsys):
    first = compose_config(*QUICK, "trainer.max_steps=2")
    train(first)
    checkpoint = Path(first.output_dir) / CHECKPOINT_DIR / LAST
    for change, refused in REFUSED:
        resumed = compose_config(*QUICK, "trainer.max_steps=4", f"ckpt_path={checkpoint}", *change)
        line = user_error(capsys, train, resumed)
        assert line.startswith(
            "prefopt: error: resume: the config changes what the checkpoint cannot continue: "
        ), line
        assert refused in line and "start a new run" in line, line
    assert safe_load(checkpoint)["global_step"] == 2  # untouched
    _, runs = runs_in(first)  # refused before the MLflow run reopened: nothing recorded
    assert [run.info.status for run in runs] == ["FINISHED"]


def test_a_run_killed_before_its_first_step_checkpoint_resumes_from_a_timed_one(
    compose_config, steps_seen, monkeypatch
):
    """Steps every 100, minutes every 0.0001 (6 ms: after every step here); the run dies in
    its 4th step. Without the time-based checkpoint nothing would be left to resume."""
    original = PreferenceModule.training_step

    def dies_at_step_3(self, batch, batch_idx):
        if self.trainer.global_step == 3:
            raise RuntimeError("killed")
        return original(self, batch, batch_idx)

    args = [*QUICK, "trainer.max_steps=6", "checkpoint.every_n_steps=100"]
    with monkeypatch.context() as patch:
        patch.setattr(PreferenceModule, "training_step", dies_at_step_3)
        with pytest.raises(RuntimeError, match="killed"):
            train(compose_config(*args, "checkpoint.every_n_minutes=0.0001"))
    cfg = compose_config(*args, "checkpoint.every_n_minutes=0.0001", "resume=true")
    assert safe_load(Path(cfg.output_dir) / CHECKPOINT_DIR / LAST)["global_step"] == 3
    steps_seen.clear()
    train(cfg)
    assert [s for s, _, _ in steps_seen] == [3, 4, 5]


@pytest.mark.slow  # the control of the test above
def test_only_step_checkpoints_leave_nothing_before_the_first_one(compose_config, monkeypatch):
    """The control of the test above: `checkpoint.every_n_minutes=0` is by steps only."""
    original = PreferenceModule.training_step

    def dies_at_step_3(self, batch, batch_idx):
        if self.trainer.global_step == 3:
            raise RuntimeError("killed")
        return original(self, batch, batch_idx)

    monkeypatch.setattr(PreferenceModule, "training_step", dies_at_step_3)
    cfg = compose_config(
        *QUICK,
        "trainer.max_steps=6",
        "checkpoint.every_n_steps=100",
        "checkpoint.every_n_minutes=0",
    )
    with pytest.raises(RuntimeError, match="killed"):
        train(cfg)
    assert not (Path(cfg.output_dir) / CHECKPOINT_DIR / LAST).exists()
