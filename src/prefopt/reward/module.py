"""RewardModule: a one-output sequence classifier trained on preference pairs (Bradley–Terry).

A batch is the data module's paired batch (`data/collate.py`): rows 0..B-1 the chosen
sequences, B..2B-1 the rejected, right padded; one forward scores them all at their last real
token (`scores.py`). Metrics are means over every rank's pairs, as the policy's are
(`training/metrics.py`): `train/loss`, `train/accuracy` (r_c > r_r), `train/margin` (mean
r_c − r_r) and the mean rewards per step, the same under `val/` once per validation.

The classifier is the module's `policy` attribute: the trained network, under the name the
shared trainer, checkpoint and export code (`training/assemble.py`, `model/export.py`) read.
"""

from __future__ import annotations

import lightning as L
import torch
from torch import Tensor, nn

from prefopt.config.schema import OptimConfig
from prefopt.reward.loss import RewardLossOutput, bradley_terry_loss
from prefopt.reward.scores import sequence_scores
from prefopt.training.metrics import EpochMeans, StepMeans
from prefopt.training.optimizers import build_optimizer


class RewardModule(L.LightningModule):
    def __init__(
        self,
        classifier: nn.Module,
        optim: OptimConfig,
        margin: float = 0.0,
        center_rewards_coefficient: float = 0.0,
    ):
        """`margin`: every pair's margin m in −log σ(r_c − r_r − m) (`task.margin`)."""
        super().__init__()
        self.policy = classifier.train()
        self.optim = optim
        self.margin = margin
        self.center_rewards_coefficient = center_rewards_coefficient
        self.step_means = StepMeans()
        self.val_means = EpochMeans()

    def scores(self, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        """The chosen and rejected rows' rewards, [B] each."""
        rewards = sequence_scores(self.policy, batch["input_ids"], batch["attention_mask"])
        return rewards.chunk(2)

    def compute_loss(self, batch: dict[str, Tensor]) -> RewardLossOutput:
        chosen, rejected = self.scores(batch)
        return bradley_terry_loss(chosen, rejected, self.margin, self.center_rewards_coefficient)

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        out = self.compute_loss(batch)
        self.step_means.update({"loss": out.loss.detach(), **out.metrics}, pairs_in(batch))
        for name, (mean, pairs) in self.step_means.compute().items():
            self._log("train", name, mean, int(pairs), per_step=True)
        return out.loss

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        out = self.compute_loss(batch)
        self.val_means.update({"loss": out.loss.detach(), **out.metrics}, pairs_in(batch))

    def on_validation_epoch_start(self) -> None:
        self.val_means.reset()

    def on_validation_epoch_end(self) -> None:
        if not self.val_means.update_called:
            return
        for name, (mean, pairs) in self.val_means.compute().items():
            self._log("val", name, mean, int(pairs), per_step=False)

    def _log(self, stage: str, name: str, value: Tensor, pairs: int, per_step: bool) -> None:
        # Reduced across ranks already (StepMeans, EpochMeans): no sync_dist.
        self.log(
            f"{stage}/{name}",
            value,
            batch_size=pairs,
            on_step=per_step,
            on_epoch=not per_step,
            prog_bar=name in ("loss", "accuracy"),
        )

    @torch.no_grad()
    def score_batches(self, loader) -> tuple[Tensor, Tensor]:
        """Every pair's (chosen, rejected) rewards over `loader`'s paired batches, in its order
        (float32 on the CPU; the model in eval mode meanwhile)."""
        was_training = self.policy.training
        self.policy.eval()
        chosen, rejected = [], []
        try:
            for batch in loader:
                batch = {k: v.to(self.device) for k, v in batch.items()}
                c, r = self.scores(batch)
                chosen.append(c.cpu())
                rejected.append(r.cpu())
        finally:
            self.policy.train(was_training)
        if not chosen:
            return torch.zeros(0), torch.zeros(0)
        return torch.cat(chosen), torch.cat(rejected)

    def configure_optimizers(self):
        params = [p for p in self.policy.parameters() if p.requires_grad]
        total = max(1, int(self.trainer.estimated_stepping_batches))
        optimizer, scheduler = build_optimizer(self.optim, params, total)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step"},
        }


def pairs_in(batch: dict[str, Tensor]) -> int:
    return batch["input_ids"].shape[0] // 2
