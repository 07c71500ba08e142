"""The summary of a finished sweep, attached to its MLflow parent run.

One row per job: its swept values, status and final metrics (validation margins and accuracy,
and the evaluation's win rate and KL where the runs have them). Written as `summary.csv`, a
plot per swept key (`<key>.png`: the key against each metric, one line per combination of the
other swept keys), `margins.png` (validation margins over steps, one line per job), printed to
the terminal, kept in `<sweep dir>/summary/` and logged to the parent run under `summary/`.
"""

from __future__ import annotations

import csv
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

from hydra.core.override_parser.overrides_parser import OverridesParser
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from mlflow.entities import Run
from mlflow.tracking import MlflowClient

from prefopt.files import is_disk_full, replaced_folder
from prefopt.tracking.tags import PARENT_TAG, TAG_FAILED_JOB, TAG_JOB

log = logging.getLogger("prefopt.sweep")

SUMMARY_METRICS = (
    "val/rewards/margins",
    "val/rewards/accuracies",
    "eval/win_rate_vs_ref",
    "eval/kl_seq",
)


@dataclass
class Row:
    job: int
    status: str
    values: dict[str, str]
    metrics: dict[str, float] = field(default_factory=dict)
    run_name: str = ""
    run_id: str = ""


def child_runs(client: MlflowClient, parent: Run) -> list[Run]:
    runs, token = [], None
    while True:
        page = client.search_runs(
            [parent.info.experiment_id],
            filter_string=f"tags.`{PARENT_TAG}` = '{parent.info.run_id}'",
            max_results=1000,
            page_token=token,
        )
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def collect_rows(client: MlflowClient, parent: Run, swept_keys: list[str]) -> list[Row]:
    """Every child run, plus the jobs that failed before their run existed."""
    rows = []
    for run in child_runs(client, parent):
        params = run.data.params
        rows.append(
            Row(
                job=int(run.data.tags.get(TAG_JOB, -1)),
                status=run.info.status,
                values={k: params.get(k, params.get(k.replace(".", "/"), "")) for k in swept_keys},
                metrics={m: run.data.metrics[m] for m in SUMMARY_METRICS if m in run.data.metrics},
                run_name=run.info.run_name,
                run_id=run.info.run_id,
            )
        )
    jobs_with_run = {row.job for row in rows}
    parser = OverridesParser.create()
    for tag, value in parent.data.tags.items():
        if not tag.startswith(TAG_FAILED_JOB) or int(tag[len(TAG_FAILED_JOB) :]) in jobs_with_run:
            continue
        given = {
            o.key_or_group: o.get_value_element_as_str()
            for o in parser.parse_overrides(json.loads(value)["overrides"])
        }
        rows.append(
            Row(
                job=int(tag[len(TAG_FAILED_JOB) :]),
                status="FAILED",
                values={k: given.get(k, "") for k in swept_keys},
                run_name="(failed before its run started)",
            )
        )
    return sorted(rows, key=lambda row: row.job)


def sweep_status(rows: list[Row]) -> str:
    statuses = {row.status for row in rows}
    if statuses == {"FINISHED"}:
        return "FINISHED"
    return "KILLED" if "KILLED" in statuses else "FAILED"


def table(rows: list[Row], swept_keys: list[str]) -> tuple[list[str], list[list[str]]]:
    metrics = [m for m in SUMMARY_METRICS if any(m in row.metrics for row in rows)]
    header = ["job", "run_name", *swept_keys, *metrics, "status", "run_id"]
    cells = [
        [
            str(row.job),
            row.run_name,
            *(row.values[k] for k in swept_keys),
            *(f"{row.metrics[m]:.4f}" if m in row.metrics else "" for m in metrics),
            row.status,
            row.run_id,
        ]
        for row in rows
    ]
    return header, cells


def format_table(header: list[str], cells: list[list[str]]) -> str:
    widths = [max(len(str(c)) for c in column) for column in zip(header, *cells)]
    lines = [header, ["-" * w for w in widths], *cells]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip() for line in lines)


def _as_float(value: str) -> float | None:
    try:
        return float(value)
    except ValueError:
        return None


