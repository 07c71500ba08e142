"""The reward/KL trade-off of DPO on the toy world: one training run per β, then win rate
against the reference, ground-truth reward and KL to the reference on held-out prompts.

    python benchmarks/beta_tradeoff.py [--betas 0.05 0.1 0.5] [--seeds 0] [--prompts 200]
                                       [--runs-dir DIR] [--jobs N] [--results FILE | --no-results]
                                       [extra overrides...]

Each run is the default `python -m prefopt.train` (DPO, toy world, one epoch) with `loss.beta`
set, validating once at the end, where the evaluation samples one completion per held-out
prompt from the policy and from the reference (temperature 1) and the toy world's ground-truth
reward judges them. `--seeds` repeats each β with other data orders (`data.seed`) and reports
the mean ± the spread over seeds. Runs are recorded in DIR/mlflow.db (one MLflow experiment).
The overrides may stand anywhere (`--seeds 0 1 2 trainer.max_epochs=3`); the table goes to
docs/results/beta_tradeoff.md, one section per set of overrides.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

from hydra import compose, initialize_config_dir
from results_file import load_average, parse_with_overrides, section_key, write

from prefopt.config.schema import register_configs
from prefopt.train import config_dir, train

COLUMNS = [
    ("eval/win_rate_vs_ref", "win rate vs ref"),
    ("eval/reward_policy", "reward (policy)"),
    ("eval/reward_ref", "reward (ref)"),
    ("eval/kl_seq", "KL(π‖π_ref)"),
    ("eval/length_policy", "length"),
    ("val/rewards/accuracies", "val accuracy"),
]


def run(beta: float, seed: int, prompts: int, root: Path, overrides: list[str]) -> dict[str, float]:
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        cfg = compose(
            "config",
            overrides=[
                f"loss.beta={beta}",
                f"data.seed={seed}",
                f"eval.num_prompts={prompts}",
                "trainer.val_check_interval=1.0",
                "trainer.enable_progress_bar=false",
                "export=false",
                f"output_dir={root / f'beta{beta:g}-seed{seed}'}",
                f"logger.tracking_uri=sqlite:///{root / 'mlflow.db'}",
                "logger.experiment_name=beta_tradeoff",
                *overrides,
            ],
        )
    return train(cfg).metrics


def run_in_worker(beta: float, seed: int, prompts: int, root: Path, overrides: list[str]):
    """`run` in a fresh process of the pool (`--jobs`): its own Hydra and logging set-up."""
    logging.basicConfig(level=logging.WARNING)
    register_configs()
    return run(beta, seed, prompts, root, overrides)


def cell(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--betas", type=float, nargs="+", default=[0.05, 0.1, 0.5])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument(
        "--prompts", type=int, default=200, help="eval.num_prompts: held-out prompts judged"
    )
    parser.add_argument("--runs-dir", type=Path, default=None)
    parser.add_argument("--jobs", type=int, default=1, help="runs at once, each in its process")
    parser.add_argument("--results", type=Path, default=None, help="default: docs/results/")
    parser.add_argument("--no-results", action="store_true", help="print only")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides for every run")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = parse_with_overrides(build_parser(), argv)
    root = (args.runs_dir or Path(tempfile.mkdtemp(prefix="prefopt-beta-"))).resolve()
    root.mkdir(parents=True, exist_ok=True)
    logging.basicConfig(level=logging.WARNING)
    register_configs()

    results: dict[float, list[dict[str, float]]] = {beta: [] for beta in args.betas}
    start, load = time.perf_counter(), load_average()
    grid = [(beta, seed) for beta in args.betas for seed in args.seeds]
    if args.jobs > 1:  # one fresh process per run, `--jobs` at once; each run is seeded alike
        pool = ProcessPoolExecutor(args.jobs, get_context("spawn"), max_tasks_per_child=1)
        with pool:
            futures = [
                pool.submit(run_in_worker, b, s, args.prompts, root, args.overrides)
                for b, s in grid
            ]
            done = [f.result() for f in futures]
    else:
        done = (run(b, s, args.prompts, root, args.overrides) for b, s in grid)
    for (beta, seed), metrics in zip(grid, done):
        results[beta].append(metrics)
        shown = ", ".join(f"{name}={metrics.get(key, float('nan')):.3f}" for key, name in COLUMNS)
        print(f"β={beta:g} seed={seed}: {shown}", flush=True)

    table = [
        f"| β | {' | '.join(name for _, name in COLUMNS)} |",
        f"| --- |{' --- |' * len(COLUMNS)}",
    ]
    for beta, runs in results.items():
        cells = [cell([m.get(key, float("nan")) for m in runs]) for key, _ in COLUMNS]
        table.append(f"| {beta:g} | {' | '.join(cells)} |")
    per_seed = ["| β | seed | " + " | ".join(name for _, name in COLUMNS) + " |",
                "| --- | --- |" + " --- |" * len(COLUMNS)]  # fmt: skip
    for beta, runs in results.items():
        for seed, m in zip(args.seeds, runs):
            values = " | ".join(f"{m.get(key, float('nan')):.3f}" for key, _ in COLUMNS)
            per_seed.append(f"| {beta:g} | {seed} | {values} |")
    print("\n" + "\n".join(table))
    seconds = time.perf_counter() - start
    print(f"\n{len(args.seeds)} seed(s) per β, {seconds:.0f} s; runs in {root}")
    if args.no_results:
        return
    seeds = ", ".join(map(str, args.seeds))
    body = (
        f"`python -m prefopt.train loss.beta=β data.seed=seed eval.num_prompts={args.prompts}"
        + "".join(f" {o}" for o in args.overrides)
        + f"` for seeds {seeds}, evaluated once at the end on up to {args.prompts} held-out "
        "prompts (at most the distinct ones): one sample per prompt from the policy and one "
        "from the reference at temperature 1, judged by the toy world's ground-truth reward. "
        + ("Mean ± standard deviation over the seeds:" if len(args.seeds) > 1 else "One seed:")
        + "\n\n"
        + "\n".join(table)
        + ("\n\nEach seed:\n\n" + "\n".join(per_seed) if len(args.seeds) > 1 else "")
    )
    heading = ", ".join(["one epoch" if not args.overrides else " ".join(args.overrides),
                         ("seeds " if len(args.seeds) > 1 else "seed ") + seeds])  # fmt: skip
    write(
        "beta_tradeoff", "The β trade-off on the toy world", section_key(args.overrides),
        heading, body, seconds, load, args.results,
    )  # fmt: skip


if __name__ == "__main__":
    main()
