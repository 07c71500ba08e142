"""The precision training runs in, for what is computed before training: reference log-probs.

The reference's log-probs enter the loss next to the policy's, and the policy runs under the
Trainer's precision plugin (`bf16-mixed`: autocast to bf16 around every forward). A cache
filled in plain fp32 differs from what the same reference gives online by the rounding of
bf16: at step 0, where policy == reference, the rewards are then not 0. So the cache is filled
under the forward context of the plugin the Trainer will use (`precision_plugin`: Lightning's
own classes, built from `trainer.precision` as the Trainer builds them), and the precision is
part of the cache key. Like the online reference, the cached one keeps its weights in
`model.dtype`: a `*-true` precision casts only the policy's (give `model.dtype` to match).
"""

from __future__ import annotations

import logging

import torch
from lightning.pytorch.plugins.precision import (
    DoublePrecision,
    HalfPrecision,
    MixedPrecision,
    Precision,
)

log = logging.getLogger("prefopt.reference")

_SHORT_NAMES = {"32": "32-true", "16": "16-mixed", "bf16": "bf16-mixed", "64": "64-true"}


def precision_name(precision) -> str:
    """`trainer.precision` in Lightning's unified spelling: 32 → 32-true, bf16 → bf16-mixed."""
    name = str(precision)
    return _SHORT_NAMES.get(name, name)


def precision_plugin(precision, device: torch.device) -> Precision:
    """Lightning's precision plugin for `trainer.precision` on `device`; for one prefopt
    cannot mirror (e.g. transformer-engine), plain fp32, with a warning."""
    name = precision_name(precision)
    if name in ("bf16-mixed", "16-mixed"):
        return MixedPrecision(name, device.type)
    if name in ("bf16-true", "16-true"):
        return HalfPrecision(name)
    if name == "64-true":
        return DoublePrecision()
    if name != "32-true":
        log.warning(
            "trainer.precision=%s: reference log-probs are computed in fp32 (prefopt mirrors "
            "32-true, 64-true, 16/bf16-mixed and 16/bf16-true only)",
            name,
        )
    return Precision()
