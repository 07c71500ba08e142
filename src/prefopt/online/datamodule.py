"""`OnlineDataModule`: one Lightning epoch is one round of pairs sampled from the current policy.

The Lightning shape: the trainer runs with `max_epochs=-1` and
`reload_dataloaders_every_n_epochs=1` (`online.build.online_trainer_config`), bounded by
`max_steps`, so it asks for a new training loader at the start of every epoch. `train_dataloader` then makes
the next round (`rounds.RoundMaker`) from the policy as it is at that moment, reached through
`self.trainer.lightning_module`, and returns a loader over the round's
`steps_per_round × accumulate_grad_batches` batches, collated by the offline data module's
own collate function (the same batch format, packing included, so module and losses are
unchanged). Validation is the offline data module's: the same validation pairs as an offline
run, so `val/` metrics compare across loops; generation evaluation reads `val_examples` as
before.

Resume: `state_dict` holds the current round (its samples, pairs, batches and reference
log-probs), the batches the trainer finished in it, and the rounds' metrics so far; a resumed
run continues the same round where it stopped, without sampling again, and then goes on with
the next one.
"""

from __future__ import annotations

import logging
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from prefopt.data import PreferenceDataModule
from prefopt.data.original_prompts import originals_of
from prefopt.errors import PrefoptError
from prefopt.online.rounds import (
    Round,
    RoundMaker,
    prompt_ids_of,
    round_prompts,
    training_prompts,
)

log = logging.getLogger("prefopt.online")

EMPTY_ROUNDS_ALLOWED = 3
"""Rounds in a row without a single pair before the run stops (all samples tie)."""


