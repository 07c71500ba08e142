"""The losses a run or a `loss=mix` term can name: `loss=<name>` → its class. `loss=mix` itself
is added in `prefopt.losses` (a mix names its terms from here, so this module cannot import it)."""

from prefopt.losses.aot import AOTLoss
from prefopt.losses.aot_unpaired import AOTUnpairedLoss
from prefopt.losses.apo_down import APODownLoss
from prefopt.losses.apo_zero import APOZeroLoss
from prefopt.losses.base import PreferenceLoss
from prefopt.losses.bco_pair import BCOPairLoss
from prefopt.losses.cpo import CPOLoss
from prefopt.losses.discopop import DiscoPOPLoss
from prefopt.losses.dpo import DPOLoss
from prefopt.losses.exo_pair import ExoPairLoss
from prefopt.losses.hinge import HingeLoss
from prefopt.losses.ipo import IPOLoss
from prefopt.losses.kto import KTOLoss
from prefopt.losses.nca_pair import NCAPairLoss
from prefopt.losses.orpo import ORPOLoss
from prefopt.losses.robust import RobustLoss
from prefopt.losses.sft import SFTLoss
from prefopt.losses.sigmoid_norm import SigmoidNormLoss
from prefopt.losses.simpo import SimPOLoss
from prefopt.losses.sppo_hard import SPPOHardLoss

# TRL's DPOTrainer loss types, under TRL's names (its `sigmoid` is `dpo`, its `ipo` is `ipo`).
TRL_LOSSES: tuple[type[PreferenceLoss], ...] = (
    HingeLoss,
    RobustLoss,
    BCOPairLoss,
    ExoPairLoss,
    NCAPairLoss,
    SPPOHardLoss,
    AOTLoss,
    AOTUnpairedLoss,
    APOZeroLoss,
    APODownLoss,
    DiscoPOPLoss,
    SigmoidNormLoss,
)

TERM_LOSSES: dict[str, type[PreferenceLoss]] = {
    cls.name: cls
    for cls in (DPOLoss, IPOLoss, SimPOLoss, KTOLoss, *TRL_LOSSES, SFTLoss, ORPOLoss, CPOLoss)
}
"""Every loss but `mix`: what `loss.terms` may name (KTO is refused there with its reason)."""
