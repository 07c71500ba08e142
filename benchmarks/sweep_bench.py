"""What the benchmarks that run one ready sweep share (`frontier.py`, `loss_table.py`): their
command-line options, and running the sweep in a working folder to find its summary."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path


def sweep_parser(doc: str | None) -> argparse.ArgumentParser:
    """--work, --from-sweep, --results, --no-results and the Hydra overrides of every job."""
    parser = argparse.ArgumentParser(
        description=doc, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--work", type=Path, default=None, help="where the sweep runs (a tmp dir)")
    parser.add_argument("--from-sweep", type=Path, default=None, help="a sweep's multirun folder")
    parser.add_argument("--results", type=Path, default=None, help="default: docs/results/")
    parser.add_argument("--no-results", action="store_true", help="print only")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides for every job")
    return parser


def run_sweep(work: Path, words: list[str], summary_file: str, env: dict | None = None) -> Path:
    """`python -m prefopt.train <words>` in `work`; the multirun folder whose summary/ holds
    `summary_file` (the newest, should `work` hold earlier sweeps)."""
    work.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "prefopt.train", "trainer.enable_progress_bar=false", *words]
    env = {**os.environ, **(env or {})}
    subprocess.run(cmd, cwd=work, check=True, env=env, stdout=subprocess.DEVNULL)
    found = work.glob(f"multirun/*/*/summary/{summary_file}")
    found = sorted(found, key=lambda p: p.stat().st_mtime)
    if not found:
        raise SystemExit(f"the sweep in {work} wrote no summary/{summary_file}")
    return found[-1].parent.parent
