"""Where MLflow runs go, what they are tagged with, and how stages find the training's run.

The store is ``MLFLOW_TRACKING_URI`` if set, else ``sqlite:///<workspace>/mlflow.db``
as an absolute path: DVC runs queued and ``--temp`` experiments in a copy under
``<workspace>/.dvc/tmp/exps/``, and their runs must still land in the user's store.
For the same reason a local SQLite store keeps its artifacts beside the database
(``<db folder>/mlruns/``), never under the current directory, MLflow's default.

Several processes may write one SQLite store at once (``dvc queue start -j 2``).
SQLite serialises their writes (MLflow sets a 20 s busy timeout); what it cannot
serialise are check-then-act steps: creating a new store's tables (MLflow does it
on first use, without a transaction) and its experiment, and moving the champion
alias. Those run under :func:`store_lock`, a file lock beside the database.

``mlflow`` is imported inside the functions that need it, so importing this
module stays cheap for the stages that only read the run file.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import json
import os
import re
import subprocess
import sys
import types
from pathlib import Path
from urllib.parse import unquote

from crackclf import CrackclfError, files

class TrackingError(CrackclfError):
    """The MLflow store cannot be reached or used: the work that needs it failed (exit 1)."""


EXPS_MARKER = (".dvc", "tmp", "exps")  # DVC 3: experiment copies live in <root>/.dvc/tmp/exps/[standalone/]tmpXXXX
ARTIFACTS_DIR = "mlruns"

# Tags of a training run (besides MLflow's own mlflow.source.git.commit and mlflow.runName).
TAG_DVC_EXPERIMENT = "dvc.experiment"
TAG_DVC_STAGE = "dvc.stage"


def _outside_exp_copy(path: Path) -> Path | None:
    """The project that owns ``path`` if ``path`` lies in one of DVC's experiment copies."""
    parts = path.parts
    for i in range(len(parts) - len(EXPS_MARKER)):
        if parts[i : i + len(EXPS_MARKER)] == EXPS_MARKER:
            return Path(*parts[:i])
    return None


def workspace_root(cwd: str | Path | None = None) -> Path:
    """The user's project root, also from inside a DVC temporary experiment copy.

    DVC 3.67 sets ``DVC_ROOT`` for every stage command, and for ``dvc exp run``
    (in the workspace, ``--temp`` or queued) points it at the user's repository,
    not at the copy the command runs in. Without DVC: the copy's owner if ``cwd``
    is inside ``.dvc/tmp/exps/``, else the nearest folder up that holds ``.dvc/``,
    else ``cwd``.
    """
    if env_root := os.environ.get("DVC_ROOT"):
        env_root = Path(env_root).resolve()
        return _outside_exp_copy(env_root) or env_root
    cwd = Path(cwd or Path.cwd()).resolve()
    if owner := _outside_exp_copy(cwd):
        return owner
    return next((d for d in (cwd, *cwd.parents) if (d / ".dvc").is_dir()), cwd)


def tracking_uri(cwd: str | Path | None = None) -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{workspace_root(cwd) / 'mlflow.db'}"


def configure(cwd: str | Path | None = None) -> str:
    """Point MLflow at the store (tracking and registry) and return its URI."""
    import mlflow

    uri = tracking_uri(cwd)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    return uri


