"""Paired-preference data: load rows, normalise their layout, tokenize, batch.

sources -> formats -> tokenize -> collate, assembled by `PreferenceDataModule`.
"""

from prefopt.data.collate import collate_pairs
from prefopt.data.datamodule import PreferenceDataModule

__all__ = ["PreferenceDataModule", "collate_pairs"]
