"""Options TRL's DPOTrainer offers on top of its paired losses, as functions any paired loss uses.

- `ld_alpha` (LD-DPO; Liu et al. 2024, *Length Desensitization in Direct Preference
  Optimization*): the log-prob of a completion counts its first min(len_chosen, len_rejected)
  tokens fully and the verbose rest with weight α,
  log π̃(y|x) = log π(y_{≤ℓ}|x) + α·log π(y_{>ℓ}|x, y_{≤ℓ}),  ℓ = min(|y_w|, |y_l|),
  for the policy and the reference alike. α = 1 is the plain sum, α = 0 drops the tail. `None`
  (the default) never computes the shared-length sums.
- `use_weighting` (WPO; Zhou et al. 2024, *WPO: Enhancing RLHF with Weighted Preference
  Optimization*, Eq. 2): each pair's loss is multiplied by w(x, y_w)·w(x, y_l),
  w(x, y) = exp( (1/|y|) Σ_t [log π(y_t|x, y_<t) − log Σ_v π(v|x, y_<t)²] ), under the policy
  and without gradient: pairs the policy itself would likely produce count more (the
  "aligned" normalisation by Σ_v π(v)², as TRL implements it).
- `f_divergence` (f-DPO; Wang et al. 2023, *Beyond Reverse KL: Generalizing Direct Preference
  Optimization with Diverse Divergence Constraints*): the log-ratio u = π/π_ref of each side enters
  the loss through f'(u) of the divergence regularising the policy, so the DPO margin becomes
  f'(u_w) − f'(u_l) instead of log u_w − log u_l.
"""

from __future__ import annotations

import math

import torch.nn.functional as F
from torch import Tensor

from prefopt.errors import PrefoptError
from prefopt.losses.base import CompletionLogps, PairLogps

F_DIVERGENCES = ("reverse_kl", "forward_kl", "js", "alpha")
"""f'(u) up to an additive constant (which cancels in the chosen − rejected margin):
reverse_kl log u (DPO); forward_kl 1 − 1/u; js log(2u/(1 + u)); alpha (1 − u^(−α))/α."""

EXPONENT_LIMIT = 80.0
"""exp() arguments are clamped here (as TRL does): a policy far below its reference would
otherwise overflow to inf (e^80 ≈ 5.5e34 is finite in fp32); the clamped side gets no gradient."""


def ld_logps(side: CompletionLogps, ld_alpha: float | None) -> Tensor:
    """The LD-DPO log-prob of each sequence: the shared-length part plus α times the rest."""
    if ld_alpha is None:
        return side.summed
    if side.shared_summed is None:
        raise ValueError("ld_alpha needs the shared-length log-prob sums (shared_prefix=True)")
    return side.shared_summed + ld_alpha * (side.summed - side.shared_summed)


def wpo_weights(policy: PairLogps) -> Tensor:
    """w(x, y_w)·w(x, y_l) per pair, detached (no gradient flows through the weights)."""

    def weight(side: CompletionLogps) -> Tensor:
        if side.wpo_summed is None:
            raise ValueError("use_weighting needs the policy's WPO sums (wpo=True)")
        return (side.wpo_summed.detach() / side.token_counts.clamp(min=1)).exp()

    return weight(policy.chosen) * weight(policy.rejected)


def f_divergence_score(logratio: Tensor, kind: str, alpha: float = 0.5) -> Tensor:
    """f'(π/π_ref) from log(π/π_ref), for the divergence `kind` (see `F_DIVERGENCES`).

    α follows the f-DPO paper: f'(u) = (1 − u^(−α))/α, α → 0 is the reverse KL, α = 1 the
    forward KL. TRL's `f_alpha_divergence_coef` a writes (u^(a−1) − 1)/(a − 1): the same
    function for a = 1 − α (they agree at the default 0.5 only).
    """
    if kind == "reverse_kl":
        return logratio
    if kind == "forward_kl":
        return 1 - (-logratio).clamp(max=EXPONENT_LIMIT).exp()
    if kind == "js":
        return math.log(2) + F.logsigmoid(logratio)
    if kind == "alpha":
        return (1 - (-alpha * logratio).clamp(max=EXPONENT_LIMIT).exp()) / alpha
    raise ValueError(f"unknown f-divergence {kind!r}")


def check_options(
    loss_name: str, ld_alpha: float | None, f_divergence: str = "reverse_kl", f_alpha: float = 0.5
) -> None:
    """One-line errors for the options' values."""
    if ld_alpha is not None and not 0.0 <= ld_alpha <= 1.0:
        raise PrefoptError(
            f"loss.ld_alpha={ld_alpha} for loss '{loss_name}': it must be in [0, 1] "
            "(1 = the plain sum, 0 = drop the tokens past the shorter completion), or null (off)"
        )
    if f_divergence not in F_DIVERGENCES:
        raise PrefoptError(
            f"loss.f_divergence={f_divergence!r} for loss '{loss_name}': "
            f"choose one of {', '.join(F_DIVERGENCES)}"
        )
    if f_divergence == "alpha" and not 0.0 < f_alpha < 1.0:
        raise PrefoptError(
            f"loss.f_alpha={f_alpha} for loss '{loss_name}': it must be in (0, 1) "
            "(its limits are f_divergence=reverse_kl at 0 and forward_kl at 1)"
        )
