"""Real MLflow servers on free loopback ports, for the team-setup and serving tests (and docs/screenshot.py).

``mlflow_server`` runs ``mlflow server`` (tracking, registry, proxied artifacts);
``running`` runs any server command until its health URL answers; ``models_serve``
runs ``mlflow models serve``. Each runs in its own process group, so every worker it forks is stopped
with it, and the wait for it is bounded.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import requests
from httpserver import free_port

MLFLOW = str(Path(sys.executable).with_name("mlflow"))


def server_env(**extra: str) -> dict[str, str]:
    """This environment without MLflow settings of the caller's, and no telemetry (offline machines)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env.update(MLFLOW_DISABLE_TELEMETRY="true", DO_NOT_TRACK="true", **extra)
    return env


@contextlib.contextmanager
def running(cmd: list[str], health_url: str, log_path: Path, timeout: float = 90,
            env: dict[str, str] | None = None) -> Iterator[float]:
    """Run ``cmd`` until ``health_url`` answers 200; yield the seconds that took; stop it after.

    Fails with the end of the server's log if it exits or is not up within ``timeout`` s.
    """
    start = time.monotonic()
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env or server_env(),
                                start_new_session=True)
        try:
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(f"{cmd[:3]} exited {proc.returncode}: {log_path.read_text()[-3000:]}")
                with contextlib.suppress(requests.RequestException):
                    if requests.get(health_url, timeout=2).status_code == 200:
                        break
                if time.monotonic() - start > timeout:
                    raise TimeoutError(f"{cmd[:3]} not up after {timeout} s: {log_path.read_text()[-3000:]}")
                time.sleep(0.25)
            yield time.monotonic() - start
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            with contextlib.suppress(ProcessLookupError):  # workers that outlived their parent
                os.killpg(proc.pid, signal.SIGKILL)


@contextlib.contextmanager
def models_serve(model_uri: str, store: str, log_path: Path, timeout: float = 180) -> Iterator[tuple[str, float]]:
    """``mlflow models serve`` of ``model_uri`` from the store ``store`` on a free loopback port;
    yields its URL and the seconds until it answered /ping."""
    port = free_port()
    cmd = [MLFLOW, "models", "serve", "-m", model_uri, "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port)]
    with running(cmd, f"http://127.0.0.1:{port}/ping", log_path, timeout=timeout,
                 env=server_env(MLFLOW_TRACKING_URI=store)) as startup_s:
        yield f"http://127.0.0.1:{port}", startup_s


@contextlib.contextmanager
def mlflow_server(root: Path, backend_uri: str | None = None, timeout: float = 90) -> Iterator[str]:
    """Start ``mlflow server`` (SQLite backend, artifacts proxied from ``root``), yield its URL.

    ``backend_uri`` serves an existing store instead of a new ``root/server.db``.
    """
    root.mkdir(parents=True, exist_ok=True)
    port = free_port()
    cmd = [
        MLFLOW, "server",
        "--backend-store-uri", backend_uri or f"sqlite:///{root / 'server.db'}",
        "--artifacts-destination", str(root / "artifacts"),
        "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
    ]
    url = f"http://127.0.0.1:{port}"
    with running(cmd, f"{url}/health", root / "server.log", timeout):
        yield url


class RestAPI:
    """Calls to an MLflow server's REST API (``/api/2.0/mlflow/...``); any answer but 200 fails the test."""

    def __init__(self, url: str):
        self.url = url

    def get(self, endpoint: str, /, **params) -> dict:
        return self._check(requests.get(f"{self.url}/api/2.0/mlflow/{endpoint}", params=params, timeout=30))

    def post(self, endpoint: str, body: dict) -> dict:
        return self._check(requests.post(f"{self.url}/api/2.0/mlflow/{endpoint}", json=body, timeout=30))

    @staticmethod
    def _check(answer: requests.Response) -> dict:
        assert answer.status_code == 200, f"{answer.request.method} {answer.url}: {answer.status_code} {answer.text}"
        return answer.json()


@contextlib.contextmanager
def tracking_to(uri: str) -> Iterator[str]:
    """``MLFLOW_TRACKING_URI=uri`` for in-process stages; MLflow's client state restored after.

    ``mlflow.set_tracking_uri`` (called by ``tracking.configure``) also writes
    ``MLFLOW_TRACKING_URI``/``MLFLOW_REGISTRY_URI`` into ``os.environ`` and keeps the URI
    in a global: none of it may outlive the test and point later ones at a stopped server.
    """
    saved = saved_mlflow_settings()
    os.environ.pop("MLFLOW_REGISTRY_URI", None)
    os.environ["MLFLOW_TRACKING_URI"] = uri
    try:
        yield uri
    finally:
        restore_mlflow_settings(saved)


MLFLOW_ENV_KEYS = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")


def saved_mlflow_settings() -> dict[str, str | None]:
    return {k: os.environ.get(k) for k in MLFLOW_ENV_KEYS}


def restore_mlflow_settings(saved: dict[str, str | None]) -> None:
    """Back to ``saved``: MLflow's URI globals cleared, its environment variables as they were."""
    if "mlflow" in sys.modules:
        import mlflow

        mlflow.set_tracking_uri(None)
        mlflow.set_registry_uri(None)
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
