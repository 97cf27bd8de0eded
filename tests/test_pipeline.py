"""End to end, as a user runs it: `dvc repro` in a fresh git + DVC workspace.

The dataset is a synthetic zip served over HTTP on 127.0.0.1, so the real download
code runs; the model is the tiny 48 px one, so the whole pipeline takes about a minute.
"""

from __future__ import annotations

import ast
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

import synth
from httpserver import FileServer
from crackclf import cli
from crackclf.files import sha256
from workspace import REPO, run, served_workspace

STAGES = ("download", "preprocess", "train", "evaluate", "publish", "photos", "predict")


def _crackclf_imports(module: str) -> set[str]:
    """The crackclf modules ``module`` imports anywhere in its code (by import statement or quiet_import)."""
    src = REPO / "src" / "crackclf"
    found = set()
    for node in ast.walk(ast.parse((src / f"{module}.py").read_text())):
        if isinstance(node, ast.ImportFrom) and node.module == "crackclf":
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("crackclf."):
            found.add(node.module.split(".")[1])
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value.startswith("crackclf."):
            found.add(node.value.split(".")[1])
        elif isinstance(node, ast.Import):
            found |= {a.name.split(".")[1] for a in node.names if a.name.startswith("crackclf.")}
    return {m for m in found if (src / f"{m}.py").is_file()}


def test_every_stage_depends_on_the_modules_it_runs():
    """Exactly the modules a stage runs: a change to one reruns it, a change elsewhere does not.

    config.py and process.py too, because the CLI validates params.yaml and runs every stage stoppable.
    """
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    assert tuple(stages) == STAGES
    for stage, spec in stages.items():
        command = spec["cmd"].split()[1]
        needed, todo = {"config", "process"}, [cli.COMMANDS.get(command, (command,))[0]]
        while todo:
            module = todo.pop()
            needed.add(module)
            todo += _crackclf_imports(module) - needed
        deps = {d.removeprefix("src/crackclf/").removesuffix(".py") for d in spec["deps"] if d.startswith("src/")}
        assert needed == deps, f"{stage}: dvc.yaml lacks {sorted(needed - deps)}, lists {sorted(deps - needed)} it never runs"


@pytest.fixture(scope="module")
def server():
    with FileServer() as srv:
        yield srv


PHOTOS = {"bridge": (700, 500, [(0, 0, 227), (400, 250, 227)]), "wall": (463, 461, [])}


@pytest.fixture(scope="module")
def photo_set(tmp_path_factory):
    """A photo set with masks outside the workspace, as photos.dir may name one."""
    return synth.write_photo_set(tmp_path_factory.mktemp("photo-set") / "site", PHOTOS)


@pytest.fixture(scope="module")
def workspace(server, tmp_path_factory, photo_set):
    return served_workspace(tmp_path_factory, server, seed=3, evaluate={"threshold": "f1"},
                            photos={"dir": str(photo_set)})


@pytest.fixture(scope="module")
def first_repro(workspace):
    return run(workspace, "dvc", "repro")


def ran(proc) -> set[str]:
    text = proc.stdout + proc.stderr
    return {s for s in STAGES if f"Running stage '{s}'" in text}


@pytest.mark.slow
def test_repro_runs_every_stage_and_learns(workspace, first_repro):
    assert ran(first_repro) == set(STAGES)
    data = json.loads((workspace / "metrics/data.json").read_text())
    assert data["images"] == 200 and data["splits"]["test"] == {"no_crack": 20, "crack": 20, "total": 40}
    x = np.load(workspace / "data/prepared/train_images.npy", mmap_mode="r")
    assert x.shape == (120, 48, 48, 1) and x.dtype == np.uint8
    evaluation = json.loads((workspace / "metrics/eval.json").read_text())
    assert evaluation["n_test"] == 40  # 2 of the 10 blocks of each class
    assert evaluation["accuracy"] >= 0.8, evaluation
    with Image.open(workspace / "predictions/example.png") as img:
        assert img.format == "PNG" and img.width > 200
    rows = (workspace / "predictions/example.csv").read_text().splitlines()
    assert rows[0].startswith("path,probability,label") and len(rows) == 1 + 2 * 4


@pytest.mark.slow
def test_mlflow_run_registered_in_the_workspace_store(workspace, first_repro):
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{workspace / 'mlflow.db'}")
    info = json.loads((workspace / "models/mlflow_run.json").read_text())
    run_ = client.get_run(info["run_id"])
    assert run_.info.status == "FINISHED"
    assert run_.data.params["train.learning_rate"] == str(synth.TINY_PARAMS["train"]["learning_rate"])
    assert "test_f1" in run_.data.metrics and "val_loss" in run_.data.metrics
    version = client.get_model_version_by_alias("crackclf", "champion")
    assert version.run_id == info["run_id"]


