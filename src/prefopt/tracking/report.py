"""The summary of a finished sweep, attached to its MLflow parent run.

One row per job: its swept values, status and final metrics (validation margins and accuracy,
and the evaluation's win rate and KL where the runs have them). Written as `summary.csv`, a
plot per swept key (`<key>.png`: the key against each metric, one line per combination of the
other swept keys), `margins.png` (validation margins over steps, one line per job), and for a
β sweep with KL and rewards the reward–KL frontier (`frontier.png`, `frontier.csv`:
`prefopt.tracking.frontier`), printed to the terminal, kept in `<sweep dir>/summary/` and
logged to the parent run under `summary/`.

What the MLflow UI shows first on the parent run says what the sweep found: its description
(`mlflow.note.content`) is the summary table in markdown (and the frontier's), and the best
job by the sweep's objective (`objective`, default `val/rewards/accuracies`, higher is better)
has its final metrics and swept values on the parent as `best/<metric>` and `best/<param>`.
"""

from __future__ import annotations

import csv
import json
import logging
import time
from pathlib import Path

from hydra.core.override_parser.overrides_parser import OverridesParser
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from mlflow.entities import Metric, Param, Run
from mlflow.tracking import MlflowClient

from prefopt.files import is_disk_full, replaced_folder
from prefopt.tracking.frontier import frontier_of, frontier_table, plot_frontier
from prefopt.tracking.job_rows import Row
from prefopt.tracking.params import param_name
from prefopt.tracking.tags import PARENT_TAG, TAG_FAILED_JOB, TAG_JOB
from prefopt.tracking.ui import how_to_open

log = logging.getLogger("prefopt.sweep")

SUMMARY_METRICS = (
    "val/rewards/margins",
    "val/rewards/accuracies",
    "eval/win_rate_vs_ref",
    "eval/kl_seq",
)


DESCRIPTION_LIMIT = 8000
"""Characters of a tag's value an MLflow store keeps (`mlflow.utils.validation.MAX_TAG_VAL_LENGTH`)."""


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
                metrics=dict(run.data.metrics),  # the table shows SUMMARY_METRICS
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


def markdown_table(header: list[str], cells: list[list[str]]) -> str:
    """A GitHub-flavoured markdown table (what the MLflow UI renders as a run's description)."""

    def line(values: list[str]) -> str:
        return "| " + " | ".join(str(v).replace("|", "\\|") for v in values) + " |"

    return "\n".join([line(header), line(["---"] * len(header)), *(line(c) for c in cells)])


def best_row(rows: list[Row], objective: str | None) -> Row | None:
    """The finished job with the highest final `objective` metric; None when none logged it."""
    scored = [r for r in rows if r.status == "FINISHED" and objective in r.metrics]
    return max(scored, key=lambda r: r.metrics[objective]) if scored else None


def best_metrics(row: Row, objective: str) -> dict[str, float]:
    """The best job's key metrics as the parent logs them: `best/<metric>`."""
    keys = [*SUMMARY_METRICS, objective, *(m for m in row.metrics if m.startswith("eval/true/"))]
    return {f"best/{m}": row.metrics[m] for m in dict.fromkeys(keys) if m in row.metrics}


