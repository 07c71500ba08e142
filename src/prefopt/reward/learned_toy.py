"""`judge=learned_toy`: the toy world's LEARNED reward model as a judge.

The proxy that RLHF optimises, on a world whose true reward is known: a Bradley–Terry reward
model trained with the reward task's code (`RewardModule` on the `PreferenceDataModule` of the
toy world's noisy training pairs) under fixed settings (`SETTINGS`), then read as any reward
model (`RewardModelJudge`). It is trained on first use (about a minute on one CPU core)
and cached under the cache root, like the toy world's SFT model: in
`<cache root>/reward_models/<hash of the toy config and SETTINGS>`, built under a file lock in
a staging folder that is sealed and renamed into place (`prefopt.files.staged_folder`), so the
jobs of a sweep train it once and a killed build leaves nothing half-written.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import lightning as L
import torch
from omegaconf import DictConfig, OmegaConf

from prefopt.config.schema import DataConfig, ModelConfig, OptimConfig, ToyWorldConfig
from prefopt.data import PreferenceDataModule
from prefopt.files import cache_root, file_lock, seal_problem, set_aside, staged_folder
from prefopt.judges.reward_model import RewardModelJudge
from prefopt.model.loading import load_tokenizer
from prefopt.reward.build import load_classifier
from prefopt.reward.module import RewardModule
from prefopt.toy.world import build_toy_world, cache_key

log = logging.getLogger("prefopt.reward")

SETTINGS = {"lr": 1e-3, "epochs": 6, "batch_size": 16, "warmup_ratio": 0.1, "seed": 0, "version": 3}
"""The reward model's training settings: part of the cache key (bump `version` whenever the
reward task's training changes what it learns)."""


class LearnedToyJudge(RewardModelJudge):
    """The toy world's reward model, learned from its training pairs; see the module docstring."""

    name = "learned_toy"
    needs_toy_world = True
    """Steps aside on data other than the toy world's (`prefopt.judges.build_judge`)."""

    def __init__(self, toy: ToyWorldConfig | DictConfig | dict | None = None, batch_size: int = 64):
        toy_cfg = OmegaConf.merge(OmegaConf.structured(ToyWorldConfig), toy or {})
        super().__init__(str(learned_reward_model(toy_cfg)), batch_size=batch_size)


def learned_reward_model(toy_cfg) -> Path:
    """The folder of the toy world's learned reward model (trained now if not cached)."""
    key = hashlib.sha256(
        json.dumps({"world": cache_key(toy_cfg), **SETTINGS}, sort_keys=True).encode()
    ).hexdigest()[:16]
    folder = cache_root() / "reward_models" / key
    if folder.is_dir() and seal_problem(folder) is None:
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    with file_lock(folder.with_name(f"{key}.lock")):
        if folder.is_dir() and (problem := seal_problem(folder)) is not None:
            set_aside(folder, problem)
        if not folder.is_dir():
            log.info(
                "judge=learned_toy: training the toy world's reward model (cached in %s)", folder
            )
            with staged_folder(folder, hint="set $PREFOPT_CACHE to a larger disk") as staging:
                train_toy_reward_model(toy_cfg, staging)
    return folder


def train_toy_reward_model(toy_cfg, out: Path) -> dict[str, float]:
    """Train the reward model on the toy world's training pairs with `SETTINGS` and save it
    (classifier and tokenizer) in `out`; returns the last validation metrics."""
    world = build_toy_world(toy_cfg, progress=False)
    model_cfg = OmegaConf.structured(ModelConfig(path=str(world.model_dir)))
    data_cfg = OmegaConf.structured(DataConfig(
        format="explicit", max_length=64, max_prompt_length=32, cache=False,
        batch_size=SETTINGS["batch_size"], seed=SETTINGS["seed"],
    ))  # fmt: skip
    optim_cfg = OmegaConf.structured(OptimConfig(lr=SETTINGS["lr"]))
    optim_cfg = OmegaConf.merge(optim_cfg, {"warmup_ratio": SETTINGS["warmup_ratio"]})
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a model this small: a second thread only spins (see toy/world.py)
    try:
        with torch.random.fork_rng():
            L.seed_everything(SETTINGS["seed"], verbose=False)
            tokenizer = load_tokenizer(str(world.model_dir), model_cfg)
            datamodule = PreferenceDataModule(data_cfg, tokenizer, toy_world=world)
            classifier = load_classifier(
                str(world.model_dir), model_cfg, tokenizer.pad_token_id, SETTINGS["seed"]
            )
            module = RewardModule(classifier, optim_cfg)
            trainer = L.Trainer(
                max_epochs=SETTINGS["epochs"], accelerator="cpu", logger=False,
                enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                gradient_clip_val=1.0, num_sanity_val_steps=0, check_val_every_n_epoch=SETTINGS["epochs"],
            )  # fmt: skip
            trainer.fit(module, datamodule=datamodule)
    finally:
        torch.set_num_threads(threads)
    module.policy.save_pretrained(out)
    tokenizer.save_pretrained(out)
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
    (out / "training.json").write_text(json.dumps({"settings": SETTINGS, "val": metrics}, indent=1))
    log.info("judge=learned_toy: reward model trained: %s", metrics)
    return metrics