class OnlineDataModule(L.LightningDataModule):
    epoch_name = "Round"  # what the progress bar calls an epoch (training/run_length.py)

    def __init__(self, offline: PreferenceDataModule, maker: RoundMaker, loop_cfg):
        """`offline`: the set-up offline data module (training prompts, validation data, the
        collate function); `maker`: what a round needs besides the policy."""
        super().__init__()
        self.offline = offline
        self.maker = maker
        self.cfg = loop_cfg
        self.prompt_set = training_prompts(offline.train_examples)
        if not self.prompt_set:
            raise PrefoptError("loop=online: the training data has no prompts to sample from")
        self.prompt_originals = originals_of(
            self.prompt_set, offline.train_examples, prompt_ids_of, maker.tokenizer
        )
        """The prompts as written (text or messages), for the judge."""
        self.round: Round | None = None
        self.history: list[dict[str, float]] = []
        """Each round's metrics with the step it started at (the reward-vs-KL plot)."""
        self._loader: DataLoader | None = None
        self._resume: dict[str, Any] | None = None

    # --- what other parts read, as from the offline module ----------------------------------

    @property
    def train_examples(self):
        return self.offline.train_examples

    @property
    def val_examples(self):
        return self.offline.val_examples

    @property
    def pad_token_id(self) -> int:
        return self.offline.pad_token_id

    @property
    def paired(self) -> bool:
        return self.offline.paired

    def setup(self, stage: str | None = None) -> None:
        self.offline.setup(stage)
        trainer = getattr(self, "trainer", None)
        if trainer is not None and stage in (None, "fit"):
            # Before the first step and before a checkpoint's weights are loaded: π_ref is the
            # initial policy (a no-op when the reference holds its own model).
            self.maker.reference_model.keep_initial_policy(trainer.lightning_module.policy)

    def val_dataloader(self):
        return self.offline.val_dataloader()

    # --- rounds -------------------------------------------------------------------------------

    def train_dataloader(self) -> DataLoader:
        skip = 0
        if self._resume is not None and self._resume.get("round") is not None:
            self.round = Round.from_state(self._resume["round"])
            skip = int(self._resume.get("batches_done", 0))
            self.history = list(self._resume.get("history", []))
            if skip >= len(self.round.batches):  # saved at the round's end: the next one
                self._next_round(self.round.index + 1)
                skip = 0
            else:
                log.info("online: resuming round %d at batch %d", self.round.index, skip)
        else:
            first = 0 if self.round is None else self.round.index + 1
            self._next_round(first)
        self._resume = None
        dataset = RoundBatches(self.round, self.maker.collate, self.paired)
        self._loader = DataLoader(
            dataset, batch_size=None, sampler=SkipFirst(len(dataset), skip), num_workers=0
        )
        return self._loader

    def _next_round(self, index: int) -> None:
        trainer = self.trainer
        module = trainer.lightning_module
        rank, world = trainer.global_rank, trainer.world_size
        n_batches = self.cfg.steps_per_round * trainer.accumulate_grad_batches
        for _ in range(EMPTY_ROUNDS_ALLOWED):
            chosen = round_prompts(
                len(self.prompt_set), index, self.cfg.prompts_per_round, self.cfg.seed
            )
            prompts = [self.prompt_set[i] for i in chosen][rank::world]
            originals = [self.prompt_originals[i] for i in chosen][rank::world]
            made = self.maker.make(
                index, prompts, module.policy, n_batches, module.device,
                forward_context=trainer.precision_plugin.forward_context, originals=originals,
            )  # fmt: skip
            self._track(made, trainer)
            # Decided by all ranks together (each samples its own share of the prompts): a
            # rank that went on, or raised, alone would leave the others waiting forever.
            if trainer.strategy.reduce_boolean_decision(bool(made.batches), all=True):
                self.round = made
                return
            log.warning(
                "online: round %d gave no training pairs on %s (every sample tied)",
                index,
                "this rank" if not made.batches else "another rank",
            )
            index += 1
        raise PrefoptError(
            f"loop=online: {EMPTY_ROUNDS_ALLOWED} rounds in a row gave no training pairs "
            f"(the judge scored every sample of a prompt the same); raise loop.temperature or "
            f"loop.samples_per_prompt"
        )

    def _track(self, made: Round, trainer) -> None:
        step = trainer.global_step
        self.history.append({"step": float(step), **made.metrics})
        if trainer.logger is not None and trainer.is_global_zero:
            trainer.logger.log_metrics(made.metrics, step=step)
        shown = (
            "reward_judge", "reward_true", "kl", "length", "pairs_kept", "examples_kept",
            "rl_reward", "advantage_std",
        )  # fmt: skip
        log.info(
            "round %d at step %d: %s",
            made.index,
            step,
            ", ".join(
                f"{k}={made.metrics[f'round/{k}']:.3f}"
                for k in shown
                if f"round/{k}" in made.metrics
            ),
        )

    # --- resume ---------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """The current round and the batches of it the trainer finished; Lightning saves it
        with each checkpoint."""
        if self.round is None:
            return {}
        done = self.trainer.fit_loop.epoch_loop.batch_progress.current.processed
        return {
            "round": self.round.to_state(),
            "batches_done": int(done),
            "history": self.history,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._resume = dict(state_dict) if state_dict else None


class RoundBatches(Dataset):
    """A round's batches, each collated when asked for, with the reference's precomputed
    log-probs of its rows (`reference_logps`) when the round has them, and π_old's
    (`old_logps`) for an on-policy loss."""

    def __init__(self, made: Round, collate, paired: bool):
        self.made = made
        self.collate = collate
        self.examples = made.examples(paired)

    def __len__(self) -> int:
        return len(self.made.batches)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        batch = self.collate([self.examples[j] for j in self.made.batches[i]])
        if self.made.reference_logps is not None:
            batch["reference_logps"] = torch.tensor(self.made.reference_logps[i])
        if self.made.old_logps is not None:
            batch["old_logps"] = torch.tensor(self.made.old_logps[i])
        return batch


class SkipFirst(Sampler[int]):
    """0..n-1 after the first `skip` (a resumed round); its length stays n, the round's, which
    is what Lightning counts the epoch's batches against."""

    def __init__(self, n: int, skip: int):
        self.n, self.skip = n, skip

    def __iter__(self):
        return iter(range(self.skip, self.n))

    def __len__(self) -> int:
        return self.n
