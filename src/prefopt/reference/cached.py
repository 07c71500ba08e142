"""`CachedReference`: the reference's log-probs computed once, stored on disk, looked up.

The reference never changes, so its log-probs of every training and validation sequence can be
computed once, before training, and stored on disk. The cache key hashes the reference
checkpoint's files, the prepared data's key and the log-prob settings, the training precision
among them (the table is computed under it, `precision.py`); a run whose key matches
(the next job of a β or lr sweep, say) never loads the reference model at all. With several
ranks, the first to take the cache's file lock computes it and the others wait and read it (on
one machine the launching rank computes it before the others even start).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor

from prefopt.files import atomic_write, cache_root, file_lock, hash_file, set_aside
from prefopt.losses.base import CompletionLogps
from prefopt.reference.base import Reference, SamplingModel
from prefopt.reference.precision import precision_plugin

log = logging.getLogger("prefopt.reference")

CACHE_FORMAT = 4
"""Bump when the way reference log-probs are computed or stored changes: old caches then miss.
(3: the file holds the table with its own content hash; 4: computed under the training
precision, which the key holds.)"""


class CachedReference:
    """Reference log-probs looked up by (split, example index, row kind) instead of computed.

    `table[split]` is [n_examples, 2]: column 0 the first half of a batch's rows (chosen, or
    KTO's own completion), column 1 the second half (rejected, or KTO's mismatched pair).
    """

    def __init__(
        self,
        table: dict[str, Tensor],
        sampling_model: SamplingModel | None = None,
        computed: int = 0,
    ):
        self.table = table
        self.sampling_model = sampling_model or SamplingModel()
        """π_ref as a model, for evaluation only: never run in training (default: a copy of
        the initial policy)."""
        self.forward_calls = 0
        """Reference forwards during training: always 0 here."""
        self.precompute_calls = computed
        """Batches the reference model scored to build this cache in this run (0 on a hit)."""

    def logps(
        self, batch: dict[str, Tensor], split: str = "train", shared_prefix: bool = False
    ) -> CompletionLogps:
        if shared_prefix:  # the table holds whole-completion sums only
            raise ValueError("cached reference log-probs have no shared-prefix sums (LD-DPO)")
        index = batch["example_index"].cpu()
        values = self.table[split][index]  # [B, 2]
        summed = torch.cat([values[:, 0], values[:, 1]]).to(batch["input_ids"].device)
        return CompletionLogps(summed=summed, token_counts=batch["completion_mask"][:, 1:].sum(-1))

    def logps_table(self, loaders: dict[str, object], device: torch.device) -> dict[str, Tensor]:
        return {split: self.table[split] for split in loaders}


def load_or_compute(
    path: Path,
    reference_path: str,
    scorer: Callable[[], Reference],
    loaders: Callable[[], dict[str, object]],
    sampling_model: SamplingModel,
    precision="32-true",
) -> CachedReference:
    """The cache at `path`, computed first when missing: `scorer()` gives the reference (of
    checkpoint `reference_path`) that scores every example of `loaders()` under the forward
    context of `precision` (`trainer.precision`: the log-probs the reference would give
    online during training); both are called only on a miss, so a hit loads no model."""
    table = load_cache(path)
    computed = 0
    if table is None:
        with file_lock(path.with_suffix(".lock")):  # another rank may be computing it now
            table = load_cache(path)
            if table is None:
                log.info(
                    "reference log-probs: no cache yet, computing them once for %s",
                    reference_path,
                )
                reference = scorer()
                device = _device()
                with precision_plugin(precision, device).forward_context():
                    table = reference.logps_table(loaders(), device)
                save_cache(path, table)
                computed = reference.forward_calls
    return CachedReference(table, sampling_model, computed)


def _device() -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device("cpu")


def local_checkpoint(path: str) -> Path | None:
    """The folder holding checkpoint `path`'s files: `path` itself when it is a local folder,
    else, for a hub id, its snapshot in the Hugging Face cache once the weights are there.
    None when neither exists (nothing is downloaded here)."""
    if Path(path).is_dir():
        return Path(path)
    from huggingface_hub import snapshot_download

    try:
        snapshot = Path(snapshot_download(path, local_files_only=True))
    except (OSError, ValueError):  # not in the cache, or not a valid hub id: nothing to hash
        return None
    return snapshot if _has_all_weights(snapshot) else None


def _has_all_weights(folder: Path) -> bool:
    """config.json and every weight shard present (a snapshot may hold only the tokenizer)."""
    if not (folder / "config.json").is_file():
        return False
    for index in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        if (folder / index).is_file():
            shards = set(json.loads((folder / index).read_text())["weight_map"].values())
            return all((folder / shard).is_file() for shard in shards)
    return any((folder / name).is_file() for name in ("model.safetensors", "pytorch_model.bin"))


def checkpoint_fingerprint(path: str | Path) -> str:
    """Hash of a checkpoint directory's weight and config files (content, not timestamps)."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"reference checkpoint {path} is not a local directory")
    digest = hashlib.blake2b(digest_size=16)
    files = sorted(
        p
        for p in path.iterdir()
        if p.suffix in (".safetensors", ".bin", ".json") and p.name != "generation_config.json"
    )
    for file in files:
        digest.update(file.name.encode())
        hash_file(file, digest)
    return digest.hexdigest()


