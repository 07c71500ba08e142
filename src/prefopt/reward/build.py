"""`task=reward`: the reward model, its data and its report, from the config sections.

The data is the run's `data` section read by the same `PreferenceDataModule` the losses train
on (its tokenized pairs, right padded); the model is `model.path`'s architecture (the toy
world's SFT model by default, or any local checkpoint) loaded as a sequence classifier with one
output (`AutoModelForSequenceClassification`, `num_labels=1`: its score head is new), with the
tokenizer's pad id written into its config, so that the export (`save_pretrained` of the
classifier and tokenizer) loads as it is in `judge=reward_model judge.path=<export>`.
"""

from __future__ import annotations

import contextlib
import logging
import math

import torch
from omegaconf import DictConfig
from transformers import AutoModelForSequenceClassification

from prefopt.config.schema import ModelConfig
from prefopt.data import PreferenceDataModule
from prefopt.errors import PrefoptError
from prefopt.model.loading import DTYPES, Checkpoints, _load_errors, disable_dropout
from prefopt.reward.module import RewardModule
from prefopt.reward.report import RewardReport, ToyPairs
from prefopt.tracking import log_datasets

log = logging.getLogger("prefopt.reward")


def check_reward_config(cfg: DictConfig) -> None:
    """Before anything loads: what a reward-model run cannot do."""
    task = cfg.task
    if str(cfg.loop.kind) != "offline":
        raise PrefoptError(
            f"task=reward with loop={cfg.loop.kind}: a reward model trains on the data's pairs; "
            "drop loop=online (or train the policy: task=align)"
        )
    if cfg.data.format == "unpaired":
        raise PrefoptError(
            "task=reward trains on pairs (prompt, chosen, rejected), but data.format=unpaired "
            "gives (prompt, completion, label) rows; use paired data"
        )
    if cfg.model.lora.enabled:
        raise PrefoptError(
            "task=reward trains the whole classifier; model.lora.enabled=true is not supported "
            "here, drop it"
        )
    if not math.isfinite(task.margin):
        raise PrefoptError(f"task.margin={task.margin}: it must be a finite number")
    if not task.center_rewards_coefficient >= 0:
        raise PrefoptError(
            f"task.center_rewards_coefficient={task.center_rewards_coefficient}: it must be >= 0"
        )
    if task.calibration_bins < 1:
        raise PrefoptError(f"task.calibration_bins={task.calibration_bins}: it must be >= 1")


def load_classifier(
    path: str, model_cfg: ModelConfig, pad_token_id: int, seed: int = 0
) -> torch.nn.Module:
    """`path` as a one-output sequence classifier (a causal LM checkpoint gets a new score
    head, drawn from `seed`), dropout off with `model.disable_dropout`, the pad id in its
    config."""
    # Seeded here: the global generator's state depends on what ran before (a toy world built
    # now reseeds it, a cached one does not), and a run must not depend on the cache.
    with _load_errors(path, "model"), torch.random.fork_rng(), seeded(seed):
        model = AutoModelForSequenceClassification.from_pretrained(
            path,
            num_labels=1,
            dtype=DTYPES[model_cfg.dtype],
            trust_remote_code=model_cfg.trust_remote_code,
        )
    if model_cfg.disable_dropout:
        disable_dropout(model)
    # Saved with the export: a judge loading it pads with the id training padded with.
    model.config.pad_token_id = pad_token_id
    return model


@contextlib.contextmanager
def seeded(seed: int):
    torch.manual_seed(seed)
    yield


def reward_datamodule(data_cfg, tokenizer, world, logger) -> PreferenceDataModule:
    """The paired data, set up and logged as the run's datasets (pairs that truncation left
    identical are dropped, counted as `truncated_identical` and reported by the data module)."""
    datamodule = PreferenceDataModule(data_cfg, tokenizer, toy_world=world, paired=True)
    datamodule.setup("fit")
    log_datasets(logger, datamodule.summaries())
    return datamodule


def build_reward_model(cfg: DictConfig, checkpoints: Checkpoints, world, logger):
    """(module, datamodule, callbacks, tokenizer) of a reward-model run."""
    tokenizer = checkpoints.load_tokenizer()
    datamodule = reward_datamodule(cfg.data, tokenizer, world, logger)
    classifier = load_classifier(
        checkpoints.policy_path, cfg.model, tokenizer.pad_token_id, cfg.seed
    )
    module = RewardModule(
        classifier, cfg.optim, cfg.task.margin, cfg.task.center_rewards_coefficient
    )
    toy_splits = None
    if world is not None and cfg.data.source == "toy":
        toy_splits = {
            split: ToyPairs.read(path, tokenizer, cfg.data)
            for split, path in (("train", world.train_path), ("test", world.test_path))
        }
    report = RewardReport(cfg.task.calibration_bins, toy_splits, tau=cfg.toy.label_temperature)
    return module, datamodule, [report], tokenizer
