"""The private Lightning names prefopt relies on, each behind one function: these tests fail
loudly when a Lightning release renames them or changes what they take."""

import inspect

import lightning as L
import pytest
import torch
from lightning.pytorch.loops.training_epoch_loop import _TrainingEpochLoop
from lightning.pytorch.strategies.launchers import subprocess_script
from torch.utils.data import DataLoader

from prefopt.training.checkpoint import validation_follows
from prefopt.training.strategies import HydraJobLauncher, child_ranks_started_by

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


def test_lightning_still_has_the_validation_check_prefopt_asks():
    parameters = list(inspect.signature(_TrainingEpochLoop._should_check_val_fx).parameters)
    assert parameters == ["self", "data_fetcher"]


def test_validation_follows_is_true_exactly_before_each_validation(tmp_path):
    events = []

    class Record(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            events.append(("follows", batch_idx, validation_follows(trainer)))

        def on_validation_start(self, trainer, pl_module):
            if not trainer.sanity_checking:
                events.append(("validated", trainer.fit_loop.epoch_loop.batch_idx))

    data = DataLoader(torch.randn(16, 2), batch_size=2)  # 8 batches
    trainer = quiet_trainer(
        tmp_path,
        val_check_interval=3,
        limit_val_batches=1,
        num_sanity_val_steps=0,
        callbacks=[Record()],
    )
    trainer.fit(_Tiny(), train_dataloaders=data, val_dataloaders=data)

    follows = [batch for kind, batch, *rest in events if kind == "follows" and rest[0]]
    validated = [batch for kind, batch in (e[:2] for e in events) if kind == "validated"]
    assert follows == [2, 5]
    assert validated == follows
    # each validation comes right after the batch that announced it
    for batch in follows:
        announced = events.index(("follows", batch, True))
        assert events[announced + 1] == ("validated", batch)


def test_lightning_still_starts_hydra_child_ranks_through_the_swapped_function():
    assert callable(subprocess_script._hydra_subprocess_cmd)
    assert list(inspect.signature(subprocess_script._hydra_subprocess_cmd).parameters) == [
        "local_rank"
    ]
    launch = inspect.getsource(subprocess_script._SubprocessScriptLauncher._call_children_scripts)
    assert "_hydra_subprocess_cmd(" in launch
    assert issubclass(HydraJobLauncher, subprocess_script._SubprocessScriptLauncher)


def test_the_child_rank_command_is_swapped_for_the_launch_only_even_on_error():
    original = subprocess_script._hydra_subprocess_cmd

    def command(local_rank):
        return ["true"], "."

    with child_ranks_started_by(command):
        assert subprocess_script._hydra_subprocess_cmd is command
    assert subprocess_script._hydra_subprocess_cmd is original
    with pytest.raises(RuntimeError, match="launch failed"):
        with child_ranks_started_by(command):
            raise RuntimeError("launch failed")
    assert subprocess_script._hydra_subprocess_cmd is original
