"""The reward/KL trade-off of DPO on the toy world: one training run per β, then win rate
against the reference, ground-truth reward and KL to the reference on held-out prompts.

    python benchmarks/beta_tradeoff.py [--betas 0.05 0.1 0.5] [--seeds 0] [--prompts 200]
                                       [--runs-dir DIR] [extra overrides...]

Each run is the default `python -m prefopt.train` (DPO, toy world, one epoch) with `loss.beta`
set, validating once at the end, where the evaluation samples one completion per held-out
prompt from the policy and from the reference (temperature 1) and the toy world's ground-truth
reward judges them. `--seeds` repeats each β with other data orders (`data.seed`) and reports
the mean ± the spread over seeds. Runs are recorded in DIR/mlflow.db (one MLflow experiment).
"""

from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
import time
from pathlib import Path

from hydra import compose, initialize_config_dir

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


def cell(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--betas", type=float, nargs="+", default=[0.05, 0.1, 0.5])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument(
        "--prompts", type=int, default=200, help="eval.num_prompts: held-out prompts judged"
    )
    parser.add_argument("--runs-dir", type=Path, default=None)
    parser.add_argument("overrides", nargs="*", help="Hydra overrides for every run")
    args = parser.parse_args()
    root = (args.runs_dir or Path(tempfile.mkdtemp(prefix="prefopt-beta-"))).resolve()
    root.mkdir(parents=True, exist_ok=True)
    logging.basicConfig(level=logging.WARNING)
    register_configs()

    results: dict[float, list[dict[str, float]]] = {}
    start = time.perf_counter()
    for beta in args.betas:
        for seed in args.seeds:
            metrics = run(beta, seed, args.prompts, root, args.overrides)
            results.setdefault(beta, []).append(metrics)
            shown = ", ".join(
                f"{name}={metrics.get(key, float('nan')):.3f}" for key, name in COLUMNS
            )
            print(f"β={beta:g} seed={seed}: {shown}", flush=True)

    print(f"\n| β | {' | '.join(name for _, name in COLUMNS)} |")
    print(f"| --- |{' --- |' * len(COLUMNS)}")
    for beta, runs in results.items():
        cells = [cell([m.get(key, float("nan")) for m in runs]) for key, _ in COLUMNS]
        print(f"| {beta:g} | {' | '.join(cells)} |")
    print(
        f"\n{len(args.seeds)} seed(s) per β, eval.num_prompts={args.prompts} (at most the "
        f"distinct validation prompts), "
        f"{time.perf_counter() - start:.0f} s; runs in {root} (mlflow ui --backend-store-uri "
        f"sqlite:///{root / 'mlflow.db'})"
    )


if __name__ == "__main__":
    main()
