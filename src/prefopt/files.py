"""Files that many processes write and read: the cache root, atomic replacement, an exclusive
lock, content hashes for cache keys, and the checks that make a cache trustworthy.

A cache folder is *sealed* once complete: every file is fsynced and `manifest.json` (each
file's size and hash) is written last, atomically. A reader checks the seal before use; a
folder that fails it is moved aside (`<name>.corrupt-<time>`) with a one-line warning and
rebuilt. A full disk (ENOSPC, EDQUOT) at a writer becomes a one-line `PrefoptError` naming the
path and the bytes needed.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import shutil
import time
from contextlib import contextmanager
from pathlib import Path

from prefopt.errors import PrefoptError

log = logging.getLogger("prefopt.files")

MANIFEST = "manifest.json"
DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)


def cache_root() -> Path:
    """Where prefopt keeps what it builds once (toy world, prepared data, reference log-probs):
    `$PREFOPT_CACHE`, else `~/.cache/prefopt`. Each user of it adds its own subfolder."""
    root = os.environ.get("PREFOPT_CACHE")
    return Path(root).expanduser() if root else Path.home() / ".cache" / "prefopt"


def atomic_write(path: Path, write, keep_previous: Path | None = None, hint: str = "") -> None:
    """`write(handle)` into a temporary file next to `path`, fsync, then rename over `path`.
    `keep_previous`: the file `path` held moves there first (a kill between the two renames
    leaves it whole). A full disk leaves `path` as it was and raises a `PrefoptError` with the
    bytes needed (`hint`: where else to write it)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        if keep_previous is not None and path.exists():
            os.replace(path, keep_previous)
        os.replace(tmp, path)
    except Exception as error:
        reason = disk_full_reason(error)
        if reason is None:
            raise
        tmp.unlink(missing_ok=True)  # its bytes count as free space in the message
        raise disk_full_error(path, _bytes_written_by(write), hint, reason=reason) from None
    finally:
        tmp.unlink(missing_ok=True)
    fsync_dir(path.parent)  # the renames themselves survive a power cut


def fsync_dir(folder: Path) -> None:
    directory = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(directory)
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


# ---------------------------------------------------------------------------------------------
# Sealed folders: complete, fsynced, and checked by content before use


def seal(folder: Path) -> None:
    """Fsync every file under `folder`, then write its manifest (size and hash per file) last,
    atomically: a folder with a manifest that matches its files was written completely."""
    manifest = {}
    for file in sorted(p for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST):
        with open(file, "rb") as handle:
            os.fsync(handle.fileno())
        manifest[file.relative_to(folder).as_posix()] = [
            file.stat().st_size,
            hash_file(file).hexdigest(),
        ]
    text = json.dumps({"files": manifest}, indent=1).encode()
    atomic_write(folder / MANIFEST, lambda handle: handle.write(text))
    for sub in sorted({p.parent for p in folder.rglob("*")}, reverse=True):
        fsync_dir(sub)


def seal_problem(folder: Path) -> str | None:
    """Why `folder` cannot be trusted (missing manifest, a file missing, cut short or changed),
    or None when every file matches the manifest written when it was sealed."""
    try:
        files = json.loads((folder / MANIFEST).read_text())["files"]
    except FileNotFoundError:
        return f"no {MANIFEST} (written last when complete)"
    except (OSError, ValueError, KeyError, TypeError) as error:
        return f"unreadable {MANIFEST} ({type(error).__name__})"
    if not isinstance(files, dict):
        return f"unreadable {MANIFEST}"
    for name, (size, digest) in files.items():
        file = folder / name
        if not file.is_file():
            return f"{name} is missing"
        if file.stat().st_size != size:
            return f"{name} has {file.stat().st_size} bytes, {size} were written"
        if hash_file(file).hexdigest() != digest:
            return f"{name} does not match its hash (changed after it was written)"
    return None


def set_aside(path: Path, problem: str, inode: int | None = None) -> Path | None:
    """Rename a corrupt cache entry to `<name>.corrupt-<time>` with a one-line warning, so
    that it is rebuilt and can still be inspected. `inode`: the entry that was found corrupt;
    when another process has replaced it meanwhile, it is left alone (None is returned)."""
    try:
        if inode is not None and path.stat().st_ino != inode:
            return None
        aside = path.with_name(f"{path.name}.corrupt-{time.strftime('%Y%m%dT%H%M%S')}")
        aside = aside if not aside.exists() else aside.with_name(f"{aside.name}-{os.getpid()}")
        os.rename(path, aside)
    except FileNotFoundError:  # another process set it aside first
        return None
    log.warning("%s is corrupt (%s): moved aside to %s and rebuilt", path, problem, aside.name)
    return aside


