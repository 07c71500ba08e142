"""How well a reward model learns the default toy world's true reward from its noisy labels.

    python benchmarks/reward_model.py [--runs-dir /tmp/prefopt-reward] [extra overrides...]

The table goes to `docs/results/reward_model.md` (one section per set of overrides), the
figures the reward-model page quotes.

Runs `python -m prefopt.train task=reward` (the default toy world, its cached build reused) in a
fresh working directory and prints, from the run's MLflow metrics, the reward model's agreement
with the TRUE reward on the held-out test pairs beside its agreement with the training labels,
and how often those labels agree with the true reward (the toy world's label noise: about 82%).
Target (issue 31): at least 75% agreement with the true reward on the test pairs.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from mlflow.tracking import MlflowClient
from results_file import load_average, parse_with_overrides, section_key, write

ROWS = [
    ("test/true_agreement", "model vs true reward, held-out test pairs"),
    ("train/true_agreement", "model vs true reward, training pairs"),
    ("train/label_agreement", "model vs training labels"),
    ("train/labels_true_agreement", "training labels vs true reward"),
    ("val/accuracy", "model vs validation pairs (ordered by the true reward)"),
    ("val/loss", "validation Bradley–Terry loss"),
    ("val/calibration_error", "validation calibration error (ECE)"),
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs-dir", type=Path, default=None)
    parser.add_argument("overrides", nargs="*", help="Hydra overrides of the reward run")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = parse_with_overrides(build_parser(), argv)
    workdir = args.runs_dir or Path(tempfile.mkdtemp(prefix="prefopt-reward-"))
    workdir.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "prefopt.train", "task=reward",
               "trainer.enable_progress_bar=false", *args.overrides]  # fmt: skip
    load = load_average()
    start = time.perf_counter()
    subprocess.run(command, cwd=workdir, env=os.environ, check=True, stdout=subprocess.DEVNULL)
    seconds = time.perf_counter() - start
    client = MlflowClient(tracking_uri=f"sqlite:///{workdir / 'mlflow.db'}")
    run = client.search_runs([client.get_experiment_by_name("prefopt").experiment_id])[0]
    metrics = run.data.metrics
    rows = ["| metric | value | what |", "| --- | --- | --- |"]
    rows += [f"| `{key}` | {metrics.get(key, float('nan')):.3f} | {what} |" for key, what in ROWS]
    target = metrics.get("test/true_agreement", 0.0) >= 0.75
    body = "\n".join(rows) + (
        f"\n\nTarget (`test/true_agreement` ≥ 0.75): {'met' if target else 'NOT met'}."
    )
    print("\n" + body)
    print(f"export: {run.data.tags.get('prefopt.export_dir')}")
    heading = " ".join(args.overrides) or "the default toy world"
    write("reward_model", "Reward model figures", section_key(args.overrides), heading, body,
          seconds, load)  # fmt: skip


if __name__ == "__main__":
    main()
