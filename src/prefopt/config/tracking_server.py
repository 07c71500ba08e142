"""`logger.tracking_uri` checked before the run starts: an http(s) server must answer.

A config check, so it lives in `config/` (which imports nothing from `tracking/`); it talks to
the server's `/health` page with the standard library, not through MLflow.
`prefopt.tracking` re-exports it.
"""

from __future__ import annotations

import os
import urllib.error
import urllib.request

from prefopt.errors import PrefoptError


def check_tracking_uri(uri: str, timeout: float = 3.0) -> None:
    """Fail at start, within `timeout` seconds, when an http(s) tracking server does not answer."""
    if not uri.startswith(("http://", "https://")):
        return
    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout):
            pass
    except urllib.error.HTTPError:
        pass  # something answers (an auth proxy, an older server without /health): go on
    except (urllib.error.URLError, OSError) as error:
        reason = getattr(error, "reason", error)
        raise PrefoptError(
            f"logger.tracking_uri={uri}: no MLflow server answers ({reason}); start it "
            "(mlflow server --host 127.0.0.1 --port 5000), fix the address, or log locally "
            "with logger.tracking_uri=sqlite:///mlflow.db"
        ) from None
    # Fail fast later too: MLflow's default retries would stall training for minutes per call.
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
