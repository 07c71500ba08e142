"""A weighted sum of paired losses: `loss=mix`, as MPO's or TRL's `loss_type=[...]` with
`loss_weights`, LLaMA-Factory's `pref_ftx` (DPO + SFT) or RPO.

    L = Σ_k w_k · L_k

`terms` maps each loss name (any `loss=<name>` but `mix` and the unpaired `kto`) to its weight,
or to a mapping with its `weight` and any of that loss's own fields:

    terms:                       # conf/loss/mix.yaml
      dpo: {weight: 1.0, beta: 0.1}   # loss.terms.dpo.beta=0.2: DPO's β in this mix
      sft: {weight: 0.2}

A field the YAML does not list is added with Hydra's `+` (`+loss.terms.dpo.label_smoothing=0.1`),
as is a new term (`+loss.terms.ipo=0.5`); `~loss.terms.dpo` drops one. (`loss.terms={...}` on
the command line MERGES into the YAML's terms, Hydra's rule for mappings: a mix of one's own is
a YAML `conf/loss/<name>.yaml` with `defaults: [mix_schema]` and its `terms`.) A weight is a
number ≥ 0 (0 keeps a term's metrics without its gradient). Each term computes its own loss on the same log-probs; the reference model is loaded only
when some term needs it. Metrics: each term's under its name (`dpo/loss`, `dpo/rewards/margins`,
`sft/nll`, ...), the total as `loss`, and the FIRST term's `rewards/*` and `logps/*` also
unprefixed, so that the run's objective, the diagnostics and sweep summaries read them as for a
single loss.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar

from torch import Tensor

from prefopt.errors import PrefoptError
from prefopt.losses.base import LossOutput, PairLogps, PreferenceLoss
from prefopt.losses.registry import TERM_LOSSES


def default_terms() -> dict[str, Any]:
    return {"dpo": {"weight": 1.0}, "sft": {"weight": 0.2}}


@dataclass
class MixLoss(PreferenceLoss):
    terms: dict[str, Any] = field(default_factory=default_terms)
    """Loss name → weight (≥ 0), or → {weight: w, <that loss's fields>}; e.g. `{dpo: 1.0, sft: 0.2}`."""

    name: ClassVar[str] = "mix"

    def __post_init__(self) -> None:
        if not self.terms:
            raise PrefoptError("loss.terms is empty: name at least one loss, e.g. {dpo: 1.0}")
        self.weighted: list[tuple[str, float, PreferenceLoss]] = [
            (name, *build_term(name, spec)) for name, spec in self.terms.items()
        ]
        unpaired = [name for name, _, loss in self.weighted if not loss.paired]
        if unpaired:
            paired = [name for name, _, loss in self.weighted if loss.paired]
            raise PrefoptError(
                f"loss.terms.{unpaired[0]}: {unpaired[0]} trains on unpaired (prompt, completion, "
                f"label) examples, a mix on pairs"
                + (f" ({', '.join(paired)})" if paired else "")
                + f"; the two data shapes cannot be mixed: train it alone with loss={unpaired[0]}"
            )

    @property
    def needs_reference(self) -> bool:  # type: ignore[override]
        return any(loss.needs_reference for _, _, loss in self.weighted)

    @property
    def needs_shared_prefix(self) -> bool:
        return any(loss.needs_shared_prefix for _, _, loss in self.weighted)

    @property
    def needs_wpo(self) -> bool:
        return any(loss.needs_wpo for _, _, loss in self.weighted)

    @property
    def keeps_state(self) -> bool:  # type: ignore[override]
        return any(loss.keeps_state for _, _, loss in self.weighted)

    def __call__(
        self, policy: PairLogps, reference: PairLogps | None = None, **state_args: Any
    ) -> LossOutput:
        """`state_args` (`training`, `mean_across_devices`) reach the terms that keep state."""
        total = 0.0
        metrics = {}
        for index, (name, weight, loss) in enumerate(self.weighted):
            args = state_args if loss.keeps_state else {}
            out = loss(policy, reference if loss.needs_reference else None, **args)
            total = total + weight * out.loss
            metrics[f"{name}/loss"] = out.loss.detach()
            metrics.update({f"{name}/{key}": value for key, value in out.metrics.items()})
            if index == 0:
                metrics.update(
                    {k: v for k, v in out.metrics.items() if k.startswith(("rewards/", "logps/"))}
                )
        return LossOutput(loss=total, metrics=metrics)

    def state_dict(self) -> dict[str, Tensor]:
        """Each stateful term's running statistics, under `<term>/<key>`."""
        return {
            f"{name}/{key}": value
            for name, _, loss in self.weighted
            for key, value in loss.state_dict().items()
        }

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        for name, _, loss in self.weighted:
            own = {k.split("/", 1)[1]: v for k, v in state.items() if k.startswith(f"{name}/")}
            if own:
                loss.load_state_dict(own)

    def check_data(self, stats: dict[str, int]) -> str | None:
        advice = [text for _, _, loss in self.weighted if (text := loss.check_data(stats))]
        return "; ".join(advice) or None

    def describe(self) -> str:
        return "mix " + " + ".join(
            f"{weight:g}·{loss.describe()}" for _, weight, loss in self.weighted
        )


def build_term(name: str, spec: Any) -> tuple[float, PreferenceLoss]:
    """(weight, loss) of `loss.terms.<name>`: a number (the weight) or a mapping with `weight`
    and that loss's own fields; every mistake is a one-line error naming the key."""
    key = f"loss.terms.{name}"
    choices = sorted(TERM_LOSSES)
    if name not in choices:
        what = "a mix cannot contain a mix" if name == "mix" else "there is no such loss"
        raise PrefoptError(f"{key}: {what}; choose from: {', '.join(choices)}")
    if isinstance(spec, dict):
        params = dict(spec)
        weight = params.pop("weight", 1.0)
    else:
        weight, params = spec, {}
    if (
        isinstance(weight, bool)
        or not isinstance(weight, int | float)
        or not (math.isfinite(weight) and weight >= 0)
    ):
        raise PrefoptError(
            f"{key}: weight {weight!r}: give a number ≥ 0, as `{key}=0.5` or `{key}.weight=0.5`"
        )
    loss_cls = TERM_LOSSES[name]
    known = [f.name for f in fields(loss_cls)]
    unknown = [p for p in params if p not in known]
    if unknown:
        raise PrefoptError(
            f"{key}.{unknown[0]}: loss {name} has no such field; "
            f"its fields: {', '.join(['weight', *known])}"
        )
    try:
        return float(weight), loss_cls(**params)
    except PrefoptError as error:  # the term's own check names `loss.<field>`: say which term
        raise PrefoptError(str(error).replace("loss.", f"{key}.", 1)) from None