def cache_key(fingerprint: str, data_fingerprint: str, settings: dict) -> str:
    """One key for the reference weights, the tokenized data (the prepared data's own key,
    which changes whenever any token id could) and the settings that matter."""
    text = json.dumps(
        {"format": CACHE_FORMAT, "reference": fingerprint, "data": data_fingerprint, **settings},
        sort_keys=True,
    )
    return hashlib.blake2b(text.encode(), digest_size=16).hexdigest()


def default_cache_dir() -> Path:
    return cache_root() / "reference"


def load_cache(path: Path) -> dict[str, Tensor] | None:
    """The cached table at `path`, or None when there is none yet. A file that cannot be read
    or does not match its content hash (cut short, overwritten) is moved aside with a one-line
    warning and None is returned: the table is computed again."""
    try:
        inode = path.stat().st_ino
    except FileNotFoundError:
        return None
    table, problem = read_cache(path)
    if problem:
        set_aside(path, problem, inode)
        return None
    log.info("reference log-probs: cache hit %s (the reference model is not loaded)", path)
    return table


def read_cache(path: Path) -> tuple[dict[str, Tensor] | None, str | None]:
    """(the table, None) when the file at `path` is whole and matches its hash, else (None,
    why not); nothing is moved."""
    try:
        stored = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # whatever a damaged file makes torch raise: rebuild it
        return None, f"unreadable: {type(error).__name__}: {str(error).splitlines()[0][:120]}"
    if not isinstance(stored, dict) or set(stored) != {"table", "digest"}:
        return None, "not a reference log-prob table"
    table = stored["table"]
    if not isinstance(table, dict) or not all(isinstance(t, Tensor) for t in table.values()):
        return None, "not a reference log-prob table"
    if table_digest(table) != stored["digest"]:
        return None, "its values do not match their hash (changed after it was written)"
    return table, None


def table_digest(table: dict[str, Tensor]) -> str:
    """A hash of every split's name, shape, dtype and values."""
    digest = hashlib.blake2b(digest_size=16)
    for split in sorted(table):
        values = table[split].detach().cpu().contiguous()
        digest.update(f"{split}:{tuple(values.shape)}:{values.dtype}".encode())
        digest.update(values.view(torch.uint8).numpy().tobytes() if values.numel() else b"")
    return digest.hexdigest()


def save_cache(path: Path, table: dict[str, Tensor]) -> None:
    """Write atomically with the table's hash: a killed job leaves no half-written cache
    behind, and a file damaged later is recognised (`load_cache`)."""
    stored = {"table": table, "digest": table_digest(table)}
    atomic_write(path, lambda handle: torch.save(stored, handle))
    log.info("reference log-probs cached in %s", path)