def plot_key(rows: list[Row], key: str, swept_keys: list[str], path: Path) -> None:
    """`key` against each final metric; one line per combination of the other swept keys."""
    metrics = [m for m in SUMMARY_METRICS if any(m in row.metrics for row in rows)]
    xs_raw = [row.values[key] for row in rows]
    numeric = all(_as_float(x) is not None for x in xs_raw)
    categories = list(dict.fromkeys(xs_raw))
    others = [k for k in swept_keys if k != key]
    series: dict[str, list[tuple[float, Row]]] = {}
    for row in rows:
        label = ", ".join(f"{k}={row.values[k]}" for k in others) or key
        x = float(row.values[key]) if numeric else float(categories.index(row.values[key]))
        series.setdefault(label, []).append((x, row))
    too_many = len(series) > 8  # e.g. an Optuna search: every point its own combination

    fig = Figure(figsize=(4.2 * len(metrics), 3.6), layout="constrained")
    FigureCanvasAgg(fig)
    for i, metric in enumerate(metrics):
        ax = fig.add_subplot(1, len(metrics), i + 1)
        for label, points in series.items():
            points = sorted((x, r.metrics[metric]) for x, r in points if metric in r.metrics)
            if points:
                xs, ys = zip(*points)
                ax.plot(
                    xs,
                    ys,
                    marker="o",
                    linestyle="-" if numeric and not too_many else "none",
                    color="C0" if too_many else None,
                    label=None if too_many else label,
                )
        if numeric:
            values = sorted({float(x) for x in xs_raw})
            if values[0] > 0 and values[-1] / values[0] >= 10:
                ax.set_xscale("log")
            if len(values) <= 10:  # a grid: label exactly the values swept
                ax.set_xticks(values, [f"{v:g}" for v in values])
                ax.minorticks_off()
        else:
            ax.set_xticks(range(len(categories)), categories)
        ax.set_xlabel(key)
        ax.set_title(metric, fontsize=10)
        ax.grid(alpha=0.3)
        if i == 0 and others and not too_many:
            ax.legend(fontsize=8)
    fig.savefig(path, dpi=100)


def plot_margin_curves(client: MlflowClient, rows: list[Row], path: Path) -> bool:
    fig = Figure(figsize=(6, 4), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    drawn = False
    for row in rows:
        if not row.run_id:
            continue
        history = client.get_metric_history(row.run_id, "val/rewards/margins")
        if history:
            points = sorted((m.step, m.value) for m in history)
            ax.plot(*zip(*points), marker=".", label=row.run_name)
            drawn = True
    if not drawn:
        return False
    ax.set_xlabel("step")
    ax.set_title("val/rewards/margins", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.savefig(path, dpi=100)
    return True


def report_sweep(
    client: MlflowClient, parent_run_id: str, swept_keys: list[str], sweep_dir: str
) -> str:
    """Write, print and log the summary; return the sweep's status (FINISHED/FAILED/KILLED)."""
    parent = client.get_run(parent_run_id)
    rows = collect_rows(client, parent, swept_keys)
    out = Path(sweep_dir) / "summary"

    header, cells = table(rows, swept_keys)
    # Written under a temporary name, then renamed: a killed sweep leaves no half summary.
    with replaced_folder(out, hint="point hydra.sweep.dir at a larger disk") as staging:
        staging.mkdir()
        with open(staging / "summary.csv", "w", newline="") as f:
            csv.writer(f).writerows([header, *cells])
        try:  # a plot that fails must not cost the table or the sweep's status
            if any(row.metrics for row in rows):
                for key in swept_keys:
                    plot_key(rows, key, swept_keys, staging / f"{key.replace('/', '_')}.png")
            plot_margin_curves(client, rows, staging / "margins.png")
        except Exception as error:
            if is_disk_full(error):
                raise
            log.exception("sweep summary: plotting failed; the table is complete")
    client.log_artifacts(parent_run_id, str(out), artifact_path="summary")

    status = sweep_status(rows)
    print(
        f"\nSweep {sweep_dir}: {len(rows)} jobs, {status}. MLflow parent run {parent_run_id}"
        f" ('{parent.info.run_name}'), summary in {out}\n{format_table(header, cells)}\n",
        flush=True,
    )
    return status