def sqlite_file(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` URI, absolute; None for other stores and ``:memory:``."""
    prefix = "sqlite:///"
    db = unquote(uri[len(prefix):].split("?")[0]) if uri.startswith(prefix) else ""
    if not db or db == ":memory:":
        return None
    return Path(db).resolve()


def check_store(uri: str, must_exist: bool = True) -> None:
    """Fail fast, in one line, instead of MLflow's minutes of retries or (``must_exist``: train
    makes the store, the later stages only read it) a new empty database."""
    if uri.startswith(("http://", "https://")):
        import requests

        try:
            requests.get(uri.rstrip("/") + "/health", timeout=5).raise_for_status()
        except requests.RequestException as err:
            raise TrackingError(f"tracking server {uri} unreachable ({type(err).__name__})") from None
    elif must_exist and (db := sqlite_file(uri)) is not None and not db.is_file():
        raise TrackingError(f"no MLflow store at {db}")


def store_lock(uri: str, timeout: float = 300):
    """A lock for read-then-write steps on the store ``uri``, shared by this host's processes.

    ``<database>.lock`` beside a SQLite file; for other stores (a tracking server)
    ``.dvc/tmp/mlflow.lock`` in the workspace, which at least serialises the queued
    experiments of one workspace; a no-op lock where there is neither.
    """
    from filelock import FileLock

    if db := sqlite_file(uri):
        db.parent.mkdir(parents=True, exist_ok=True)
        return FileLock(db.with_name(db.name + ".lock"), timeout=timeout)
    dvc_tmp = workspace_root() / ".dvc" / "tmp"
    if dvc_tmp.parent.is_dir():
        dvc_tmp.mkdir(exist_ok=True)
        return FileLock(dvc_tmp / "mlflow.lock", timeout=timeout)
    return contextlib.nullcontext()


def artifact_root(uri: str) -> str | None:
    """Where a new experiment's artifacts go: beside a local SQLite file; else the store decides."""
    db = sqlite_file(uri)
    return str(db.parent / ARTIFACTS_DIR) if db else None


def experiment_id(name: str) -> str:
    """The id of experiment ``name``, created (or restored from the bin) if needed.

    Safe against concurrent runs doing the same (queued DVC experiments): under
    :func:`store_lock`, as the first access to a new SQLite store creates its tables,
    which MLflow does without a transaction ("table ... already exists" for all but one).
    """
    import mlflow
    from mlflow.exceptions import MlflowException

    uri = mlflow.get_tracking_uri()
    with store_lock(uri):
        client = mlflow.MlflowClient()
        for _ in range(2):
            exp = client.get_experiment_by_name(name)
            if exp is not None:
                if exp.lifecycle_stage == "deleted":
                    client.restore_experiment(exp.experiment_id)
                return exp.experiment_id
            root = artifact_root(uri)
            slug = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "experiment"
            try:
                return client.create_experiment(name, artifact_location=root and str(Path(root, slug)))
            except MlflowException:
                continue  # created by another host's process in between: read it back
    raise TrackingError(f"MLflow experiment {name!r} can be neither found nor created")


def fail_if_running(run_id: str) -> bool:
    """Mark a run that was killed without a chance to end itself (SIGKILL, power cut) as FAILED."""
    import mlflow
    from mlflow.exceptions import MlflowException

    client = mlflow.MlflowClient()
    try:
        if client.get_run(run_id).info.status != "RUNNING":
            return False
    except MlflowException:
        return False  # gone, or in another store
    client.set_terminated(run_id, status="FAILED")
    return True


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], capture_output=True, text=True, timeout=10, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip()


def run_tags() -> dict[str, str]:
    """Where a run comes from: git commit, DVC experiment and stage, library versions."""
    import keras

    backend = keras.backend.backend()
    tags = {"keras.version": keras.__version__, "keras.backend": backend}
    if backend in ("tensorflow", "jax", "torch"):
        tags[f"{backend}.version"] = importlib.import_module(backend).__version__
    # Under `dvc exp run` the copy's HEAD is a stash commit; the baseline is the commit the user ran from.
    commit = os.environ.get("DVC_EXP_BASELINE_REV") or _git("rev-parse", "HEAD")
    if commit:
        tags["mlflow.source.git.commit"] = commit
        if "DVC_EXP_NAME" not in os.environ:
            status = _git("status", "--porcelain", "--untracked-files=no")
            if status is not None:
                tags["git.dirty"] = str(bool(status)).lower()
    if name := os.environ.get("DVC_EXP_NAME"):
        tags[TAG_DVC_EXPERIMENT] = name
    if stage := os.environ.get("DVC_STAGE"):
        tags[TAG_DVC_STAGE] = stage
    return tags


def keras_backend() -> str:
    """Keras' backend, read the way Keras reads it, without importing Keras (and TensorFlow:
    10 s of publish's start-up) when nothing has yet."""
    if "keras" in sys.modules:
        return sys.modules["keras"].backend.backend()
    if name := os.environ.get("KERAS_BACKEND"):
        return name
    home = Path(os.environ.get("KERAS_HOME") or Path.home() / ".keras")
    try:
        return json.loads((home / "keras.json").read_text()).get("backend", "tensorflow")
    except (OSError, ValueError, AttributeError):
        return "tensorflow"


def pip_requirements() -> list[str]:
    """The pinned packages a logged model needs, read from this environment.

    Given explicitly, they spare ``log_model`` its requirement inference (about 5 s).
    """
    from importlib import metadata

    backend = {
        "tensorflow": ("tensorflow-cpu", "tensorflow"),
        "jax": ("jax", "jaxlib"),
        "torch": ("torch",),
    }.get(keras_backend(), ())
    reqs = []
    for names in (("keras",), ("numpy",), backend):
        for name in names:
            try:
                reqs.append(f"{name}=={metadata.version(name)}")
            except metadata.PackageNotFoundError:
                continue
            if names[0].startswith("tensorflow"):
                break  # tensorflow-cpu or tensorflow, whichever is installed
    return reqs


def _save_keras(path: str, **kwargs) -> None:
    # mlflow.keras.save_model writes the input example before it creates its folder
    # (mlflow issue 16183, still open in 3.17): create it first.
    import mlflow.keras

    os.makedirs(path, exist_ok=True)
    mlflow.keras.save_model(path=path, **kwargs)


def log_keras_model(model, input_example, registered_model: str | None = None):
    """Log ``model`` with the ``mlflow.keras`` flavour into the active run; register a version.

    Its signature is a float32 tensor (N, size, size, 1) of 0..255 pixels and one
    crack probability per image. Returns MLflow's ``ModelInfo``.
    """
    import keras
    import mlflow
    import numpy as np
    from mlflow.models import ModelSignature
    from mlflow.types.schema import Schema, TensorSpec

    signature = ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, *model.input_shape[1:]))]),
        outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, 1))]),
    )
    # mlflow.keras.log_model(...) is exactly Model.log(flavor=mlflow.keras, ...); this flavour
    # differs only by the folder fix above.
    flavor = types.SimpleNamespace(__name__="mlflow.keras", save_model=_save_keras)
    logging_on = keras.config.is_interactive_logging_enabled()
    keras.config.disable_interactive_logging()  # MLflow's check predicts on the example: no progress bars
    try:  # ...a switch per thread: on JAX, Keras predicts in a worker thread, whose bar would reach stdout
        with contextlib.redirect_stdout(io.StringIO()):
            return mlflow.models.Model.log(
                artifact_path=None,
                name="model",
                flavor=flavor,
                model=model,
                signature=signature,
                input_example=np.asarray(input_example, np.float32),
                registered_model_name=registered_model,
                pip_requirements=pip_requirements(),
            )
    finally:
        if logging_on:
            keras.config.enable_interactive_logging()


def write_run_file(path: str | Path, info: dict) -> None:
    """``info``: run_id, experiment_id, tracking_uri, registered_model, model_version."""
    files.write_json(path, info)


def training_run(run_file: str | Path):
    """(client, run id, run file, store URI) of the training run that ``run_file`` names, checked to be
    in the store that is configured now: the stages after train log into that run."""
    from mlflow import MlflowClient

    info = read_run_file(run_file)
    uri = configure()
    check_store(uri)
    client = MlflowClient()
    client.get_run(info["run_id"])  # fails early, with MLflow's message, if the run is not in this store
    return client, info["run_id"], info, uri


def read_run_file(path: str | Path) -> dict:
    return json.loads(Path(path).read_text(encoding="utf-8"))
