"""Preference losses. The registry maps a `loss=<name>` config choice to its class."""

from prefopt.losses.aot import AOTLoss
from prefopt.losses.aot_unpaired import AOTUnpairedLoss
from prefopt.losses.apo_down import APODownLoss
from prefopt.losses.apo_zero import APOZeroLoss
from prefopt.losses.base import (
    CompletionLogps,
    LossOutput,
    PairLogps,
    PreferenceLoss,
    SampleLogps,
    UnpairedLogps,
)
from prefopt.losses.bco_pair import BCOPairLoss
from prefopt.losses.cpo import CPOLoss
from prefopt.losses.discopop import DiscoPOPLoss
from prefopt.losses.dpo import DPOLoss
from prefopt.losses.exo_pair import ExoPairLoss
from prefopt.losses.hinge import HingeLoss
from prefopt.losses.ipo import IPOLoss
from prefopt.losses.kto import KTOLoss
from prefopt.losses.mix import MixLoss
from prefopt.losses.nca_pair import NCAPairLoss
from prefopt.losses.orpo import ORPOLoss
from prefopt.losses.registry import TERM_LOSSES, TRL_LOSSES
from prefopt.losses.rloo import RLOOLoss
from prefopt.losses.robust import RobustLoss
from prefopt.losses.sft import SFTLoss
from prefopt.losses.sigmoid_norm import SigmoidNormLoss
from prefopt.losses.simpo import SimPOLoss
from prefopt.losses.sppo_hard import SPPOHardLoss

LOSSES: dict[str, type[PreferenceLoss]] = {
    **TERM_LOSSES,
    MixLoss.name: MixLoss,
    RLOOLoss.name: RLOOLoss,  # on-policy (loop=online only), so not a term of a mix
}

__all__ = [
    "LOSSES",
    "TRL_LOSSES",
    "AOTLoss",
    "AOTUnpairedLoss",
    "APODownLoss",
    "APOZeroLoss",
    "BCOPairLoss",
    "CPOLoss",
    "CompletionLogps",
    "DPOLoss",
    "DiscoPOPLoss",
    "ExoPairLoss",
    "HingeLoss",
    "IPOLoss",
    "KTOLoss",
    "LossOutput",
    "MixLoss",
    "NCAPairLoss",
    "ORPOLoss",
    "PairLogps",
    "PreferenceLoss",
    "RLOOLoss",
    "RobustLoss",
    "SFTLoss",
    "SPPOHardLoss",
    "SampleLogps",
    "SigmoidNormLoss",
    "SimPOLoss",
    "UnpairedLogps",
]
