"""What a trained reward model is worth, logged when training ends (`RewardReport`).

On any data: its calibration on the validation pairs — the predicted probability that a pair's
chosen is preferred, σ(r_c − r_r), binned, against how often it was (each pair counted in both
orders, so a bin holds predictions p of "first ≻ second" and the frequency that held) — as the
figure `reward_calibration.png` and the metric `val/calibration_error` (the bins' expected
calibration error).

On the toy world, whose reward is known, also its agreement with the TRUE reward on the held-out
test pairs (`test/true_agreement`: the share of pairs it orders as the true reward does), beside
its agreement with the noisy training labels (`train/label_agreement`) and with the true reward
on the training pairs (`train/true_agreement`), and how often the labels themselves agree with
the true reward (`train/labels_true_agreement`, about 0.82 on the default world: a model that
reproduced the labels exactly would score that). The calibration figure then also has the test
pairs' true Bradley–Terry probability σ((r*_c − r*_r)/τ) against the predicted one (each pair
in both orders).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from torch import Tensor

from prefopt.data.collate import collate_pairs
from prefopt.data.layouts import Pair
from prefopt.data.tokenize import PairTokenizer
from prefopt.tracking.rounds import log_figure

log = logging.getLogger("prefopt.reward")

CALIBRATION_FILE = "reward_calibration.png"


@dataclass
class Calibration:
    predicted: list[float]
    """Each non-empty bin's mean predicted probability."""
    observed: list[float]
    """Each non-empty bin's observed frequency (or mean true probability)."""
    counts: list[int]
    error: float
    """Expected calibration error: Σ_bins (count / total)·|predicted − observed|."""


def calibration(predicted: Tensor, observed: Tensor, bins: int) -> Calibration:
    """`predicted` probabilities against `observed` outcomes (0/1, or true probabilities), in
    `bins` equal-width bins of [0, 1]."""
    which = (predicted * bins).long().clamp(0, bins - 1)
    rows = [
        (predicted[which == b].mean().item(), observed[which == b].mean().item(), n)
        for b in range(bins)
        if (n := int((which == b).sum())) > 0
    ]
    total = max(1, len(predicted))
    error = sum(n / total * abs(p - o) for p, o, n in rows)
    predicted_means, observed_means, counts = (
        (list(column) for column in zip(*rows)) if rows else ([], [], [])
    )
    return Calibration(predicted_means, observed_means, counts, error)


def both_orders(margins: Tensor) -> tuple[Tensor, Tensor]:
    """(predicted, outcome) for every pair in both orders: (σ(m), 1) and (σ(−m), 0)."""
    p = torch.sigmoid(margins.float())
    return torch.cat([p, 1 - p]), torch.cat([torch.ones_like(p), torch.zeros_like(p)])


