"""A moving reference (TR-DPO: Gorbatovski et al. 2024, "Learn Your Reference Model for Real
Good Alignment"): every `reference.sync_every_n_steps` optimizer steps the policy's weights are
mixed into the reference model in place, π_ref ← α·π_θ + (1−α)·π_ref with α =
`reference.sync_mix` (α = 1: a hard copy).

`ReferenceSync` is the Lightning callback that does it; `build_reference_sync` makes it from
the `reference` section and the run's `Reference`; `check_sync` says, before anything loads,
which combinations cannot move a reference correctly:
- a LoRA policy: its reference is the adapter-disabled base (or a checkpoint whose parameter
  names are not the PEFT model's), which the adapter's training never changes;
- FSDP: the policy's parameters are shards, and gathering them every sync is not supported;
  DDP is: every rank mixes its own, identical, reference.
The mixed reference is part of the checkpoint (the callback's `state_dict`), so a resumed run
goes on with the same reference. Evaluation keeps comparing with the initial reference: with
sync on, `build_reference` gives the online reference a `SamplingModel` of its own (a frozen
copy of the initial policy, or the `model.reference_path` checkpoint loaded again).
"""

from __future__ import annotations

import logging
from typing import Any

import lightning as L
import torch
from torch import Tensor, nn

from prefopt.config.schema import ReferenceConfig
from prefopt.errors import PrefoptError

log = logging.getLogger("prefopt.reference")

_OFF = "or set reference.sync_every_n_steps=0 for a fixed reference"


def check_sync(reference_cfg, model_cfg, trainer_cfg) -> None:
    """The sync keys' values, and the model and trainer settings a moving reference cannot
    work with; a one-line `PrefoptError` naming the key and the fix."""
    every, mix = reference_cfg.sync_every_n_steps, reference_cfg.sync_mix
    if every < 0:
        raise PrefoptError(
            f"reference.sync_every_n_steps={every}: it must be >= 0 (0 = the reference stays "
            "the initial policy, n = mix the policy into it every n optimizer steps)"
        )
    if not 0 < mix <= 1:
        raise PrefoptError(
            f"reference.sync_mix={mix}: it must be in (0, 1] (1 = copy the policy into the "
            "reference, e.g. 0.6 = a soft update π_ref ← 0.6·π + 0.4·π_ref)"
        )
    if every == 0:
        return
    if model_cfg.lora.enabled:
        raise PrefoptError(
            f"reference.sync_every_n_steps={every} with model.lora.enabled: a LoRA policy's "
            "reference cannot move (the adapter never changes the base weights); train without "
            f"LoRA (model.lora.enabled=false), {_OFF}"
        )
    if trainer_cfg.strategy == "fsdp":
        raise PrefoptError(
            f"reference.sync_every_n_steps={every} with trainer.strategy=fsdp: the policy's "
            f"weights are sharded across ranks and cannot be mixed into the reference; use "
            f"trainer=ddp, {_OFF}"
        )


def build_reference_sync(reference_cfg: ReferenceConfig, reference) -> ReferenceSync | None:
    """The callback that moves `reference` (the run's `Reference`, None for a reference-free
    loss), or None when `reference.sync_every_n_steps` is 0 or there is no reference to move."""
    every = reference_cfg.sync_every_n_steps
    if not every:
        return None
    if reference is None:
        log.warning(
            "reference.sync_every_n_steps=%d has no effect: the loss uses no reference "
            "(evaluation still compares with the initial one)",
            every,
        )
        return None
    from prefopt.reference.online import OnlineReference

    if not isinstance(reference, OnlineReference):
        raise PrefoptError(
            f"reference.sync_every_n_steps={every}: the reference ({type(reference).__name__}) "
            f"holds no model of its own to move (a LoRA policy's base, or cached log-probs); {_OFF}"
        )
    if reference.sampling_model.model is reference.model:
        raise ValueError(
            "a moving OnlineReference needs a SamplingModel of its own (evaluation compares "
            "with the initial reference): build it with build_reference, or pass sampling_model"
        )
    return ReferenceSync(reference.model, every, reference_cfg.sync_mix)