@pytest.mark.slow
def test_photo_set_outside_the_workspace_is_scored_and_tracked(workspace, first_repro, photo_set):
    import mlflow

    metrics = json.loads((workspace / "metrics/photos.json").read_text())
    assert metrics["photos"] == len(PHOTOS) and {"precision", "recall", "f1"} <= set(metrics)
    shown = json.loads(run(workspace, "dvc", "metrics", "show", "--json").stdout)
    assert "metrics/photos.json" in json.dumps(shown)
    run_id = json.loads((workspace / "models/mlflow_run.json").read_text())["run_id"]
    logged = mlflow.MlflowClient(f"sqlite:///{workspace / 'mlflow.db'}").get_run(run_id).data.metrics
    assert logged["photo_scored_tiles"] == metrics["scored_tiles"]
    mask = photo_set / "masks" / "bridge.png"
    before = mask.read_bytes()
    try:  # a changed mask outside the workspace reruns the stage
        Image.new("L", Image.open(mask).size, 0).save(mask)
        assert "photos" in json.loads(run(workspace, "dvc", "status", "--json").stdout)
    finally:
        mask.write_bytes(before)
    assert json.loads(run(workspace, "dvc", "status", "--json").stdout) == {}


@pytest.mark.slow
def test_second_repro_does_nothing(workspace, first_repro):
    again = run(workspace, "dvc", "repro")
    assert ran(again) == set(), again.stdout
    assert "up to date" in run(workspace, "dvc", "status").stdout


@pytest.mark.slow
def test_an_image_size_change_reruns_preprocess_not_download(workspace, first_repro):
    assert json.loads(run(workspace, "dvc", "status", "--json").stdout) == {}
    params = workspace / "params.yaml"
    text = params.read_text()
    params.write_text(text.replace("image_size: 48", "image_size: 40"))
    try:
        changed = json.loads(run(workspace, "dvc", "status", "--json").stdout)
        assert "preprocess" in changed and "download" not in changed
        assert "train" in changed  # reads preprocess.image_size too
    finally:
        params.write_text(text)
    assert json.loads(run(workspace, "dvc", "status", "--json").stdout) == {}


def digests(root: Path, paths: list[str]) -> dict[str, str]:
    """sha256 of every file under ``paths`` (files or folders), by path relative to ``root``."""
    files = [p for rel in paths for p in ([root / rel] if (root / rel).is_file() else (root / rel).rglob("*"))]
    return {str(p.relative_to(root)): sha256(p) for p in files if p.is_file()}


@pytest.mark.slow
def test_dvc_remote_round_trips_data_and_model(workspace, first_repro, tmp_path):
    tracked = ["data/raw", "data/prepared", "models/model.keras", "plots/eval/roc.png", "predictions/example.png"]
    before = digests(workspace, tracked)
    assert {"data/prepared/train_images.npy", "models/model.keras"} <= set(before)
    assert any(p.startswith("data/raw/") for p in before)

    remote = tmp_path / "remote"
    run(workspace, "dvc", "remote", "add", "-d", "storage", str(remote))
    try:
        pushed = re.search(r"(\d+) files? pushed", run(workspace, "dvc", "push").stdout)
        assert pushed and int(pushed[1]) >= len(before)  # the files, and a listing per folder
        assert sum(1 for p in remote.rglob("*") if p.is_file()) == int(pushed[1])

        # A teammate's fresh clone: no outputs and no cache, only git's files and the remote.
        for rel in tracked:
            path = workspace / rel
            shutil.rmtree(path) if path.is_dir() else path.unlink()
        shutil.rmtree(workspace / ".dvc" / "cache")
        run(workspace, "dvc", "pull")
        assert digests(workspace, tracked) == before
        status = run(workspace, "dvc", "status", "--json").stdout
        assert json.loads(status) == {}  # every stage up to date: nothing to retrain
    finally:
        run(workspace, "dvc", "remote", "remove", "storage")


@pytest.mark.slow
def test_a_train_param_reruns_train_and_below_only(workspace, first_repro):
    """Last in this module: the workspace is not brought back to the first state (a repro less)."""
    lock = (workspace / "dvc.lock").read_text()
    params = workspace / "params.yaml"
    params.write_text(params.read_text().replace("learning_rate: 0.002", "learning_rate: 0.003"))
    assert ran(run(workspace, "dvc", "repro")) == {"train", "evaluate", "publish", "photos", "predict"}
    assert lock != (workspace / "dvc.lock").read_text()
