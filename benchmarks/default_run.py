"""Wall-clock time and final metrics of the default `python -m prefopt.train`, with a cold and a
warm toy cache, under each family of CPU kernels asked for.

    python benchmarks/default_run.py [--kernels native default] [--runs-dir DIR]
                                     [--results FILE | --no-results] [extra overrides...]

Each run happens in a fresh working directory (its own mlflow.db and outputs/); the first run
of a kernel family builds the toy world into an empty cache, the second reuses it. `--kernels`
sets ATEN_CPU_CAPABILITY for the runs (`native`: unset, the best the CPU has; `default`: ATen's
portable kernels; `avx2`, `avx512`): the same seed sums floating-point numbers in another order
with other kernels, and sampling carries the difference on, so the toy world's figures depend on
the CPU and the torch build. Prints a table and writes it to docs/results/default_run.md.
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

METRICS = [
    "eval/win_rate_vs_ref",
    "eval/kl_seq",
    "eval/reward_policy",
    "val/loss",
    "val/rewards/accuracies",
    "val/rewards/margins",
]


def timed_run(
    workdir: Path, cache: Path | None, kernels: str, overrides: list[str]
) -> tuple[float, dict[str, float], str]:
    workdir.mkdir(parents=True)
    env = dict(os.environ)
    if cache is not None:  # else the usual cache: $PREFOPT_CACHE or ~/.cache/prefopt
        env["PREFOPT_CACHE"] = str(cache)
    env.pop("ATEN_CPU_CAPABILITY", None)
    if kernels != "native":
        env["ATEN_CPU_CAPABILITY"] = kernels
    start = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "prefopt.train", "trainer.enable_progress_bar=false", *overrides],
        cwd=workdir,
        env=env,
        check=True,
        stdout=subprocess.DEVNULL,
    )
    seconds = time.perf_counter() - start
    used = subprocess.run(
        [sys.executable, "-c", "import torch; print(torch.backends.cpu.get_cpu_capability())"],
        env=env, capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    client = MlflowClient(tracking_uri=f"sqlite:///{workdir / 'mlflow.db'}")
    run = client.search_runs([client.get_experiment_by_name("prefopt").experiment_id])[0]
    return seconds, dict(run.data.metrics), used


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--kernels", nargs="+", default=["native"],
        choices=["native", "default", "avx2", "avx512"],
        help="ATEN_CPU_CAPABILITY per pair of runs (native: unset)",
    )  # fmt: skip
    parser.add_argument("--runs-dir", type=Path, default=None)
    parser.add_argument(
        "--no-cold", action="store_true",
        help="one run per kernel family on the usual toy cache (built first if missing)",
    )  # fmt: skip
    parser.add_argument("--results", type=Path, default=None, help="default: docs/results/")
    parser.add_argument("--no-results", action="store_true", help="print only")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides for every run")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = parse_with_overrides(build_parser(), argv)
    root = args.runs_dir or Path(tempfile.mkdtemp(prefix="prefopt-bench-"))
    start, load = time.perf_counter(), load_average()
    rows = []
    for kernels in args.kernels:
        for cache_state in ("usual",) if args.no_cold else ("cold", "warm"):
            cache = None if args.no_cold else root / kernels / "cache"
            seconds, metrics, used = timed_run(
                root / kernels / cache_state, cache, kernels, args.overrides
            )
            rows.append((f"{kernels} ({used})", cache_state, seconds, metrics))
            print(f"{kernels} {cache_state}: {seconds:.1f} s", flush=True)

    table = [
        "| CPU kernels | toy cache | wall s | " + " | ".join(f"`{m}`" for m in METRICS) + " |",
        "| --- | --- | --- |" + " --- |" * len(METRICS),
    ]
    for kernels, cache_state, seconds, metrics in rows:
        values = " | ".join(f"{metrics.get(m, float('nan')):.4f}" for m in METRICS)
        table.append(f"| {kernels} | {cache_state} | {seconds:.1f} | {values} |")
    print("\n" + "\n".join(table))
    print(f"(runs in {root})")
    if args.no_results:
        return
    run = " ".join(["python -m prefopt.train", *args.overrides])
    body = (
        f"`{run}`, each run in a fresh directory: "
        + (
            "on the usual toy cache (usual). "
            if args.no_cold
            else "the first of each kernel "
            "family builds the toy world into an empty cache (cold), the second reuses it (warm). "
        )
        + "`CPU kernels` is "
        "`ATEN_CPU_CAPABILITY` (native: unset) and, in brackets, the kernels torch ran. The "
        "metrics are the run's final ones in MLflow.\n\n" + "\n".join(table)
    )
    write(
        "default_run", "The default run: time and final metrics",
        section_key(args.overrides), f"`{run}`", body, time.perf_counter() - start, load,
        args.results,
    )  # fmt: skip


if __name__ == "__main__":
    main()
