"""Where runs land (also from DVC's experiment copies), what they are tagged with, the run file."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import mlflow
import pytest

from crackclf import tracking
from workspace import run


def test_workspace_root_plain_folder(no_dvc_env, tmp_path):
    assert tracking.workspace_root(tmp_path) == tmp_path.resolve()


def test_workspace_root_is_the_nearest_dvc_project_up(no_dvc_env, tmp_path):
    (tmp_path / ".dvc").mkdir()
    (tmp_path / "src" / "deep").mkdir(parents=True)
    assert tracking.workspace_root(tmp_path / "src" / "deep") == tmp_path.resolve()


@pytest.mark.parametrize("copy", ["tmpab12cd", "standalone/tmpab12cd"])  # queued / --temp in DVC 3.67
def test_workspace_root_from_an_experiment_copy(no_dvc_env, tmp_path, copy):
    inner = tmp_path / ".dvc" / "tmp" / "exps" / copy
    (inner / ".dvc").mkdir(parents=True)  # the copy is a DVC project of its own
    assert tracking.workspace_root(inner) == tmp_path.resolve()
    assert tracking.tracking_uri(inner) == f"sqlite:///{tmp_path.resolve() / 'mlflow.db'}"


def test_dvc_root_wins_and_env_uri_wins_over_all(no_dvc_env, monkeypatch, tmp_path):
    monkeypatch.setenv("DVC_ROOT", str(tmp_path / "project"))
    assert tracking.workspace_root(tmp_path / "elsewhere") == (tmp_path / "project").resolve()
    monkeypatch.setenv("DVC_ROOT", str(tmp_path / "project" / ".dvc" / "tmp" / "exps" / "tmpx"))
    assert tracking.workspace_root() == (tmp_path / "project").resolve()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert tracking.tracking_uri() == "http://127.0.0.1:5000"


PROBE = """
import json, os
from crackclf import tracking
json.dump({"cwd": os.getcwd(), "uri": tracking.tracking_uri()}, open(os.environ["PROBE_OUT"], "w"))
"""


def test_dvc_temp_experiment_logs_to_the_users_store(no_dvc_env, tmp_path):
    """A real `dvc exp run --temp`: the stage runs in a copy, the store stays in the project."""
    repo = tmp_path / "project"
    repo.mkdir()
    probe_out = tmp_path / "seen.json"
    (repo / "probe.py").write_text(textwrap.dedent(PROBE))
    (repo / "params.yaml").write_text("x: 1\n")
    (repo / "dvc.yaml").write_text(
        f"stages:\n  probe:\n    cmd: {sys.executable} probe.py\n    deps: [probe.py]\n    params: [x]\n"
    )
    run(repo, "git", "init", "-q")
    run(repo, "dvc", "init", "-q")
    run(repo, "git", "add", "-A")
    run(repo, "git", "commit", "-qm", "probe")
    run(repo, "dvc", "exp", "run", "--temp", "-S", "x=2", PROBE_OUT=str(probe_out))
    seen = json.loads(probe_out.read_text())
    assert Path(seen["cwd"]).is_relative_to(repo / ".dvc" / "tmp" / "exps")
    assert seen["uri"] == f"sqlite:///{repo.resolve() / 'mlflow.db'}"


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("sqlite:////data/runs/mlflow.db", "/data/runs/mlruns"),
        ("sqlite:///:memory:", None),
        ("http://127.0.0.1:5000", None),
        ("databricks", None),
    ],
)
def test_artifact_root(uri, expected):
    assert tracking.artifact_root(uri) == expected


def test_artifact_root_of_a_relative_sqlite_path(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    assert tracking.artifact_root("sqlite:///sub/mlflow.db") == str(tmp_path.resolve() / "sub" / "mlruns")


@pytest.fixture
def store(no_dvc_env, monkeypatch, tmp_path) -> str:
    uri = f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}"
    (tmp_path / "store").mkdir()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.chdir(tmp_path)
    assert tracking.configure() == uri
    return uri


def test_experiment_keeps_artifacts_beside_its_store(store, tmp_path):
    exp_id = tracking.experiment_id("crack / tries")
    assert tracking.experiment_id("crack / tries") == exp_id
    location = mlflow.MlflowClient().get_experiment(exp_id).artifact_location
    assert Path(location.removeprefix("file://")) == tmp_path / "store" / "mlruns" / "crack_tries"
    mlflow.MlflowClient().delete_experiment(exp_id)
    assert tracking.experiment_id("crack / tries") == exp_id  # restored, not a name clash
    with mlflow.start_run(experiment_id=exp_id):
        mlflow.log_text("hello", "note.txt")
    assert (tmp_path / "store" / "mlruns" / "crack_tries").is_dir()
    assert not (tmp_path / "mlruns").exists()


def test_fail_if_running(store):
    exp_id = tracking.experiment_id("e")
    run = mlflow.MlflowClient().create_run(exp_id)  # as left by a killed process: RUNNING
    assert tracking.fail_if_running(run.info.run_id) is True
    assert mlflow.MlflowClient().get_run(run.info.run_id).info.status == "FAILED"
    assert tracking.fail_if_running(run.info.run_id) is False
    assert tracking.fail_if_running("0" * 32) is False


def test_run_tags_under_dvc_exp_run(no_dvc_env, monkeypatch):
    monkeypatch.setenv("DVC_EXP_NAME", "bushy-lamb")
    monkeypatch.setenv("DVC_EXP_BASELINE_REV", "a" * 40)
    monkeypatch.setenv("DVC_STAGE", "train")
    tags = tracking.run_tags()
    assert tags[tracking.TAG_DVC_EXPERIMENT] == "bushy-lamb"
    assert tags[tracking.TAG_DVC_STAGE] == "train"
    assert tags["mlflow.source.git.commit"] == "a" * 40
    assert tags["keras.backend"] == "tensorflow" and tags["tensorflow.version"]


def test_run_tags_outside_git(no_dvc_env, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path.parent))
    tags = tracking.run_tags()
    assert "mlflow.source.git.commit" not in tags and tracking.TAG_DVC_EXPERIMENT not in tags


def test_pip_requirements_pin_this_environment():
    from importlib import metadata

    reqs = tracking.pip_requirements()
    assert f"keras=={metadata.version('keras')}" in reqs
    assert any(r.startswith(("tensorflow-cpu==", "tensorflow==")) for r in reqs)


def test_keras_backend_is_read_as_keras_reads_it_without_importing_it(tmp_path):
    probe = ("import sys; from crackclf import tracking; print(tracking.keras_backend(), 'keras' in sys.modules, "
             "'tensorflow' in sys.modules)")
    home = tmp_path / "keras-home"
    home.mkdir()
    (home / "keras.json").write_text('{"backend": "jax"}')
    env = {k: v for k, v in os.environ.items() if k not in ("KERAS_BACKEND", "KERAS_HOME")}
    ask = lambda **e: subprocess.run([sys.executable, "-c", probe], env={**env, **e}, capture_output=True,  # noqa: E731
                                     text=True, check=True).stdout.split()
    assert ask(KERAS_HOME=str(home)) == ["jax", "False", "False"]
    assert ask(KERAS_HOME=str(home), KERAS_BACKEND="torch") == ["torch", "False", "False"]
    assert ask(KERAS_HOME=str(tmp_path / "none")) == ["tensorflow", "False", "False"]


def test_run_file_round_trip(tmp_path):
    info = {"run_id": "r", "experiment_id": "1", "tracking_uri": "sqlite:///x.db",
            "registered_model": "crackclf", "model_version": 3}
    tracking.write_run_file(tmp_path / "models" / "mlflow_run.json", info)
    assert tracking.read_run_file(tmp_path / "models" / "mlflow_run.json") == info
    assert [p.name for p in (tmp_path / "models").iterdir()] == ["mlflow_run.json"]


def test_store_lock_lies_beside_the_store(tmp_path, monkeypatch):
    monkeypatch.delenv("DVC_ROOT", raising=False)
    lock = tracking.store_lock(f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}")
    assert Path(lock.lock_file) == tmp_path / "runs" / "mlflow.db.lock"
    (tmp_path / "project" / ".dvc").mkdir(parents=True)
    monkeypatch.chdir(tmp_path / "project")  # a tracking server: queued experiments of one workspace share a lock
    assert Path(tracking.store_lock("http://127.0.0.1:5000").lock_file) == tmp_path / "project/.dvc/tmp/mlflow.lock"
