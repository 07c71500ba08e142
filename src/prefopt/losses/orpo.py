"""ORPO (Hong et al., 2024, *ORPO: Monolithic Preference Optimization without Reference Model*).

With P(y|x) = exp(avg log π(y|x)), the LENGTH-NORMALISED sequence probability (mean per-token
log-prob over the completion), and odds(y|x) = P / (1 − P):

    L = L_SFT − β · log σ( log odds(y_w|x) − log odds(y_l|x) )
    log odds(y|x) = avg log π(y|x) − log(1 − exp(avg log π(y|x)))

L_SFT is the NLL of the chosen completion (`sft.chosen_nll`: mean per completion token over the
batch). β is the paper's λ, named `beta` as TRL's ORPOConfig names it; the paper uses 0.1 (and
studies 0.1 to 1). No reference model is loaded: the odds ratio against the rejected answer
replaces it. Rewards (logged) are β·avg log π, as in TRL; `log_odds_ratio` and
`log_odds_chosen` are TRL's diagnostics (log σ(·) and its argument).

Paper and TRL differ on L_SFT: the paper (Eq. 1) is the NLL of the response tokens y; TRL's
ORPOTrainer takes the cross-entropy over the prompt AND the response of the chosen sequence.
prefopt follows the paper (a loss sees completion log-probs only), so its total differs from
TRL's by the prompt tokens' share; the odds-ratio term, the rewards and the log-probs are TRL's
(tests/losses/test_orpo_cpo_trl_parity.py checks both readings).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from prefopt.losses.base import (
    LossOutput,
    PairLogps,
    PreferenceLoss,
    check_positive,
    paired_metrics,
)
from prefopt.losses.sft import chosen_nll


def log1mexp(x: Tensor) -> Tensor:
    """log(1 − exp(x)) for x < 0, without cancellation (branch at −log 2, Mächler 2012).

    Each branch sees only inputs it is accurate and finite on: `torch.where` differentiates
    both, and log1p(−exp(x)) near x = 0 (P → 1) would turn the unused branch's gradient into
    0·inf = NaN (as TRL's one-line version does in fp32)."""
    far = x < -0.6931471805599453
    far_branch = torch.log1p(-torch.where(far, x, torch.full_like(x, -1.0)).exp())
    near_branch = torch.log(-torch.expm1(torch.where(far, torch.full_like(x, -0.5), x)))
    return torch.where(far, far_branch, near_branch)


@dataclass
class ORPOLoss(PreferenceLoss):
    beta: float = 0.1
    """λ, the weight of the odds-ratio term against the NLL (TRL's `beta`)."""

    name: ClassVar[str] = "orpo"
    needs_reference: ClassVar[bool] = False
    recommended_beta: ClassVar[tuple[float, float]] = (0.1, 1.0)

    def __post_init__(self) -> None:
        check_positive(self.name, "beta", self.beta)

    def __call__(self, policy: PairLogps, reference: PairLogps | None = None) -> LossOutput:
        chosen, rejected = policy.chosen.mean, policy.rejected.mean
        log_odds = (chosen - rejected) - (log1mexp(chosen) - log1mexp(rejected))
        ratio = F.logsigmoid(log_odds)
        nll = chosen_nll(policy)
        loss = nll - self.beta * ratio.mean()

        metrics = paired_metrics(policy, self.beta * chosen, self.beta * rejected)
        metrics["nll"] = nll.detach()
        metrics["log_odds_ratio"] = ratio.detach()
        metrics["log_odds_chosen"] = log_odds.detach()
        return LossOutput(loss=loss, metrics=metrics)
