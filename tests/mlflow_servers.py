"""A real `mlflow server` on 127.0.0.1 for the tests that check what the MLflow UI shows or
what happens when the server goes away; never anything but loopback."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace


def free_port() -> int:
    """A port on 127.0.0.1 that nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_mlflow_server(folder: Path, port: int) -> subprocess.Popen:
    """`mlflow server` with its SQLite store and artifacts in `folder`, once it answers
    `/health` (its log appends to `folder/server.log`: a restart on the same folder keeps both)."""
    cmd = [
        *(sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port)),
        *("--backend-store-uri", f"sqlite:///{folder / 'server.db'}"),
        *("--artifacts-destination", str(folder / "server-artifacts"), "--workers", "1"),
    ]
    log_path = folder / "server.log"
    with open(log_path, "a") as log:
        server = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 180
    while True:
        assert server.poll() is None, log_path.read_text()[-3000:]
        assert time.monotonic() < deadline, "mlflow server did not start in time"
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as answer:
                if answer.status == 200:
                    return server
        except OSError:
            time.sleep(0.5)


def stop_server(server: subprocess.Popen, at_once: bool = False) -> None:
    """SIGTERM (SIGKILL after 5 s), or SIGKILL `at_once`: a server that dies mid-run."""
    if not at_once:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=5)
            return
        except subprocess.TimeoutExpired:
            pass
    os.killpg(server.pid, signal.SIGKILL)
    server.wait()


@contextlib.contextmanager
def running_mlflow_server(folder: Path) -> Iterator[SimpleNamespace]:
    """A server for the block: its `url` and its artifact folder (`artifacts`)."""
    port = free_port()
    server = start_mlflow_server(folder, port)
    try:
        yield SimpleNamespace(url=f"http://127.0.0.1:{port}", artifacts=folder / "server-artifacts")
    finally:
        stop_server(server)
