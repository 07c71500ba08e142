"""Preference losses. The registry maps a `loss=<name>` config choice to its class."""

from prefopt.losses.base import CompletionLogps, LossOutput, PairLogps, PreferenceLoss
from prefopt.losses.dpo import DPOLoss

LOSSES: dict[str, type[PreferenceLoss]] = {
    cls.name: cls for cls in (DPOLoss,)
}

__all__ = ["LOSSES", "CompletionLogps", "DPOLoss", "LossOutput", "PairLogps", "PreferenceLoss"]