# ---------------------------------------------------------------------------------------------
# A full disk


def is_disk_full(error: BaseException) -> bool:
    """Whether `error`, or an error it was raised from, is ENOSPC or EDQUOT."""
    return disk_full_reason(error) is not None


def disk_full_reason(error: BaseException) -> str | None:
    """The errno's name when `error`, or an error it was raised from, is ENOSPC or EDQUOT
    (libraries such as torch and pyarrow re-raise the OS error as their own type, keeping
    its text); else None."""
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, PrefoptError):
            return None
        for code in DISK_FULL_ERRNOS:
            if getattr(error, "errno", None) == code or os.strerror(code) in str(error):
                return "EDQUOT: the quota is used up" if code == errno.EDQUOT else "ENOSPC"
        error = error.__cause__ or error.__context__
    return None


def disk_full_error(
    path: Path, needed: int | None, hint: str = "", at_least: bool = False, reason="ENOSPC"
) -> PrefoptError:
    """The one line for a write to `path` that found the disk full: bytes needed and free.
    `at_least`: `needed` is what was written before the disk filled, not the whole size."""
    free = _free_bytes(path)
    if needed:
        need = f"needs {'more than ' if at_least else ''}{needed:,} bytes"
    else:
        need = "needs more space"
    have = f", {free:,} free there" if free is not None else ""
    return PrefoptError(
        f"{path}: the disk is full ({reason}): it {need}{have}; nothing was left half-written. "
        f"Free space, or {hint or 'write it to a larger disk'}"
    )


@contextmanager
def reported_disk_full(path: Path, needed=None, hint: str = "", at_least: bool = False):
    """A full disk inside becomes `disk_full_error(path, needed())`; `needed` may be a number
    or a function called only then (e.g. a folder's size, or the bytes of a model)."""
    try:
        yield
    except Exception as error:
        reason = disk_full_reason(error)
        if reason is None:
            raise
        needed = needed() if callable(needed) else needed
        raise disk_full_error(path, needed, hint, at_least, reason) from None


def folder_bytes(folder: Path) -> int:
    """The bytes of the files under `folder` (0 if it does not exist)."""
    if not folder.exists():
        return 0
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def _free_bytes(path: Path) -> int | None:
    for folder in (path, *path.parents):
        if folder.exists():
            stats = os.statvfs(folder)
            return stats.f_bavail * stats.f_frsize
    return None


class _ByteCounter:
    """A file-like sink that only counts what is written to it."""

    def __init__(self):
        self.count = 0

    def write(self, data) -> int:
        self.count += len(memoryview(data).cast("B"))
        return len(data)

    def flush(self) -> None:
        pass


def _bytes_written_by(write) -> int | None:
    """How many bytes `write(handle)` writes, measured by running it again into a counter."""
    counter = _ByteCounter()
    try:
        write(counter)
    except Exception:
        return None
    return counter.count


@contextmanager
def staged_folder(folder: Path, hint: str = ""):
    """Yield a fresh staging path next to `folder` to build into; on success it is sealed and
    renamed to `folder` (which must not exist): readers see all or nothing, checked by content.
    A failure (a kill, a full disk) leaves no `folder`; the staging folder is removed."""
    staging = folder.with_name(f".{folder.name}.{os.getpid()}.tmp")
    shutil.rmtree(staging, ignore_errors=True)
    try:
        with reported_disk_full(folder, lambda: folder_bytes(staging), hint, at_least=True):
            yield staging
            seal(staging)
            os.replace(staging, folder)
            fsync_dir(folder.parent)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


@contextmanager
def replaced_folder(folder: Path, needed: int | None = None, hint: str = ""):
    """Yield a staging path next to `folder` to write into; on success its files are fsynced
    and it replaces `folder` (an older one is renamed away first, then removed). A kill leaves
    the old `folder` or none, never a half-written one; a full disk is a one-line error."""
    staging = folder.with_name(f".{folder.name}.{os.getpid()}.tmp")
    old = folder.with_name(f".{folder.name}.{os.getpid()}.old")
    for leftover in (staging, old):
        shutil.rmtree(leftover, ignore_errors=True)
    staging.parent.mkdir(parents=True, exist_ok=True)
    try:
        with reported_disk_full(folder, needed, hint):
            yield staging
            for file in (p for p in staging.rglob("*") if p.is_file()):
                with open(file, "rb") as handle:
                    os.fsync(handle.fileno())
            if folder.exists():
                os.rename(folder, old)
            os.rename(staging, folder)
            fsync_dir(folder.parent)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)
