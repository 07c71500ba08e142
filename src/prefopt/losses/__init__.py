"""Preference losses. The registry maps a `loss=<name>` config choice to its class."""

from prefopt.losses.base import (
    CompletionLogps,
    LossOutput,
    PairLogps,
    PreferenceLoss,
    UnpairedLogps,
)
from prefopt.losses.cpo import CPOLoss
from prefopt.losses.dpo import DPOLoss
from prefopt.losses.ipo import IPOLoss
from prefopt.losses.kto import KTOLoss
from prefopt.losses.mix import MixLoss
from prefopt.losses.orpo import ORPOLoss
from prefopt.losses.sft import SFTLoss
from prefopt.losses.simpo import SimPOLoss

LOSSES: dict[str, type[PreferenceLoss]] = {
    cls.name: cls
    for cls in (DPOLoss, IPOLoss, SimPOLoss, KTOLoss, SFTLoss, ORPOLoss, CPOLoss, MixLoss)
}

__all__ = [
    "LOSSES",
    "CPOLoss",
    "CompletionLogps",
    "DPOLoss",
    "IPOLoss",
    "KTOLoss",
    "LossOutput",
    "MixLoss",
    "ORPOLoss",
    "PairLogps",
    "PreferenceLoss",
    "SFTLoss",
    "SimPOLoss",
    "UnpairedLogps",
]
