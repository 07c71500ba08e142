"""What every reference is: the `Reference` protocol, and `SamplingModel`, π_ref as a model.

Training asks a reference for the log-probs of a batch (`logps`); the cache asks it for the
log-probs of every example of a set of loaders (`logps_table`); evaluation samples from π_ref
and scores with it through its `sampling_model`. The implementations: `OnlineReference` (a
frozen model, `online.py`), `AdapterDisabledReference` (the LoRA policy with its adapter off,
`adapter.py`) and `CachedReference` (log-probs computed once and read from disk, `cached.py`).
"""

from __future__ import annotations

import contextlib
import copy
import logging
from collections.abc import Callable, Iterator
from typing import Protocol, runtime_checkable

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from prefopt.losses.base import CompletionLogps

log = logging.getLogger("prefopt.reference")


class SamplingModel:
    """π_ref as a model evaluation samples from and scores with (generations, `eval/kl_seq`).

    One of three, fixed when the reference is built:
    - `SamplingModel(model)`: a model training holds anyway (the online reference, or the LoRA
      policy with its adapter off), shared: moved to the evaluation's device and left there;
    - `SamplingModel(load=...)`: a reference checkpoint other than the initial policy, loaded
      at the first evaluation;
    - `SamplingModel()`: the reference IS the initial policy and no model of it is held (cached
      log-probs, or a reference-free loss): a frozen copy of the policy taken by
      `keep_initial_policy` before the first step and before Lightning moves the policy to the
      accelerator.
    A loaded model or a copy stays on the CPU between evaluations.
    """

    def __init__(self, model: nn.Module | None = None, load: Callable[[], nn.Module] | None = None):
        if model is not None and load is not None:
            raise ValueError("SamplingModel: give a model or a way to load one, not both")
        self.model = model
        """The model once in memory (None until loaded or copied)."""
        self.shared = model is not None
        """True when training holds this model too: evaluation never moves it back."""
        self._load = load

    @property
    def is_initial_policy(self) -> bool:
        """Whether evaluation needs a copy of the initial policy (`keep_initial_policy`)."""
        return not self.shared and self._load is None

    def keep_initial_policy(self, policy: nn.Module) -> None:
        """Take the frozen copy of the initial policy, if that is what π_ref is and none is held
        yet; a no-op otherwise. Call it before the first step (evaluation's `setup`)."""
        if self.is_initial_policy and self.model is None:
            self.model = copy.deepcopy(policy).eval().requires_grad_(False)

    @contextlib.contextmanager
    def on(self, device: torch.device) -> Iterator[nn.Module]:
        """The model on `device` for the block; one held only for evaluation goes back to the
        CPU after it (it never takes accelerator memory during training)."""
        if self.model is None:
            if self._load is None:
                raise RuntimeError("eval: no reference model (setup() did not run for fit)")
            log.info("eval: loading the reference model (kept on the CPU between evaluations)")
            self.model = self._load().eval().requires_grad_(False)
        try:
            yield self.model.to(device)
        finally:
            if not self.shared and device.type != "cpu":
                self.model.to("cpu")


@runtime_checkable
class Reference(Protocol):
    """π_ref as training, the cache, diagnostics and evaluation use it."""

    forward_calls: int
    """Batches the reference model has scored in `logps` (always 0 for a cache)."""
    sampling_model: SamplingModel
    """π_ref as a model, for evaluation."""

    def logps(
        self, batch: dict[str, Tensor], split: str = "train", shared_prefix: bool = False
    ) -> CompletionLogps:
        """Completion log-probs of a collated batch's rows (the first half chosen, or KTO's
        own completions; the second half rejected, or KTO's mismatched ones), not tracked
        by autograd. `split` names the data the batch comes from (a cache looks it up).
        `shared_prefix`: pairs only, also the sums over each pair's shared length (LD-DPO)."""
        ...

    def logps_table(self, loaders: dict[str, object], device: torch.device) -> dict[str, Tensor]:
        """Summed log-probs of every example of each split's loader: `[n_examples, 2]`,
        column 0 the first half of a batch's rows, column 1 the second half."""
        ...


@torch.no_grad()
def score_table(
    reference: Reference, loaders: dict[str, object], device: torch.device
) -> dict[str, Tensor]:
    """Score every example of each split's (unshuffled) loader once, with a progress bar."""
    table = {}
    for split, loader in loaders.items():
        n = len(loader.dataset) if hasattr(loader, "dataset") else 0
        values = torch.full((n, 2), float("nan"))
        for batch in tqdm(loader, desc=f"reference log-probs ({split})", leave=False):
            batch = {k: v.to(device) for k, v in batch.items()}
            half = batch["input_ids"].shape[0] // 2
            first, second = reference.logps(batch, split).split(half)
            index = batch["example_index"].cpu()
            values[index, 0] = first.summed.float().cpu()
            values[index, 1] = second.summed.float().cpu()
        if values.isnan().any():
            raise RuntimeError(f"reference cache: some {split} examples were never scored")
        table[split] = values
    return table
