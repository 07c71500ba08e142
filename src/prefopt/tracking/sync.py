"""Upload what a run wrote locally while its MLflow tracking server was unreachable.

    python -m prefopt.sync <run output dir | mlflow_offline.jsonl> [--tracking-uri URI]

Replays every buffered call (metrics, params, tags, texts, tables, the final status) in order
into the tracking URI the run used (or `--tracking-uri`), then renames the file to
`mlflow_offline.synced.jsonl` so that a second sync uploads nothing twice.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient

from prefopt.tracking.offline import OFFLINE_FILE


def _entities(kwargs: dict) -> dict:
    out = dict(kwargs)
    for key, cls in (("metrics", Metric), ("params", Param), ("tags", RunTag)):
        if key in out and out[key]:
            out[key] = [cls(**item) for item in out[key]]
    return out


def sync(path: str | Path, tracking_uri: str | None = None) -> int:
    """Replay the buffer at `path` (a file, or the folder holding it); returns the call count."""
    path = Path(path)
    if path.is_dir():
        path = path / OFFLINE_FILE
    lines = path.read_text().splitlines()
    header, entries = json.loads(lines[0]), [json.loads(line) for line in lines[1:] if line]
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
