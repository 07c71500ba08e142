"""The seed's failure modes, watched during a run: `DiagnosticsCallback`.

- β outside the range the loss's authors recommend: an info line at start, tag
  `diagnostics.beta_range`.
- Reference policy collapse (the seed's "When DPO fails"): if the reference gives many chosen
  completions a near-zero probability, the implicit reward β·log π/π_ref is dominated by the
  reference rather than the preference. Before training, a seeded sample of chosen completions
  is scored under the reference; the share whose mean per-token log-prob is below
  `collapse_logp` is logged (`diagnostics/ref_low_logp_share`) and warned about above
  `collapse_max_share` (tag `diagnostics.reference_collapse`).
- A margin that does not rise: if `val/rewards/margins` rose by no more than
  `margin_min_increase` over the last K validations, the reference is mismatched with the
  preference data: warned once, metric `diagnostics/margin_stalled` (0/1) at every validation
  from the K-th on, tag `diagnostics.margin_stalled`. Off under a moving reference
  (`reference.sync_every_n_steps`), whose margin need not rise.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Sequence

import lightning as L
import torch
from torch import Tensor

from prefopt.config.schema import DiagnosticsConfig
from prefopt.data.collate import collate_pairs
from prefopt.data.unpaired import collate_unpaired
from prefopt.losses.base import PreferenceLoss
from prefopt.reference import Reference, ReferenceSync
from prefopt.tracking import set_tags

log = logging.getLogger("prefopt.diagnostics")

MARGIN_METRIC = "val/rewards/margins"


def beta_advice(loss: PreferenceLoss) -> str | None:
    """A line when the loss's β lies outside its authors' recommended range, else None."""
    beta, recommended = getattr(loss, "beta", None), loss.recommended_beta
    if beta is None or recommended is None:
        return None
    low, high = recommended
    if low <= beta <= high:
        return None
    direction = (
        "the policy may drift far from the reference (β→0 ignores it)"
        if beta < low
        else "the policy may barely move from the reference (β→∞ freezes it)"
    )
    return (
        f"loss.beta={beta:g} is outside [{low:g}, {high:g}], the range the authors of "
        f"{loss.name.upper()} recommend: {direction}"
    )


def low_logp_share(summed_logps: Tensor, token_counts: Tensor, threshold: float) -> float:
    """Share of completions whose mean per-token log-prob is below `threshold`."""
    per_token = summed_logps.double() / token_counts.clamp(min=1).double()
    return (per_token < threshold).double().mean().item()


def margin_stalled(margins: Sequence[float], window: int, min_increase: float) -> bool | None:
    """Whether the margin rose by no more than `min_increase` over the last `window` values
    (last minus first of the window); None until there are `window` values."""
    if window < 2 or len(margins) < window:
        return None
    recent = margins[-window:]
    return recent[-1] - recent[0] <= min_increase


class DiagnosticsCallback(L.Callback):
    def __init__(self, cfg: DiagnosticsConfig, loss: PreferenceLoss, seed: int = 0):
        self.cfg = cfg
        self.loss = loss
        self.seed = seed
        self.margins: list[float] = []
        self.stalled = False
        self.collapse_share: float | None = None
        self.reference_moves = False
        """True under `reference.sync_every_n_steps`: the margin is measured against a reference
        that keeps catching up with the policy, so a flat margin says nothing about the data."""

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        advice = beta_advice(self.loss)
        if advice:
            log.info(advice)
        if getattr(self.loss, "beta", None) is not None and self.loss.recommended_beta:
            _tag(trainer, "diagnostics.beta_range", "outside" if advice else "inside")
        self._check_reference_collapse(trainer, pl_module)
        self.reference_moves = any(isinstance(c, ReferenceSync) for c in trainer.callbacks)
        if self.reference_moves:
            log.info(
                "diagnostics: the margin check is off: the reference moves "
                "(reference.sync_every_n_steps), so %s need not rise",
                MARGIN_METRIC,
            )

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or MARGIN_METRIC not in trainer.callback_metrics:
            return
        if self.reference_moves:
            return
        self.margins.append(float(trainer.callback_metrics[MARGIN_METRIC]))
        stalled = margin_stalled(self.margins, self.cfg.margin_window, self.cfg.margin_min_increase)
        if stalled is None:
            return
        if trainer.logger is not None:
            trainer.logger.log_metrics(
                {"diagnostics/margin_stalled": float(stalled)}, step=trainer.global_step
            )
        if stalled and not self.stalled:
            window = self.margins[-self.cfg.margin_window :]
            log.warning(
                "the implicit reward margin (%s) is not increasing over the last %d validations "
                "(%s): reference policy mismatched with the preference data; revise the data or β",
                MARGIN_METRIC,
                self.cfg.margin_window,
                " -> ".join(f"{m:.4f}" for m in window),
            )
            _tag(trainer, "diagnostics.margin_stalled", "true")
        self.stalled = self.stalled or stalled

    def _check_reference_collapse(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        reference: Reference | None = pl_module.reference
        examples = trainer.datamodule.train_examples if trainer.datamodule else None
        if reference is None or not examples or self.cfg.collapse_sample <= 0:
            return  # reference-free losses: the failure mode does not apply
        paired = "chosen_input_ids" in examples[0]
        candidates = examples if paired else [e for e in examples if e["desirable"]]
        if not candidates:
            return
        rng = random.Random(self.seed)
        sample = rng.sample(candidates, min(self.cfg.collapse_sample, len(candidates)))
        summed, counts = _chosen_reference_logps(reference, sample, paired, trainer, pl_module)
        share = low_logp_share(summed, counts, self.cfg.collapse_logp)
        self.collapse_share = share
        if trainer.logger is not None:
            trainer.logger.log_metrics({"diagnostics/ref_low_logp_share": share}, step=0)
        if share > self.cfg.collapse_max_share:
            log.warning(
                "reference policy collapse: %.0f%% of %d sampled chosen completions have a mean "
                "per-token reference log-prob below %g (threshold share %.0f%%). DPO then follows "
                "the reference's probabilities rather than the preferences; fine-tune the "
                "reference on the chosen completions first (SFT), or revise the data",
                100 * share,
                len(sample),
                self.cfg.collapse_logp,
                100 * self.cfg.collapse_max_share,
            )
            _tag(trainer, "diagnostics.reference_collapse", f"{share:.3f}")


@torch.no_grad()
def _chosen_reference_logps(
    reference: Reference, sample, paired, trainer, pl_module, batch_size=32
) -> tuple[Tensor, Tensor]:
    """Reference log-probs of each sampled example's chosen (or desirable) completion, through
    the reference training uses (a model run online, or a cached table looked up)."""
    pad_id = trainer.datamodule.pad_token_id
    collate = collate_pairs if paired else collate_unpaired
    summed, counts = [], []
    for start in range(0, len(sample), batch_size):
        batch = collate(sample[start : start + batch_size], pad_token_id=pad_id)
        batch = {k: v.to(pl_module.device) for k, v in batch.items()}
        half = batch["input_ids"].shape[0] // 2
        chosen, _ = reference.logps(batch, "train").split(half)
        summed.append(chosen.summed.float().cpu())
        counts.append(chosen.token_counts.cpu())
    return torch.cat(summed), torch.cat(counts)


def _tag(trainer: L.Trainer, key: str, value: str) -> None:
    set_tags(trainer.logger, {key: value})