def describe_sweep(
    rows: list[Row], swept_keys: list[str], status: str, best: Row | None, objective: str | None,
    frontier_md: str | None,
) -> str:  # fmt: skip
    """The parent run's description: what the sweep found, then its table(s)."""
    lines = [f"**{len(rows)} jobs, {status}.**"]
    if best is not None:
        values = ", ".join(f"{k}={best.values[k]}" for k in swept_keys)
        lines.append(
            f"Best by `{objective}` = {best.metrics[objective]:.4f}: job {best.job} "
            f"({best.run_name}; {values}); its metrics are this run's `best/...`."
        )
    tail = ["", "Plots and `summary.csv`: Artifacts → `summary/`."]
    if frontier_md:
        tail = ["", "**Reward–KL frontier** (`summary/frontier.png`):", "", frontier_md, *tail]
    header, cells = table(rows, swept_keys)
    header, cells = header[:-1], [c[:-1] for c in cells]  # run ids: the children's own pages
    shown = len(cells)
    while True:  # MLflow keeps a tag's first 8,000 characters: drop rows, say so
        more = [f"… and {len(cells) - shown} more jobs in `summary/summary.csv`"]
        body = [markdown_table(header, cells[:shown]), *(more if shown < len(cells) else [])]
        text = "\n".join([*lines, "", *body, *tail])
        if len(text) <= DESCRIPTION_LIMIT or shown == 0:
            return text[:DESCRIPTION_LIMIT]
        shown -= 1


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
    client: MlflowClient,
    parent_run_id: str,
    swept_keys: list[str],
    sweep_dir: str,
    objective: str | None = None,
) -> str:
    """Write, print and log the summary, describe the parent and put the best job (by the
    final `objective` metric) on it; return the sweep's status (FINISHED/FAILED/KILLED)."""
    parent = client.get_run(parent_run_id)
    rows = collect_rows(client, parent, swept_keys)
    out = Path(sweep_dir) / "summary"
    frontier = frontier_of(rows, swept_keys)

    header, cells = table(rows, swept_keys)
    # Written under a temporary name, then renamed: a killed sweep leaves no half summary.
    with replaced_folder(out, hint="point hydra.sweep.dir at a larger disk") as staging:
        staging.mkdir()
        with open(staging / "summary.csv", "w", newline="") as f:
            csv.writer(f).writerows([header, *cells])
        if frontier is not None:
            frontier_header, frontier_cells = frontier_table(frontier)
            with open(staging / "frontier.csv", "w", newline="") as f:
                csv.writer(f).writerows([frontier_header, *frontier_cells])
        try:  # a plot that fails must not cost the table or the sweep's status
            if any(row.metrics for row in rows):
                for key in swept_keys:
                    plot_key(rows, key, swept_keys, staging / f"{key.replace('/', '_')}.png")
            plot_margin_curves(client, rows, staging / "margins.png")
            if frontier is not None:
                plot_frontier(frontier, staging / "frontier.png")
        except Exception as error:
            if is_disk_full(error):
                raise
            log.exception("sweep summary: plotting failed; the table is complete")
    client.log_artifacts(parent_run_id, str(out), artifact_path="summary")

    status = sweep_status(rows)
    try:  # the parent's overview must not cost the sweep its status: summary/ has it all
        overview_parent(client, parent_run_id, rows, swept_keys, status, objective, frontier)
    except Exception:
        log.exception("sweep summary: the parent run's description and best job were not set")

    where = how_to_open(client.tracking_uri, parent.info.experiment_id, parent_run_id)
    printed = [f"\nSweep {sweep_dir}: {len(rows)} jobs, {status}. MLflow parent run "
               f"{parent_run_id} ('{parent.info.run_name}'), summary in {out}"]  # fmt: skip
    printed.append(format_table(header, cells))
    if frontier is not None:
        printed += ["", "Reward–KL frontier:", format_table(*frontier_table(frontier))]
    printed += ["", where, ""]
    print("\n".join(printed), flush=True)
    return status


def overview_parent(
    client: MlflowClient, parent_run_id: str, rows: list[Row], swept_keys: list[str],
    status: str, objective: str | None, frontier,
) -> None:  # fmt: skip
    """What the MLflow UI shows first of the parent: the description, the best job's metrics
    (`best/<metric>`) and swept values (`best/<param>`), the tag `prefopt.best_run_id`."""
    best = best_row(rows, objective)
    frontier_md = markdown_table(*frontier_table(frontier)) if frontier else None
    description = describe_sweep(rows, swept_keys, status, best, objective, frontier_md)
    tags = {"mlflow.note.content": description}
    if best is not None:
        client.log_batch(
            parent_run_id,
            metrics=[Metric(k, v, _now_ms(), 0) for k, v in best_metrics(best, objective).items()],
            params=[Param("best/objective", objective), Param("best/job", str(best.job))]
            + [Param(f"best/{param_name(k)}", best.values[k]) for k in swept_keys],
        )
        tags["prefopt.best_run_id"] = best.run_id
    for key, value in tags.items():
        client.set_tag(parent_run_id, key, value)


def _now_ms() -> int:
    return int(time.time() * 1000)
