"""Preference losses. The registry maps a `loss=<name>` config choice to its class."""

from prefopt.losses.base import (
    CompletionLogps,
    LossOutput,
    PairLogps,
    PreferenceLoss,
    UnpairedLogps,
)
from prefopt.losses.dpo import DPOLoss
from prefopt.losses.ipo import IPOLoss
from prefopt.losses.kto import KTOLoss
from prefopt.losses.simpo import SimPOLoss

LOSSES: dict[str, type[PreferenceLoss]] = {
    cls.name: cls for cls in (DPOLoss, IPOLoss, SimPOLoss, KTOLoss)
}

__all__ = [
    "LOSSES",
    "CompletionLogps",
    "DPOLoss",
    "IPOLoss",
    "KTOLoss",
    "LossOutput",
    "PairLogps",
    "PreferenceLoss",
    "SimPOLoss",
    "UnpairedLogps",
]
