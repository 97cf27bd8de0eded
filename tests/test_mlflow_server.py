"""The MLflow UI's view of the project's store: after two trainings, a real ``mlflow server`` over
the same SQLite file answers, through its REST API, with both runs, their params, per-epoch
curves, tags, logged models and registered versions: what the UI and its run comparison draw.
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import requests
import yaml
from PIL import Image

import synth
from crackclf import config, dataset, train
from contracts import backend_gpus, check_device_tags
from mlflow_server import RestAPI, mlflow_server, tracking_to
from workspace import merge

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]
EPOCHS = 3
RUNS = {"lr-2e-3": 0.002, "lr-5e-4": 0.0005}  # run name (as `dvc exp run` names it) -> learning rate


@pytest.fixture(scope="module")
def project(prepared_dir, tmp_path_factory) -> dict:
    """Two tiny trainings into a project's store, named like DVC experiments."""
    root = tmp_path_factory.mktemp("project")
    runs = {}
    with tracking_to(f"sqlite:///{root / 'mlflow.db'}"), pytest.MonkeyPatch.context() as mp:
        for name, lr in RUNS.items():
            params = config.parse(merge(synth.TINY_PARAMS, {"train": {"learning_rate": lr, "epochs": EPOCHS}}))
            mp.setenv("DVC_EXP_NAME", name)  # what `dvc exp run` sets for the stage
            out = root / name
            result = train.run(params, prepared_dir, out / "model.keras", out / "train.json",
                               out / "history.csv", out / "mlflow_run.json")
            runs[name] = {"params": params, **result}
    return {"root": root, "runs": runs}


@pytest.fixture(scope="module")
def api(project, tmp_path_factory):
    """``mlflow server`` over the project's store, as `mlflow ui` would serve it; yields its REST root."""
    store = f"sqlite:///{project['root'] / 'mlflow.db'}"
    with mlflow_server(tmp_path_factory.mktemp("server"), backend_uri=store) as url:
        yield RestAPI(url)


def runs_by_name(api: RestAPI) -> dict[str, dict]:
    exp = api.get("experiments/get-by-name", experiment_name="crackclf")["experiment"]
    found = api.post("runs/search", {"experiment_ids": [exp["experiment_id"]], "max_results": 100})["runs"]
    return {r["info"]["run_name"]: r for r in found}


def as_dict(items: list[dict]) -> dict:
    return {i["key"]: i["value"] for i in items}


def test_the_ui_is_served(api):
    page = requests.get(api.url, timeout=30)
    assert page.status_code == 200 and "<title>MLflow</title>" in page.text


def test_both_runs_with_their_params_and_tags(api, project, prepared_dir):
    runs = runs_by_name(api)
    assert set(runs) == set(RUNS)
    head = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True)  # where the runs trained
    gpus = backend_gpus()  # what the trainings in this process saw
    for name, expected in project["runs"].items():
        run = runs[name]
        assert run["info"]["run_id"] == expected["run"]["run_id"]
        assert run["info"]["status"] == "FINISHED"

        params = as_dict(run["data"]["params"])
        flat = config.flatten(expected["params"])
        assert {k: params[k] for k in flat} == {k: str(v) for k, v in flat.items()}
        assert params["train.learning_rate"] == str(RUNS[name])
        assert params["data.train_images"] == str(len(dataset.load_split(prepared_dir, "train")[1]))

        tags = as_dict(run["data"]["tags"])
        assert tags["dvc.experiment"] == name
        check_device_tags(tags, gpus)  # "N x <GPU>" and device.count N on N GPUs, else "CPU ... (n cores)"
        assert tags["keras.backend"] == "tensorflow" and tags["keras.version"] and tags["tensorflow.version"]
        if head.returncode == 0:
            assert tags["mlflow.source.git.commit"] == head.stdout.strip()


def test_per_epoch_curves_and_summary_metrics(api, project):
    runs = runs_by_name(api)
    for name, expected in project["runs"].items():
        run_id = expected["run"]["run_id"]
        for key in train.METRICS:
            points = api.get("metrics/get-history", run_id=run_id, metric_key=key)["metrics"]
            assert [p["step"] for p in points] == list(range(1, EPOCHS + 1))
            assert [p["value"] for p in points] == pytest.approx([row[key] for row in expected["history"]])
        latest = as_dict(runs[name]["data"]["metrics"])
        best = expected["metrics"]["best"]
        assert latest["best_val_loss"] == pytest.approx(best["val_loss"], abs=1e-6)
        assert latest["epochs"] == EPOCHS and latest["images_per_s"] > 0


def test_logged_models_and_registered_versions(api, project):
    exp_id = next(iter(project["runs"].values()))["run"]["experiment_id"]
    models = api.post("logged-models/search", {"experiment_ids": [exp_id]})["models"]
    by_run = {m["info"]["source_run_id"]: m["info"] for m in models}
    versions = {v["run_id"]: v for v in api.get("model-versions/search", filter="name='crackclf'")["model_versions"]}
    for expected in project["runs"].values():
        run_id = expected["run"]["run_id"]
        model = by_run[run_id]
        assert model["status"] == "LOGGED_MODEL_READY" and model["name"] == "model"

        files = {f["path"] for f in api.get(f"logged-models/{model['model_id']}/artifacts/directories")["files"]}
        assert {"MLmodel", "data", "requirements.txt", "input_example.json"} <= files
        mlmodel = requests.get(f"{api.url}/ajax-api/2.0/mlflow/logged-models/{model['model_id']}/artifacts/files",
                               params={"artifact_file_path": "MLmodel"}, timeout=30)
        assert mlmodel.status_code == 200
        spec = yaml.safe_load(mlmodel.text)
        assert {"keras", "python_function"} <= set(spec["flavors"])
        tensor = yaml.safe_load(spec["signature"]["inputs"])[0]["tensor-spec"]
        size = synth.TINY_PARAMS["preprocess"]["image_size"]
        assert tensor == {"dtype": "float32", "shape": [-1, size, size, 1]}

        version = versions[run_id]
        assert version["version"] == str(expected["run"]["model_version"])
        assert version["status"] == "READY" and version["source"] == f"models:/{model['model_id']}"


CHROMIUM = shutil.which("chromium") or next((p for p in ("/usr/bin/chromium",) if Path(p).is_file()), None)
IN_CI = os.environ.get("CI", "").lower() not in ("", "0", "false", "no")


@pytest.mark.skipif(not CHROMIUM and not IN_CI, reason="needs Debian's chromium (apt-get install chromium)")
def test_screenshot_script_draws_the_comparison(project, tmp_path):
    assert CHROMIUM, "CI needs Debian's chromium for docs/screenshot.py (.ci/run installs it)"
    out = tmp_path / "compare.png"
    done = subprocess.run(
        [sys.executable, str(REPO / "docs" / "screenshot.py"), "--store", f"sqlite:///{project['root'] / 'mlflow.db'}",
         "--run", "lr-2e-3", "--run", "lr-5e-4", "--out", str(out), "--chromium", CHROMIUM],
        capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "lr-2e-3" in done.stdout and "lr-5e-4" in done.stdout
    with Image.open(out) as image:
        assert image.width == 1600 and image.height >= 1000 + 700  # the comparison, then the curves
        grey = np.asarray(image.convert("L"), np.float32)
    for part in (grey[:1000], grey[-700:]):
        assert part.std() > 10  # drawn pages, not blank ones