class ReferenceSync(L.Callback):
    """After every `every_n_steps`-th optimizer step, π_ref ← α·π_θ + (1−α)·π_ref, parameter by
    parameter in place (in fp32, cast back to the reference's dtype); buffers are copied.

    `sync_count` counts the syncs done so far in the run (a resumed run included): whatever
    holds reference log-probs computed earlier (an online round's pairs) is stale once it
    changes. `next_sync_step(step)` says at which optimizer step the next one happens."""

    def __init__(self, reference_model: nn.Module, every_n_steps: int, mix: float = 1.0):
        if every_n_steps < 1:
            raise ValueError(f"ReferenceSync: every_n_steps={every_n_steps}, must be >= 1")
        if not 0 < mix <= 1:
            raise ValueError(f"ReferenceSync: mix={mix}, must be in (0, 1]")
        self.reference_model = reference_model
        self.every_n_steps = every_n_steps
        self.mix = mix
        self.sync_count = 0
        """Syncs done so far (restored on resume)."""
        self.synced_step = 0
        """The optimizer step of the latest sync (0: none yet)."""

    @property
    def state_key(self) -> str:
        return "ReferenceSync"

    def next_sync_step(self, step: int) -> int:
        """The first optimizer step after `step` (a `trainer.global_step`) that syncs."""
        return (step // self.every_n_steps + 1) * self.every_n_steps

    def setup(self, trainer, pl_module, stage: str) -> None:
        if stage != "fit":
            return
        from lightning.pytorch.strategies import FSDPStrategy

        if isinstance(trainer.strategy, FSDPStrategy):
            raise PrefoptError(
                "reference.sync_every_n_steps with trainer.strategy=fsdp: the policy's weights "
                f"are sharded and cannot be mixed into the reference; use trainer=ddp, {_OFF}"
            )
        check_same_parameters(pl_module.policy, self.reference_model)

    def on_train_start(self, trainer, pl_module) -> None:
        # A checkpoint written at a sync step before this callback ran (a callback list in
        # another order) resumes with that step's sync still to do: do it now, from the very
        # policy weights it would have used.
        self._sync_if_due(trainer, pl_module)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._sync_if_due(trainer, pl_module)

    def _sync_if_due(self, trainer, pl_module) -> None:
        step = trainer.global_step
        if step == 0 or step % self.every_n_steps or step <= self.synced_step:
            return  # not a sync step, or within gradient accumulation of one already done
        mix_into(self.reference_model, pl_module.policy, self.mix)
        self.sync_count += 1
        self.synced_step = step
        log.debug("reference synced at step %d (α=%g, sync %d)", step, self.mix, self.sync_count)

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {"sync_count": self.sync_count, "synced_step": self.synced_step}
        if self.sync_count:  # before the first sync the reference is the initial one, on disk
            state["reference"] = {
                name: tensor.detach().cpu()
                for name, tensor in self.reference_model.state_dict().items()
            }
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.sync_count = state_dict["sync_count"]
        self.synced_step = state_dict["synced_step"]
        if "reference" in state_dict:
            self.reference_model.load_state_dict(state_dict["reference"])


@torch.no_grad()
def mix_into(reference: nn.Module, policy: nn.Module, mix: float) -> None:
    """π_ref ← mix·π + (1−mix)·π_ref for every parameter, computed in fp32 and cast back to the
    reference's dtype and device; every buffer copied from the policy. `mix=1` copies."""
    sources = dict(policy.named_parameters())
    for name, target in reference.named_parameters():
        target.copy_(_mixed(sources[name], target, mix))
    buffers = dict(policy.named_buffers())
    for name, target in reference.named_buffers():
        if name in buffers:
            target.copy_(buffers[name])


def _mixed(source: Tensor, target: Tensor, mix: float) -> Tensor:
    source = source.detach().to(target.device)
    if mix == 1:
        return source  # a copy, exact whatever the dtypes (and no 0·inf in the other term)
    return mix * source.float() + (1 - mix) * target.float()


def check_same_parameters(policy: nn.Module, reference: nn.Module) -> None:
    """The policy and the reference have the same parameter names and shapes (a sync mixes
    them one by one); a one-line `PrefoptError` naming the first difference."""
    ours = {name: tuple(p.shape) for name, p in policy.named_parameters()}
    theirs = {name: tuple(p.shape) for name, p in reference.named_parameters()}
    if ours == theirs:
        return
    missing = sorted(set(theirs) - set(ours)) + sorted(set(ours) - set(theirs))
    if missing:
        what = f"parameter {missing[0]!r} is in one model only"
    else:
        name = next(n for n in ours if ours[n] != theirs[n])
        what = f"parameter {name!r} is {list(ours[name])} in the policy, {list(theirs[name])} in it"
    raise PrefoptError(
        f"reference.sync_every_n_steps: the reference (model.reference_path) is not the "
        f"policy's architecture ({what}); leave model.reference_path unset, {_OFF}"
    )
