"""Files that many processes write and read: the cache root, atomic replacement, an exclusive
lock, and content hashes for cache keys."""

from __future__ import annotations

import hashlib
import os
from contextlib import contextmanager
from pathlib import Path


def cache_root() -> Path:
    """Where prefopt keeps what it builds once (toy world, prepared data, reference log-probs):
    `$PREFOPT_CACHE`, else `~/.cache/prefopt`. Each user of it adds its own subfolder."""
    root = os.environ.get("PREFOPT_CACHE")
    return Path(root).expanduser() if root else Path.home() / ".cache" / "prefopt"


def atomic_write(path: Path, write) -> None:
    """`write(handle)` into a temporary file next to `path`, fsync, then rename over `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)  # the rename itself survives a power cut
    finally:
        os.close(directory)


@contextmanager
def file_lock(path: Path):
    """An exclusive lock between processes (ranks, parallel sweep jobs) on one file system."""
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def hash_file(path: str | Path, digest=None):
    """`digest` (a fresh 16-byte blake2b by default) updated with the file's content, read in
    4 MB blocks: cache keys hash data files and checkpoints by content, not timestamps."""
    digest = digest if digest is not None else hashlib.blake2b(digest_size=16)
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    return digest
