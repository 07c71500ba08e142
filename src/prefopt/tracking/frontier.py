"""The reward–KL frontier of a sweep over β: the DPO paper's Figure 2, from the sweep's runs.

For a sweep whose swept keys include `loss.beta` and whose runs logged `eval/kl_seq` and a
reward: one curve per combination of the other swept keys (per method in `sweep=frontier`,
`conf/method/`), its points the FINISHED jobs ordered by β. x: `eval/kl_seq`, the
sequence-level KL(π ‖ π_ref) (summed over a completion's tokens, averaged over the policy's
samples on held-out prompts); y: the policy's mean true reward on those samples,
`eval/true/reward_policy` (on data without a true reward, the judge's `eval/reward_policy`,
said on the axis). The reference itself is the point (0, `eval/true/reward_ref`).

`prefopt.tracking.report` writes the figure (`frontier.png`) and the table (`frontier.csv`,
and markdown in the parent run's description) beside the sweep's summary.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from prefopt.tracking.job_rows import Row

BETA = "loss.beta"
KL = "eval/kl_seq"
TRUE_REWARD = "eval/true/reward_policy"
JUDGE_REWARD = "eval/reward_policy"
TRUE_REFERENCE = "eval/true/reward_ref"
JUDGE_REFERENCE = "eval/reward_ref"
WIN_RATES = ("eval/true/win_rate_vs_ref", "eval/win_rate_vs_ref")


@dataclass
class Point:
    beta: float
    kl: float
    reward: float
    win_rate: float | None
    run_name: str


@dataclass
class Frontier:
    reward_metric: str
    """The y metric: `eval/true/reward_policy`, or the judge's where no run has a true reward."""
    curves: dict[str, list[Point]]
    """Curve label (the other swept keys' values, e.g. `dpo_online`) -> its points by β."""
    reference_reward: float | None
    """π_ref's mean reward on its own samples: the frontier's point at KL 0."""

    @property
    def true_reward(self) -> bool:
        return self.reward_metric == TRUE_REWARD


def frontier_of(rows: Sequence[Row], swept_keys: Sequence[str]) -> Frontier | None:
    """The frontier of a β sweep's rows; None when β is not swept or no finished run has both
    a KL and a reward."""
    if BETA not in swept_keys:
        return None
    finished = [row for row in rows if row.status == "FINISHED" and KL in row.metrics]
    has_true = any(TRUE_REWARD in row.metrics for row in finished)
    reward_metric = TRUE_REWARD if has_true else JUDGE_REWARD
    reference_metric = TRUE_REFERENCE if has_true else JUDGE_REFERENCE
    others = [key for key in swept_keys if key != BETA]
    curves: dict[str, list[Point]] = {}
    reference = None
    for row in finished:
        if reward_metric not in row.metrics:
            continue
        label = _label(row, others)
        win_rate = next((row.metrics[m] for m in WIN_RATES if m in row.metrics), None)
        point = Point(
            float(row.values[BETA]), row.metrics[KL], row.metrics[reward_metric], win_rate,
            row.run_name,
        )  # fmt: skip
        curves.setdefault(label, []).append(point)
        reference = row.metrics.get(reference_metric, reference)
    if not curves:
        return None
    for points in curves.values():
        points.sort(key=lambda p: p.beta)
    return Frontier(reward_metric, curves, reference)


def _label(row: Row, others: Sequence[str]) -> str:
    if not others:
        return "β sweep"
    if len(others) == 1:
        return row.values[others[0]]
    return ", ".join(f"{key}={row.values[key]}" for key in others)


def frontier_table(frontier: Frontier) -> tuple[list[str], list[list[str]]]:
    """One row per point, curve by curve, β ascending."""
    reward = "true reward" if frontier.true_reward else "judge reward"
    win = "true win rate" if frontier.true_reward else "win rate"
    header = ["method", "β", "KL (sequence)", reward, win, "run"]
    cells = [
        [
            label,
            f"{p.beta:g}",
            f"{p.kl:.3f}",
            f"{p.reward:.3f}",
            "" if p.win_rate is None else f"{p.win_rate:.3f}",
            p.run_name,
        ]
        for label, points in frontier.curves.items()
        for p in points
    ]
    return header, cells


def plot_frontier(frontier: Frontier, path: Path) -> None:
    """Reward against KL, one line per curve through its points in β order, each point
    labelled with its β; π_ref as the point at KL 0."""
    fig = Figure(figsize=(6.4, 4.6), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for label, points in frontier.curves.items():
        xs, ys = [p.kl for p in points], [p.reward for p in points]
        (line,) = ax.plot(xs, ys, marker="o", label=label)
        for p in points:
            ax.annotate(
                f"β={p.beta:g}", (p.kl, p.reward), textcoords="offset points", xytext=(4, 4),
                fontsize=7, color=line.get_color(),
            )  # fmt: skip
    if frontier.reference_reward is not None:
        ax.plot([0.0], [frontier.reference_reward], marker="*", markersize=11, color="black",
                linestyle="none", label="π_ref")  # fmt: skip
    kls = [p.kl for points in frontier.curves.values() for p in points]
    scale = ""
    if max(kls) > 10 * max(sorted(kls)[len(kls) // 2], 1.0):  # a few far points squeeze the rest
        ax.set_xscale("symlog", linthresh=1.0)  # linear below 1 (π_ref's 0), log above
        scale = " (symlog scale)"
    ax.set_xlabel(f"KL(π ‖ π_ref), summed over the completion's tokens{scale}")
    what = "true reward" if frontier.true_reward else "judge's reward (no true reward)"
    ax.set_ylabel(f"mean {what} of the policy's samples")
    ax.set_title("reward–KL frontier (held-out prompts)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.savefig(path, dpi=110)
