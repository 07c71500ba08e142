"""The reward–KL frontier on the toy world: `python -m prefopt.train sweep=frontier` (4 methods
× 5 β), whose parent run's summary/frontier.csv becomes the table of docs/results/frontier.md
and whose summary/frontier.png becomes docs/img/frontier.png (docs/frontier.md).

    python benchmarks/frontier.py [--work DIR] [--from-sweep MULTIRUN_DIR]
                                  [--results FILE | --no-results] [--image FILE]
                                  [extra overrides...]

The sweep runs in DIR (its multirun/ folder and mlflow.db land there; the toy world comes from
the usual cache), its jobs one after the other with OMP_NUM_THREADS=1: the toy model's tensors
are tiny, and a second thread per job only waits on the first. `--from-sweep` reads a sweep
already run instead of running one (the wall time is then that of reading it).
"""

from __future__ import annotations

import argparse
import csv
import shutil
import tempfile
import time
from pathlib import Path

from results_file import load_average, parse_with_overrides, section_key, write
from sweep_bench import run_sweep, sweep_parser

IMAGE = Path(__file__).resolve().parents[1] / "docs" / "img" / "frontier.png"
# frontier.csv's columns, as the table shows them.
COLUMNS = [
    ("method", "method"),
    ("β", "β"),
    ("KL (sequence)", "KL(π ‖ π_ref) per sequence"),
    ("true reward", "true reward"),
    ("true win rate", "true win rate vs π_ref"),
]


def table(sweep_dir: Path) -> list[str]:
    with open(sweep_dir / "summary" / "frontier.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    lines = ["| " + " | ".join(name for _, name in COLUMNS) + " |",
             "| --- |" + " --- |" * (len(COLUMNS) - 1)]  # fmt: skip
    for row in rows:
        cells = [row[key] for key, _ in COLUMNS]
        cells[0] = f"`{cells[0]}`"
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def build_parser() -> argparse.ArgumentParser:
    parser = sweep_parser(__doc__)
    parser.add_argument("--image", type=Path, default=IMAGE, help="where frontier.png goes")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = parse_with_overrides(build_parser(), argv)
    start, load = time.perf_counter(), load_average()
    work = (args.work or Path(tempfile.mkdtemp(prefix="prefopt-frontier-"))).resolve()
    sweep_dir = args.from_sweep or run_sweep(
        work, ["sweep=frontier", *args.overrides], "frontier.csv", env={"OMP_NUM_THREADS": "1"}
    )
    wall_s = time.perf_counter() - start
    lines = table(sweep_dir)
    print("\n".join(lines))
    if args.no_results:
        return
    args.image.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(sweep_dir / "summary" / "frontier.png", args.image)
    print(f"figure copied to {args.image}")
    run = " ".join(["python -m prefopt.train sweep=frontier", *args.overrides])
    body = (
        f"`{run}` with `OMP_NUM_THREADS=1`, its jobs one after the other, seed 0. Each row is "
        "one job's final evaluation: its policy and the reference each complete the 200 "
        "held-out prompts once at temperature 1, the KL is the sequence-level "
        "log π(y|x) − log π_ref(y|x) of the policy's samples, the reward and the win rate "
        "against the reference's samples are the toy world's true ones.\n\n" + "\n".join(lines)
    )
    write(
        "frontier", "The reward–KL frontier on the toy world", section_key(args.overrides),
        f"`{run}`", body, wall_s, load, args.results,
    )  # fmt: skip


if __name__ == "__main__":
    main()
