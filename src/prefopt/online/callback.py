"""`OnlineSummary`: at the end of an online run, its rounds in MLflow as a figure and a table.

- `online/reward_vs_kl.png`: each round's mean reward against its KL to the reference;
- `online/last_round_pairs.json`: the last round's pairs (or KTO's labelled samples, or an
  on-policy loss's samples with their advantages) as text, with their judge scores.

The per-round metrics are logged by the data module as each round is made.
"""

from __future__ import annotations

import lightning as L

from prefopt.tracking import log_table
from prefopt.tracking.rounds import REWARD_VS_KL_FILE, log_figure, reward_vs_kl_figure

PAIRS_FILE = "online/last_round_pairs.json"


class OnlineSummary(L.Callback):
    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        datamodule = trainer.datamodule
        if not trainer.is_global_zero or getattr(datamodule, "round", None) is None:
            return
        figure = reward_vs_kl_figure(datamodule.history)
        if figure is not None:
            log_figure(trainer.logger, figure, REWARD_VS_KL_FILE)
        log_table(trainer.logger, datamodule.round.table(datamodule.paired), PAIRS_FILE)
