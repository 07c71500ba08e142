"""The frozen reference policy π_ref: run online, or its log-probs computed once and cached.

The online reference is held outside the LightningModule's submodules on purpose: it is then
never in the optimizer, never in a checkpoint, never switched to train mode by Lightning, and
never touched by gradient clipping. It runs in eval mode under `inference_mode`.

The reference never changes, so its log-probs of every training and validation sequence can be
computed once, before training, and stored on disk (`ReferenceCache`). The cache key hashes
the reference checkpoint's files, the prepared data's key and the log-prob settings; a run whose key
matches (the next job of a β or lr sweep, say) never loads the reference model at all.
With several ranks, the first to take the cache's file lock computes it and the others wait
and read it (on one machine the launching rank computes it before the others even start).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from prefopt.files import atomic_write, cache_root, file_lock, hash_file
from prefopt.losses.base import CompletionLogps
from prefopt.model.logprobs import DEFAULT_CHUNK_SIZE
from prefopt.model.packing import PairPacking

log = logging.getLogger("prefopt.reference")

CACHE_FORMAT = 2
"""Bump when the way reference log-probs are computed changes: old caches then miss."""


class FrozenReference:
    def __init__(
        self,
        model: nn.Module,
        chunk_size: int | None = DEFAULT_CHUNK_SIZE,
        packing: PairPacking | None = None,
    ):
        model.eval()
        model.requires_grad_(False)
        self.model = model
        self.chunk_size = chunk_size
        self.packing = packing or PairPacking()
        """Paired batches only (off for KTO): shared prompts / padding-free rows."""
        self.forward_calls = 0
        """How many batches the reference has scored (lets tests and benchmarks count them)."""

    def logps(self, batch: dict[str, Tensor], split: str = "train") -> CompletionLogps:
        device = batch["input_ids"].device
        if next(self.model.parameters()).device != device:
            self.model.to(device)
        self.forward_calls += 1
        # inference_mode skips autograd's bookkeeping (version counters, views) that no_grad
        # keeps; the two small results are cloned out so the loss may use them under autograd.
        with torch.inference_mode():
            out = self.packing.logps(self.model, batch, self.chunk_size)
        return CompletionLogps(summed=out.summed.clone(), token_counts=out.token_counts.clone())


class CachedReference:
    """Reference log-probs looked up by (split, example index, row kind) instead of computed.

    `table[split]` is [n_examples, 2]: column 0 the first half of a batch's rows (chosen, or
    KTO's own completion), column 1 the second half (rejected, or KTO's mismatched pair).
    """

    def __init__(self, table: dict[str, Tensor], computed: int = 0):
        self.table = table
        self.model: nn.Module | None = None
        """A model that evaluation may sample π_ref from (LoRA: the policy with its adapter
        off); never run in training. None = evaluation makes its own copy."""
        self.forward_calls = 0
        """Reference forwards during training: always 0 here."""
        self.precompute_calls = computed
        """Batches the reference model scored to build this cache in this run (0 on a hit)."""

    def logps(self, batch: dict[str, Tensor], split: str = "train") -> CompletionLogps:
        index = batch["example_index"].cpu()
        values = self.table[split][index]  # [B, 2]
        summed = torch.cat([values[:, 0], values[:, 1]]).to(batch["input_ids"].device)
        return CompletionLogps(summed=summed, token_counts=batch["completion_mask"][:, 1:].sum(-1))


def prepare_reference(
    cfg, reference_path: str, datamodule, load_model, online=None, packing=None
) -> FrozenReference | CachedReference:
    """The reference for training: cached log-probs when `cfg.reference.cache` allows, else the
    model itself. On a cache miss the model is loaded once, scores all data, and is dropped.

    `online`: a reference already in memory, used instead of loading `reference_path` (LoRA:
    the policy with its adapter disabled, which scores exactly as the base checkpoint does).
    `packing`: how the reference model scores pairs (`PairPacking`), online and for the cache."""
    chunk_size = cfg.model.logits_chunk_size or None
    loaded = online

    def run_online():
        nonlocal loaded
        if loaded is None:
            loaded = FrozenReference(load_model(reference_path), chunk_size, packing)
        return loaded

    if not cfg.reference.cache:
        return run_online()
    checkpoint = local_checkpoint(reference_path)
    if checkpoint is None:
        # A hub id not downloaded yet: loading it fills the Hugging Face cache, whose snapshot
        # the cache key then hashes (the next job finds it there and loads nothing).
        run_online()
        checkpoint = local_checkpoint(reference_path)
    if checkpoint is None:
        log.info(
            "reference log-probs: %s has no local files to fingerprint; running it online",
            reference_path,
        )
        return run_online()
    settings = {
        "dtype": cfg.model.dtype,
        "paired": datamodule.paired,
        # KTO's mismatched rows depend on how examples are grouped into batches.
        "batching": None if datamodule.paired else [cfg.data.batch_size, cfg.data.seed],
    }
    key = cache_key(checkpoint_fingerprint(checkpoint), datamodule.fingerprint, settings)
    path = Path(cfg.reference.cache_dir or default_cache_dir()) / f"{key}.pt"
    cached = load_cache(path)
    if cached is None:
        with file_lock(path.with_suffix(".lock")):  # another rank may be computing it now
            cached = load_cache(path)
            if cached is None:
                cached = _compute_cache(run_online(), datamodule, path, reference_path)
    if online is not None:
        cached.model = getattr(online, "model", None)
    return cached


def _compute_cache(reference, datamodule, path: Path, reference_path: str) -> CachedReference:
    log.info("reference log-probs: no cache yet, computing them once for %s", reference_path)
    if torch.cuda.is_available():
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    else:
        device = torch.device("cpu")
    table = compute_table(reference, datamodule.reference_loaders(), device)
    save_cache(path, table)
    return CachedReference(table, computed=reference.forward_calls)


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


def load_cache(path: Path) -> CachedReference | None:
    if not path.is_file():
        return None
    table = torch.load(path, weights_only=True)
    log.info("reference log-probs: cache hit %s (the reference model is not loaded)", path)
    return CachedReference(table)


@torch.no_grad()
def compute_table(
    reference: FrozenReference, loaders: dict[str, object], device: torch.device
) -> dict[str, Tensor]:
    """Score every example of each split's (unshuffled) loader once, with a progress bar."""
    table = {}
    for split, loader in loaders.items():
        n = len(loader.dataset) if hasattr(loader, "dataset") else 0
        values = torch.full((n, 2), float("nan"))
        for batch in tqdm(loader, desc=f"reference log-probs ({split})", leave=False):
            batch = {k: v.to(device) for k, v in batch.items()}
            half = batch["input_ids"].shape[0] // 2
            first, second = reference.logps(batch).split(half)
            index = batch["example_index"].cpu()
            values[index, 0] = first.summed.float().cpu()
            values[index, 1] = second.summed.float().cpu()
        if values.isnan().any():
            raise RuntimeError(f"reference cache: some {split} examples were never scored")
        table[split] = values
    return table


def save_cache(path: Path, table: dict[str, Tensor]) -> None:
    """Write atomically: a killed job leaves no half-written cache behind."""
    atomic_write(path, lambda handle: torch.save(table, handle))
    log.info("reference log-probs cached in %s", path)
