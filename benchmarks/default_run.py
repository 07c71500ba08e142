"""Wall-clock time of the default `python -m prefopt.train`, with a cold and a warm toy cache.

    python benchmarks/default_run.py [--runs-dir /tmp/prefopt-bench] [extra overrides...]

Each run happens in a fresh working directory (its own mlflow.db and outputs/); the first run
builds the toy world into an empty cache, the second reuses it. Prints a table and the final
validation metrics read back from MLflow.
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


def timed_run(workdir: Path, cache: Path, overrides: list[str]) -> tuple[float, dict[str, float]]:
    workdir.mkdir(parents=True)
    env = {**os.environ, "PREFOPT_CACHE": str(cache)}
    start = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "prefopt.train", "trainer.enable_progress_bar=false", *overrides],
        cwd=workdir,
        env=env,
        check=True,
        stdout=subprocess.DEVNULL,
    )
    seconds = time.perf_counter() - start
    client = MlflowClient(tracking_uri=f"sqlite:///{workdir / 'mlflow.db'}")
    run = client.search_runs([client.get_experiment_by_name("prefopt").experiment_id])[0]
    return seconds, {k: v for k, v in run.data.metrics.items() if k.startswith("val/")}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs-dir", type=Path, default=None)
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    root = args.runs_dir or Path(tempfile.mkdtemp(prefix="prefopt-bench-"))
    cache = root / "cache"

    rows = []
    for label in ("cold", "warm"):
        seconds, metrics = timed_run(root / label, cache, args.overrides)
        rows.append((label, seconds, metrics))

    print(
        f"\n{'toy cache':<10} {'seconds':>8} {'val/rewards/accuracies':>23} {'val/rewards/margins':>20}"
    )
    for label, seconds, metrics in rows:
        print(
            f"{label:<10} {seconds:8.1f} {metrics.get('val/rewards/accuracies', float('nan')):23.3f} "
            f"{metrics.get('val/rewards/margins', float('nan')):20.3f}"
        )
    print(f"(cpu threads: {os.cpu_count()}, runs in {root})")


if __name__ == "__main__":
    main()
