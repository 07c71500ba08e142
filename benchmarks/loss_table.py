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
import tempfile
import time
from pathlib import Path

from results_file import load_average, parse_with_overrides, section_key, write
from sweep_bench import run_sweep, sweep_parser

COLUMNS = [
    ("val/rewards/accuracies", "val reward accuracy", 3),
    ("eval/win_rate_vs_ref", "ground-truth win rate vs π_ref", 3),
    ("eval/kl_seq", "KL(π ‖ π_ref) per sequence", 2),
]


def run_losses_sweep(work: Path, overrides: list[str], jobs: int) -> Path:
    """Run the sweep in `work`; the folder of its summary."""
    words = ["sweep=losses", "export=false", *overrides]
    if jobs > 1:  # each job keeps its own threads: the figures do not depend on it
        words += ["hydra/launcher=joblib", f"hydra.launcher.n_jobs={jobs}"]
    return run_sweep(work, words, "summary.csv")


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
    parser = sweep_parser(__doc__)
    parser.add_argument("--jobs", type=int, default=1, help="jobs at once (joblib launcher)")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = parse_with_overrides(build_parser(), argv)
    start, load = time.perf_counter(), load_average()
    sweep_dir = args.from_sweep or run_losses_sweep(
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
