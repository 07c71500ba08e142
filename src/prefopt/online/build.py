"""What `prefopt.train` calls for `loop=online`: the checks, the data module, the trainer's
settings. Each takes only the sections it needs."""

from __future__ import annotations

import functools

from omegaconf import DictConfig, OmegaConf

from prefopt.data import PreferenceDataModule
from prefopt.errors import PrefoptError
from prefopt.evaluation.generation import stop_token_ids
from prefopt.online.datamodule import OnlineDataModule
from prefopt.online.reference import RoundReference, batch_logps_with
from prefopt.online.rounds import RoundMaker
from prefopt.online.samples import collate_samples, old_logps_with
from prefopt.reference import SamplingModel
from prefopt.reference.cached import CachedReference


def is_online(loop_cfg) -> bool:
    return loop_cfg is not None and str(loop_cfg.kind) == "online"


def check_loop_config(loop_cfg, trainer_cfg) -> None:
    """Fail at start on a `loop` section (with the `trainer` it needs) that cannot work."""
    if not is_online(loop_cfg):
        return
    for key, low in (
        ("prompts_per_round", 1),
        ("samples_per_prompt", 2),
        ("max_new_tokens", 1),
        ("steps_per_round", 1),
        ("generation_batch_size", 1),
    ):
        if loop_cfg[key] < low:
            raise PrefoptError(f"loop.{key}={loop_cfg[key]}: it must be >= {low}")
    if not loop_cfg.temperature > 0:
        raise PrefoptError(f"loop.temperature={loop_cfg.temperature}: sampling needs it > 0")
    if trainer_cfg.max_steps is None or trainer_cfg.max_steps <= 0:
        raise PrefoptError(
            "loop=online: rounds go on until trainer.max_steps, which is unset; "
            "give it, e.g. trainer.max_steps=80"
        )
    interval = trainer_cfg.val_check_interval
    if interval is not None and not isinstance(interval, int):
        raise PrefoptError(
            f"loop=online: trainer.val_check_interval={interval} is a share of an epoch, and "
            "an epoch here is one round; give a number of steps, e.g. trainer.val_check_interval=20"
        )


def online_trainer_config(trainer_cfg) -> DictConfig:
    """`trainer` with what rounds need: one epoch per round, a new loader each epoch, as many
    epochs as `max_steps` takes, validation every `val_check_interval` batches across rounds."""
    args = OmegaConf.to_container(trainer_cfg, resolve=True)
    args.update(max_epochs=-1, reload_dataloaders_every_n_epochs=1, check_val_every_n_epoch=None)
    return OmegaConf.create(args)


def build_online_data(
    loop_cfg,
    datamodule: PreferenceDataModule,
    module,
    tokenizer,
    judge,
    reference_model: SamplingModel,
    true_reward=None,
    progress: bool = True,
) -> OnlineDataModule:
    """The online data module over the set-up offline one, and `module`'s reference wrapped so
    that the round's batches read their own reference log-probs (`RoundReference`).

    `judge`: `score(prompts, completions, device)`; `reference_model`: π_ref as a model (for
    the rounds' KL and, with a cached reference, their reference log-probs); `true_reward`:
    the world's ground-truth reward of a completion text, where it has one."""
    if judge is None:
        raise PrefoptError(
            "loop=online needs a judge to rank samples; judge=none (or the toy judge on data "
            "other than the toy world's): choose one, e.g. judge=reward_model judge.path=DIR"
        )
    precompute, collate, on_policy = None, datamodule.collate_fn(), None
    if module.loss.on_policy:
        # RLOO: every sample is a row with its advantage; π_ref is only in the rewards (KL).
        on_policy = module.loss
        pad = datamodule.pad_token_id
        collate = functools.partial(collate_samples, pad_token_id=pad)
    elif module.reference is not None:
        if isinstance(module.reference, CachedReference):
            # The offline cache covers the offline data only: a round's pairs get theirs now.
            precompute = batch_logps_with(module.packing, module.chunk_size)
        module.reference = RoundReference(module.reference)
    maker = RoundMaker(
        cfg=loop_cfg,
        judge=judge,
        reference_model=reference_model,
        tokenizer=tokenizer,
        stop_ids=stop_token_ids(tokenizer, module.policy),
        paired=datamodule.paired,
        batch_size=datamodule.cfg.batch_size,
        collate=collate,
        reference_batch_logps=precompute,
        chunk_size=module.chunk_size,
        true_reward=true_reward,
        on_policy_loss=on_policy,
        policy_batch_logps=old_logps_with(module.chunk_size) if on_policy else None,
        progress=progress,
    )
    return OnlineDataModule(datamodule, maker, loop_cfg)
