"""Where a run is seen in MLflow's UI: the address printed at the end of a run and a sweep.

MLflow 3's UI opens on its GenAI view (traces, evaluations); training runs are under its
"Model training" view, a switch at the top of the left sidebar (remembered by the browser).
The query `workflowType=machine_learning` opens the page in that view. The UI routes with a
hash (`/#/experiments/<id>/runs/<run id>`), as MLflow 3.x's `mlflow ui` and `mlflow server`
serve it.
"""

from __future__ import annotations

LOCAL_UI = "http://127.0.0.1:5000"
"""Where `mlflow ui` serves by default."""
TRAINING_VIEW = "workflowType=machine_learning"


def ui_base(tracking_uri: str) -> str:
    """The UI's address: the server itself for an http(s) tracking URI, else `mlflow ui`'s."""
    if tracking_uri.startswith(("http://", "https://")):
        return tracking_uri.rstrip("/")
    return LOCAL_UI


def run_page(tracking_uri: str, experiment_id: str, run_id: str) -> str:
    """The run's page in the UI, in its "Model training" view."""
    return f"{ui_base(tracking_uri)}/#/experiments/{experiment_id}/runs/{run_id}?{TRAINING_VIEW}"


def runs_page(tracking_uri: str, experiment_id: str) -> str:
    """The experiment's runs table, in the "Model training" view."""
    return f"{ui_base(tracking_uri)}/#/experiments/{experiment_id}/runs?{TRAINING_VIEW}"


def how_to_open(tracking_uri: str, experiment_id: str, run_id: str) -> str:
    """Lines telling a user where to look: the command that serves a local store, then the
    run's page and the runs table."""
    lines = []
    if not tracking_uri.startswith(("http://", "https://")):
        lines.append(f"open with: mlflow ui --backend-store-uri {tracking_uri}")
    lines.append(f"run page:   {run_page(tracking_uri, experiment_id, run_id)}")
    lines.append(f"runs table: {runs_page(tracking_uri, experiment_id)}")
    return "\n".join(lines)
