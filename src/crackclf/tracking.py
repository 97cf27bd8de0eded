"""Where MLflow runs go, and how stages find the training's run.

The store is ``MLFLOW_TRACKING_URI`` if set, else ``sqlite:///<workspace>/mlflow.db``
as an absolute path: DVC runs queued and ``--temp`` experiments in a copy under
``.dvc/tmp/exps/``, and their runs must still land in the user's store.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

EXPS_MARKER = (".dvc", "tmp", "exps")


def workspace_root(cwd: str | Path | None = None) -> Path:
    """The user's project root, also from inside a DVC temporary experiment copy."""
    cwd = Path(cwd or Path.cwd()).resolve()
    parts = cwd.parts
    for i in range(len(parts) - len(EXPS_MARKER)):
        if parts[i : i + len(EXPS_MARKER)] == EXPS_MARKER:
            return Path(*parts[:i])
    return Path(os.environ.get("DVC_ROOT", cwd)).resolve()


def tracking_uri(cwd: str | Path | None = None) -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{workspace_root(cwd) / 'mlflow.db'}"


def configure(cwd: str | Path | None = None) -> str:
    """Point MLflow at the store (tracking and registry) and return its URI."""
    import mlflow

    uri = tracking_uri(cwd)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    return uri


def write_run_file(path: str | Path, info: dict) -> None:
    """``info``: run_id, experiment_id, tracking_uri, registered_model, model_version."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    tmp.replace(path)


def read_run_file(path: str | Path) -> dict:
    return json.loads(Path(path).read_text(encoding="utf-8"))
