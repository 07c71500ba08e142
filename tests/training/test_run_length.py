"""A run validates after its last step (once), and its progress bar counts what it counts:
rounds online ("Round 4/16", not Lightning's "Epoch 3/-2" for `max_epochs=-1`)."""

from __future__ import annotations

import inspect
from types import SimpleNamespace

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import RichProgressBar
from torch.utils.data import DataLoader

from prefopt.online.datamodule import OnlineDataModule
from prefopt.train import train

from ..conftest import quiet_trainer


class _Tiny(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Linear(2, 1)

    def training_step(self, batch, batch_idx):
        return self.layer(batch).sum()

    def validation_step(self, batch, batch_idx):
        pass

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def validated_steps(tmp_path, *callbacks, **trainer_args) -> list[int]:
    steps = []

    class Record(L.Callback):
        def on_validation_start(self, trainer, pl_module):
            if not trainer.sanity_checking:
                steps.append(trainer.global_step)

    data = DataLoader(torch.randn(16, 2), batch_size=2)  # 8 batches an epoch
    trainer = quiet_trainer(
        tmp_path,
        limit_val_batches=1,
        num_sanity_val_steps=0,
        callbacks=[*callbacks, Record()],
        **trainer_args,
    )
    trainer.fit(_Tiny(), train_dataloaders=data, val_dataloaders=data)
    return steps


@pytest.mark.parametrize(
    "trainer_args, without, with_it",
    [
        (dict(max_steps=5, val_check_interval=3), [3], [3, 5]),
        (dict(max_steps=2, val_check_interval=3), [], [2]),
        (dict(max_steps=6, val_check_interval=3), [3, 6], [3, 6]),  # validated once at the end
        (dict(max_epochs=1, val_check_interval=3), [3, 6], [3, 6, 8]),  # 8 batches, no max_steps
        (dict(max_epochs=1, val_check_interval=1.0), [8], [8]),
        (  # epochs without end (online rounds): training goes on to max_steps
            dict(max_epochs=-1, max_steps=12, val_check_interval=5, check_val_every_n_epoch=None),
            [5, 10],
            [5, 10, 12],
        ),
        (
            dict(max_epochs=2, val_check_interval=3, check_val_every_n_epoch=None),
            [3, 6, 9, 12, 15],
            [3, 6, 9, 12, 15, 16],
        ),
    ],
)
def test_the_last_step_is_validated_once(tmp_path, trainer_args, without, with_it):
    from prefopt.training.run_length import ValidateAtTheEnd

    assert validated_steps(tmp_path, **trainer_args) == without  # Lightning alone
    assert validated_steps(tmp_path, ValidateAtTheEnd(), **trainer_args) == with_it


def test_a_run_shorter_than_its_validation_interval_ends_with_validation_metrics(
    compose_config,
):
    """3 steps, validation every quarter of the epoch (~19 steps): Lightning never validates,
    and the run ended with "final validation metrics: (none)"."""
    cfg = compose_config(
        "trainer.max_steps=3", "trainer.limit_val_batches=2", "eval.num_prompts=0", "export=false"
    )
    metrics = train(cfg).metrics
    assert {"val/loss", "val/rewards/accuracies"} <= set(metrics), sorted(metrics)


def fake_trainer(max_epochs, max_steps=64, batches=4, accumulate=1, rounds=False):
    datamodule = SimpleNamespace(epoch_name="Round") if rounds else object()
    return SimpleNamespace(
        max_epochs=max_epochs,
        max_steps=max_steps,
        num_training_batches=batches,
        accumulate_grad_batches=accumulate,
        datamodule=datamodule,
    )


@pytest.mark.parametrize(
    "trainer, epoch, text",
    [
        (fake_trainer(-1, rounds=True), 3, "Round 4/16"),  # 64 steps of 4 per round
        (fake_trainer(-1, max_steps=10, batches=8, accumulate=2, rounds=True), 0, "Round 1/3"),
        (fake_trainer(-1), 3, "Epoch 3/15"),
        (fake_trainer(2, max_steps=-1), 0, "Epoch 0/1"),  # as Lightning writes it
        (fake_trainer(-1, max_steps=-1), 5, "Epoch 5"),
    ],
)
def test_the_progress_bar_counts_rounds_and_epochs(trainer, epoch, text):
    from prefopt.training.run_length import epoch_description

    assert epoch_description(trainer, epoch).strip() == text
    assert epoch_description(trainer, epoch, "Validation").startswith(text)


def test_online_epochs_are_rounds():
    assert OnlineDataModule.epoch_name == "Round"


def test_lightning_still_asks_the_rich_bar_for_its_description():
    """`RunProgressBar` overrides Lightning's private `_get_train_description`."""
    assert list(inspect.signature(RichProgressBar._get_train_description).parameters) == [
        "self",
        "current_epoch",
    ]
    source = inspect.getsource(RichProgressBar)
    assert source.count("self._get_train_description(") >= 2  # the bar's start and each epoch
    # what it writes for an online run (max_epochs=-1), which RunProgressBar replaces
    bar = SimpleNamespace(trainer=fake_trainer(-1, rounds=True), validation_description="")
    assert RichProgressBar._get_train_description(bar, 3) == "Epoch 3/-2"
