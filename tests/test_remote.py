"""Team scale: the pipeline logs to a tracking server when MLFLOW_TRACKING_URI names one, and
nothing MLflow goes into the workspace. (The DVC remote round trip runs in test_pipeline.py, on its
reproduced workspace.)
"""

import json

import keras
import numpy as np
import pytest

import synth
from crackclf import config, dataset, evaluate, inference, train
from mlflow_server import RestAPI, mlflow_server, tracking_to
from workspace import merge

pytestmark = pytest.mark.slow


def test_pipeline_logs_runs_and_models_to_a_tracking_server(prepared_dir, tmp_path, monkeypatch, no_dvc_env):
    ws = tmp_path / "workspace"
    (ws / ".dvc").mkdir(parents=True)  # a DVC project: its default store would be ws/mlflow.db
    monkeypatch.chdir(ws)
    epochs = 3
    params = config.parse(merge(synth.TINY_PARAMS, {"train": {"epochs": epochs}}))
    out = {"model": ws / "models" / "model.keras", "run_file": ws / "models" / "mlflow_run.json"}

    server_root = tmp_path / "server"
    with mlflow_server(server_root) as url, tracking_to(url):
        result = train.run(params, prepared_dir, out["model"], ws / "metrics" / "train.json",
                           ws / "plots" / "history.csv", out["run_file"])
        metrics = evaluate.run(params, prepared_dir, out["model"], ws / "metrics" / "eval.json",
                               ws / "plots" / "eval", ws / "models" / "threshold.json", out["run_file"])
        info = json.loads(out["run_file"].read_text())
        assert info["tracking_uri"] == url and info["run_id"] == result["run"]["run_id"]

        api = RestAPI(url)
        got = api.get("runs/get", run_id=info["run_id"])["run"]
        assert got["info"]["status"] == "FINISHED"
        logged = {m["key"]: m["value"] for m in got["data"]["metrics"]}
        assert logged["test_f1"] == pytest.approx(metrics["f1"], abs=1e-6)
        history = api.get("metrics/get-history", run_id=info["run_id"], metric_key="val_loss")["metrics"]
        assert [p["step"] for p in history] == list(range(1, epochs + 1))
        # The run's artifacts went through the server's proxy (mlflow-artifacts:/), not to a local path.
        assert got["info"]["artifact_uri"].startswith("mlflow-artifacts:/")
        listed = api.get("artifacts/list", run_id=info["run_id"], path="eval")["files"]
        assert "eval/roc.png" in {f["path"] for f in listed}
        version = api.get("registered-models/alias", name="crackclf", alias="champion")["model_version"]
        assert version["version"] == str(info["model_version"]) and version["run_id"] == info["run_id"]

        # The champion comes back through the server and predicts like the file the stage wrote.
        x = np.asarray(dataset.load_split(prepared_dir, "test")[0][:16], np.float32)
        written = keras.saving.load_model(out["model"]).predict(x, verbose=0)
        champion = inference.load_model("models:/crackclf@champion", "keras")  # the registered Keras model
        np.testing.assert_allclose(champion.net.predict(x, verbose=0), written, rtol=1e-6, atol=1e-7)
        champion = inference.load_model("models:/crackclf@champion")  # what `crackclf predict --model` loads
        assert champion.runtime == "onnx"  # the run's ONNX copy, downloaded through the server
        np.testing.assert_allclose(champion.predict(x, 16), written[:, 0], rtol=0, atol=1e-5)

    # The files are in the server's artifact store and nothing MLflow went into the workspace.
    assert list((server_root / "artifacts").rglob("MLmodel")) and list((server_root / "artifacts").rglob("roc.png"))
    assert sorted(p.name for p in ws.iterdir()) == [".dvc", "metrics", "models", "plots"]
    assert not list(ws.rglob("mlflow.db")) and not list(ws.rglob("mlruns")) and not list(ws.rglob("mlartifacts"))