def calibration_figure(curves: dict[str, Calibration]) -> Figure:
    fig = Figure(figsize=(5, 4.2), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1, label="calibrated")
    for i, (label, curve) in enumerate(curves.items()):
        ax.plot(curve.predicted, curve.observed, marker="o", color=f"C{i}",
                label=f"{label} (ECE {curve.error:.3f})")  # fmt: skip
    ax.set_xlabel("predicted P(chosen ≻ rejected) = σ(r_c − r_r)")
    ax.set_ylabel("observed")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_title("reward model calibration", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")
    return fig


@dataclass
class ToyPairs:
    """The toy world's pairs of one split, tokenized as training tokenizes them, with their
    true rewards (pairs the tokenizer drops are left out)."""

    batches: list[dict[str, Tensor]]
    chosen_reward: Tensor
    rejected_reward: Tensor

    @classmethod
    def read(cls, path: Path, tokenizer, data_cfg) -> ToyPairs:
        rows = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
        pair_tokenizer = PairTokenizer(
            tokenizer, data_cfg.max_length, data_cfg.max_prompt_length, with_prompt_ids=False,
            text_as_chat=bool(data_cfg.apply_chat_template),
        )  # fmt: skip
        pairs = [
            Pair(row["prompt"], row["chosen"], row["rejected"], f"{path}:{i + 1}")
            for i, row in enumerate(rows)
        ]
        texts = [pair_tokenizer.texts(pair) for pair in pairs]
        add_eos = [not pair_tokenizer.templated(pair) for pair in pairs]
        kept = [
            (tokenized, row)
            for (tokenized, _), row in zip(pair_tokenizer.tokenize_texts(texts, add_eos), rows)
            if tokenized is not None
        ]
        size = data_cfg.eval_batch_size
        pad = tokenizer.pad_token_id
        batches = [
            collate_pairs([t for t, _ in kept[i : i + size]], pad)
            for i in range(0, len(kept), size)
        ]
        rewards = torch.tensor([[r["chosen_reward"], r["rejected_reward"]] for _, r in kept])
        return cls(batches, rewards[:, 0].float(), rewards[:, 1].float())


class RewardReport(L.Callback):
    """At the end of training: calibration on the validation pairs, and on the toy world the
    agreement with the true reward (see the module's docstring). Its numbers also go into
    `trainer.callback_metrics`, so the run's summary and `TrainResult.metrics` carry them."""

    def __init__(self, bins: int, toy_splits: dict[str, ToyPairs] | None = None, tau=1.0):
        self.bins = bins
        self.toy_splits = toy_splits or {}
        self.tau = tau

    def on_train_end(self, trainer: L.Trainer, pl_module) -> None:
        curves: dict[str, Calibration] = {}
        metrics: dict[str, float] = {}
        val = trainer.datamodule.val_dataloader() if trainer.datamodule else []
        if val:
            chosen, rejected = pl_module.score_batches(val)
            curves["validation pairs vs labels"] = calibration(
                *both_orders(chosen - rejected), self.bins
            )
            metrics["val/calibration_error"] = curves["validation pairs vs labels"].error
        for split, pairs in self.toy_splits.items():
            chosen, rejected = pl_module.score_batches(pairs.batches)
            metrics.update(self._agreement(split, chosen - rejected, pairs))
            if split == "test":
                # Both orders, as for the labels: P(a ≻ b) predicted against the true one.
                predicted = torch.sigmoid(chosen - rejected)
                true = self._true_probability(pairs)
                curves["test pairs vs true P"] = calibration(
                    torch.cat([predicted, 1 - predicted]), torch.cat([true, 1 - true]), self.bins
                )
        if not metrics:
            return
        for name, value in metrics.items():
            trainer.callback_metrics[name] = torch.tensor(value)
        if trainer.is_global_zero:
            if trainer.logger is not None:
                trainer.logger.log_metrics(metrics, step=trainer.global_step)
            log.info("reward model: %s", ", ".join(f"{k}={v:.3f}" for k, v in metrics.items()))
            if curves:
                log_figure(trainer.logger, calibration_figure(curves), CALIBRATION_FILE)

    @staticmethod
    def _agreement(split: str, margins: Tensor, pairs: ToyPairs) -> dict[str, float]:
        """Shares of pairs ordered alike: the model vs the labels (the data's chosen first), the
        model vs the true reward, and the labels vs the true reward (true ties left out)."""
        true_gap = pairs.chosen_reward - pairs.rejected_reward
        decided = true_gap != 0
        model_vs_true = ((margins > 0) == (true_gap > 0))[decided].float().mean().item()
        metrics = {f"{split}/true_agreement": model_vs_true}
        if split == "train":
            metrics["train/label_agreement"] = (margins > 0).float().mean().item()
            metrics["train/labels_true_agreement"] = (true_gap[decided] > 0).float().mean().item()
        return metrics

    def _true_probability(self, pairs: ToyPairs) -> Tensor:
        gap = pairs.chosen_reward - pairs.rejected_reward
        if self.tau <= 0:
            return (gap > 0).float()
        return torch.sigmoid(gap / self.tau)
