"""Online vs offline DPO on the toy world: win rate against the reference, KL and wall time.

    python benchmarks/online_vs_offline.py [--betas 0.05 0.1 0.5] [--loops offline online]
                                           [--work DIR] [--plot FILE] [extra overrides...]

Each run is `python -m prefopt.train loop=<loop> loss.beta=<β>` with the defaults otherwise, in
a subprocess of its own (its own output folder; every run logs to one SQLite MLflow store in
DIR), timed from start to exit. The table gives the final `eval/win_rate_vs_ref` (the toy
world's ground-truth reward of the policy's sample against the reference's, on the held-out
prompts), `eval/kl_seq`, the wall time, and for online runs the mean sampling throughput of
the rounds (`round/sampling_tokens_per_s`: batched generation with a KV cache) and the total
generated tokens. The reward-vs-KL frontier of both loops is saved as a PNG (`--plot`).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from mlflow.tracking import MlflowClient
from results_file import parse_with_overrides

EXPERIMENT = "online_vs_offline"


def run(loop: str, beta: float, work: Path, overrides: list[str]) -> dict[str, float]:
    out = work / f"{loop}-beta{beta:g}"
    cmd = [
        sys.executable, "-m", "prefopt.train", f"loop={loop}", f"loss.beta={beta}",
        f"output_dir={out}", f"logger.tracking_uri=sqlite:///{work / 'mlflow.db'}",
        f"logger.experiment_name={EXPERIMENT}", f"logger.run_name={loop}_beta{beta:g}",
        "trainer.enable_progress_bar=false", "export=false", *overrides,
    ]  # fmt: skip
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ})
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    client = MlflowClient(tracking_uri=f"sqlite:///{work / 'mlflow.db'}")
    experiment = client.get_experiment_by_name(EXPERIMENT)
    [found] = client.search_runs(
        [experiment.experiment_id], f"attributes.run_name = '{loop}_beta{beta:g}'"
    )
    metrics = dict(found.data.metrics)
    result = {"wall_s": wall, **metrics}
    throughput = client.get_metric_history(found.info.run_id, "round/sampling_tokens_per_s")
    if throughput:
        result["sampling_tokens_per_s"] = statistics.mean(m.value for m in throughput)
        generated = client.get_metric_history(found.info.run_id, "round/generated_tokens")
        result["generated_tokens"] = sum(m.value for m in generated)
    return result


def plot(results: dict[tuple[str, float], dict[str, float]], path: Path) -> None:
    fig = Figure(figsize=(5.5, 4), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for i, loop in enumerate(sorted({loop for loop, _ in results})):
        points = sorted(
            (r["eval/kl_seq"], r["eval/reward_policy"], beta)
            for (name, beta), r in results.items()
            if name == loop
        )
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", color=f"C{i}",
                label=loop)  # fmt: skip
        for kl, reward, beta in points:
            ax.annotate(f"β={beta:g}", (kl, reward), fontsize=8, xytext=(3, 3),
                        textcoords="offset points")  # fmt: skip
    # KL spans two orders of magnitude between the loops: a log axis keeps both frontiers legible.
    ax.set_xscale("log")
    ax.set_xlabel("KL(π‖π_ref) on held-out prompts (eval/kl_seq, log scale)")
    ax.set_ylabel("ground-truth reward of the policy (eval/reward_policy)")
    ax.set_title("toy world: reward vs KL, offline and online DPO", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.savefig(path, dpi=110)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--betas", type=float, nargs="+", default=[0.05, 0.1, 0.5])
    parser.add_argument("--loops", nargs="+", default=["offline", "online"])
    parser.add_argument("--work", type=Path, default=None, help="runs and mlflow.db (a tmp dir)")
    parser.add_argument("--plot", type=Path, default=Path("online_vs_offline.png"))
    parser.add_argument("overrides", nargs="*", help="Hydra overrides for every run")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = parse_with_overrides(build_parser(), argv)
    work = (args.work or Path(tempfile.mkdtemp(prefix="prefopt-online-"))).resolve()
    work.mkdir(parents=True, exist_ok=True)
    results = {}
    header = f"{'loop':<8} {'β':>5} {'win rate':>9} {'KL':>7} {'reward':>7} {'wall s':>7}"
    header += f" {'gen tok/s':>10} {'gen tokens':>10}"
    print(header, flush=True)
    for beta in args.betas:
        for loop in args.loops:
            r = results[(loop, beta)] = run(loop, beta, work, args.overrides)
            line = (
                f"{loop:<8} {beta:>5g} {r['eval/win_rate_vs_ref']:>9.3f} "
                f"{r['eval/kl_seq']:>7.3f} {r['eval/reward_policy']:>7.3f} {r['wall_s']:>7.1f}"
            )
            if "sampling_tokens_per_s" in r:
                line += f" {r['sampling_tokens_per_s']:>10.0f} {r['generated_tokens']:>10.0f}"
            print(line, flush=True)
    plot(results, args.plot)
    print(f"frontier: {args.plot.resolve()}; runs and MLflow store: {work}")


if __name__ == "__main__":
    main()
