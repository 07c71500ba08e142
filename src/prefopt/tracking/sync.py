"""Upload what a run wrote locally while its MLflow tracking server was unreachable.

    python -m prefopt.sync <run output dir | mlflow_offline.jsonl> [--tracking-uri URI]

Replays every buffered call (metrics, params, tags, texts, tables, the final status) in order
into the tracking URI the run used (or `--tracking-uri`), then renames the file to
`mlflow_offline.synced.jsonl` so that a second sync uploads nothing twice.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient

from prefopt.errors import PrefoptError
from prefopt.tracking.offline import OFFLINE_FILE

log = logging.getLogger("prefopt.sync")


def _entities(kwargs: dict) -> dict:
    out = dict(kwargs)
    for key, cls in (("metrics", Metric), ("params", Param), ("tags", RunTag)):
        if key in out and out[key]:
            out[key] = [cls(**item) for item in out[key]]
    return out


def read_buffer(path: Path) -> list[dict]:
    """The buffer's lines as JSON. A last line cut short (the run was killed while writing it)
    is skipped with a warning: it never reached MLflow, and the lines before it are whole."""
    lines = [line for line in path.read_text().splitlines() if line]
    parsed = []
    for number, line in enumerate(lines, start=1):
        try:
            parsed.append(json.loads(line))
        except json.JSONDecodeError:
            if number == len(lines) and number > 1:
                log.warning("%s: line %d is cut short (a killed run); skipped", path, number)
                continue
            raise PrefoptError(
                f"{path}: line {number} is not JSON; this file is written by prefopt's offline "
                "buffer: restore it from a backup, or remove the line to sync the rest"
            ) from None
    if not parsed:
        raise PrefoptError(f"{path}: empty; nothing to sync")
    return parsed


def sync(path: str | Path, tracking_uri: str | None = None) -> int:
    """Replay the buffer at `path` (a file, or the folder holding it); returns the call count."""
    path = Path(path)
    if path.is_dir():
        path = path / OFFLINE_FILE
    header, *entries = read_buffer(path)
    client = MlflowClient(tracking_uri=tracking_uri or header["tracking_uri"])
    for entry in entries:
        method, args, kwargs = entry["method"], entry["args"], entry["kwargs"]
        if method == "log_batch":
            if len(args) > 1:  # positional metrics/params/tags
                names = ("metrics", "params", "tags")
                kwargs = {**dict(zip(names, args[1:])), **kwargs}
                args = args[:1]
            kwargs = _entities(kwargs)
        getattr(client, method)(*args, **kwargs)
    path.rename(path.with_name(path.stem + ".synced.jsonl"))
    return len(entries)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m prefopt.sync", description=__doc__)
    parser.add_argument("path", help="a run's output folder, or its mlflow_offline.jsonl")
    parser.add_argument("--tracking-uri", default=None, help="default: the one the run used")
    args = parser.parse_args(argv)
    try:
        count = sync(args.path, args.tracking_uri)
    except FileNotFoundError as error:
        print(f"prefopt.sync: error: {error}", file=sys.stderr)
        return 2
    print(f"uploaded {count} buffered MLflow calls from {args.path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
