"""An online run's figures in MLflow: reward against KL over its rounds, as a PNG artifact.

The per-round metrics (`round/...`) go through Lightning's logger like any metric; the last
round's pairs go through `runs.log_table`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

from lightning.pytorch.loggers import Logger
from lightning.pytorch.loggers.mlflow import MLFlowLogger
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

log = logging.getLogger("prefopt.tracking")

REWARD_VS_KL_FILE = "online/reward_vs_kl.png"


def reward_vs_kl_figure(history: Sequence[Mapping[str, float]]) -> Figure | None:
    """Each round's mean reward (ground truth where the world has one, else the judge's)
    against its KL to the reference, rounds joined in order and labelled by their step."""
    key = "round/reward_true" if history and "round/reward_true" in history[0] else None
    key = key or "round/reward_judge"
    points = [(h["round/kl"], h[key], int(h["step"])) for h in history if key in h]
    if not points:
        return None
    fig = Figure(figsize=(5, 4), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    kls, rewards, steps = zip(*points)
    ax.plot(kls, rewards, marker="o", color="C0")
    for kl, reward, step in points[:: max(1, len(points) // 8)]:
        ax.annotate(f"step {step}", (kl, reward), fontsize=7, alpha=0.7)
    ax.set_xlabel("KL to the reference (mean log π/π_ref of the samples)")
    ax.set_ylabel(key.removeprefix("round/").replace("_", " "))
    ax.set_title("online rounds: reward vs KL", fontsize=10)
    ax.grid(alpha=0.3)
    return fig


def log_figure(logger: Logger | None, figure: Figure, artifact_file: str) -> None:
    """`figure` as an image artifact of the logger's MLflow run; nothing for another logger."""
    if not isinstance(logger, MLFlowLogger):
        return
    logger.experiment.log_figure(logger.run_id, figure, artifact_file)
