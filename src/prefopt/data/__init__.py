"""Preference data, from raw rows to batches: `sources` finds the rows (`local_files`, hub
datasets, the toy world) as Arrow tables (`rows`); `formats` is the registry of row layouts
(`layouts` reads each one); `prepare` maps the rows in batches (`batch_job`) through `tokenize`
(pairs) or `unpaired` (KTO examples) and keeps the result in a cache (`cache`); `datamodule`
serves it (`examples`, `order`) as batches for one concatenated forward (`collate`, `packing`).
`python -m prefopt.data.check` (`check`) prepares a config's data and prints its profile
(`summary`) without training.
"""

from prefopt.data.collate import collate_pairs
from prefopt.data.datamodule import PreferenceDataModule

__all__ = ["PreferenceDataModule", "collate_pairs"]
