"""Every loss at its defaults on the toy world: `python -m prefopt.train sweep=losses`, whose
summary becomes the table of docs/results/loss_table.md.

    python benchmarks/loss_table.py [--work DIR] [--from-sweep MULTIRUN_DIR]
                                    [--jobs N] [--results FILE | --no-results]
                                    [extra overrides...]

The sweep runs in DIR (its multirun/ folder and mlflow.db land there; the toy world comes from
the usual cache). Each job is one epoch of the default toy world with that loss's defaults; the
table gives the final validation reward accuracy, the ground-truth win rate against π_ref and
the KL to π_ref per sequence over the last evaluation's prompts. `--from-sweep` reads a sweep
already run (its `summary/summary.csv`) instead of running one.
"""

from __future__ import annotations

import argparse
import csv
import math
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from results_file import load_average, parse_with_overrides, section_key, write

COLUMNS = [
    ("val/rewards/accuracies", "val reward accuracy", 3),
    ("eval/win_rate_vs_ref", "ground-truth win rate vs π_ref", 3),
    ("eval/kl_seq", "KL(π ‖ π_ref) per sequence", 2),
]


def run_sweep(work: Path, overrides: list[str], jobs: int) -> Path:
    """Run the sweep in `work`; the folder of its summary."""
    work.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "prefopt.train", "sweep=losses"]
    cmd += ["trainer.enable_progress_bar=false", "export=false", *overrides]
    if jobs > 1:  # each job keeps its own threads: the figures do not depend on it
        cmd += ["hydra/launcher=joblib", f"hydra.launcher.n_jobs={jobs}"]
    subprocess.run(cmd, cwd=work, check=True, stdout=subprocess.DEVNULL)
    summaries = sorted(
        work.glob("multirun/*/*/summary/summary.csv"), key=lambda p: p.stat().st_mtime
    )
    if not summaries:
        raise SystemExit(f"the sweep in {work} wrote no summary/summary.csv")
    return summaries[-1].parent.parent


def number(text: str, digits: int) -> str:
    try:
        value = float(text)
    except (TypeError, ValueError):
        return "—"
    return "—" if math.isnan(value) else f"{value:.{digits}f}"


def table(sweep_dir: Path) -> list[str]:
    with open(sweep_dir / "summary" / "summary.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    lines = ["| `loss=` | " + " | ".join(name for _, name, _ in COLUMNS) + " |",
             "| --- |" + " --- |" * len(COLUMNS)]  # fmt: skip
    for row in rows:
        cells = " | ".join(number(row.get(key), digits) for key, _, digits in COLUMNS)
        name = row.get("loss") or row["run_name"].split()[0]  # the swept group's column
        lines.append(f"| `{name}` | {cells} |")
    return lines


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--work", type=Path, default=None, help="where the sweep runs (a tmp dir)")
    parser.add_argument("--jobs", type=int, default=1, help="jobs at once (joblib launcher)")
    parser.add_argument("--from-sweep", type=Path, default=None, help="a sweep's multirun folder")
    parser.add_argument("--results", type=Path, default=None, help="default: docs/results/")
    parser.add_argument("--no-results", action="store_true", help="print only")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides for every job")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = parse_with_overrides(build_parser(), argv)
    start, load = time.perf_counter(), load_average()
    sweep_dir = args.from_sweep or run_sweep(
        (args.work or Path(tempfile.mkdtemp(prefix="prefopt-losses-"))).resolve(),
        args.overrides,
        args.jobs,
    )
    lines = table(sweep_dir)
    print("\n".join(lines))
    if args.no_results:
        return
    run = " ".join(["python -m prefopt.train sweep=losses", *args.overrides])
    body = (
        f"`{run}`: one epoch of the default toy world per loss, each at its defaults, seed 0; "
        "the win rate and KL are over the evaluation prompts of the last evaluation (the toy "
        "world's ground-truth reward judges the policy's sample against the reference's). KTO "
        "has no reward accuracy: it trains on unpaired examples.\n\n" + "\n".join(lines)
    )
    write(
        "loss_table", "Every loss on the toy world", section_key(args.overrides), f"`{run}`",
        body, time.perf_counter() - start, load, args.results,
    )  # fmt: skip


if __name__ == "__main__":
    main()
