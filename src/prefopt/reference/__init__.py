"""The reference policy π_ref behind one protocol, `Reference`: log-probs of a batch (`logps`),
of every example of a set of loaders (`logps_table`, what the cache stores), and π_ref as a
model for evaluation to sample from (`sampling_model`, loaded or copied lazily when no model
is held). Three implementations: a frozen model run online (`online.py`), the LoRA policy with
its adapter disabled (`adapter.py`), and log-probs computed once and cached on disk
(`cached.py`); `build_reference` (`build.py`) picks the one a run's config sections ask for.
`ReferenceSync` (`sync.py`) moves an online reference towards the policy during training
(TR-DPO, `reference.sync_every_n_steps`).
"""

from prefopt.reference.base import Reference, SamplingModel
from prefopt.reference.build import build_reference, build_sampling_model
from prefopt.reference.sync import ReferenceSync, build_reference_sync

__all__ = [
    "Reference",
    "ReferenceSync",
    "SamplingModel",
    "build_reference",
    "build_reference_sync",
    "build_sampling_model",
]
