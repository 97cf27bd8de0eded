"""Benchmark: `mlflow models serve` of a registered crackclf model against the same model in process.

Prints, measured in the same run on the same model and pixel arrays:
  - seconds until the scoring server answers /ping (process start, imports, model load);
  - one HTTP request per batch of 1, 64 and 256 images (JSON pixel tensors, median of
    several requests), side by side with ``model.predict_on_batch`` on the same arrays in
    this warm process: what the HTTP and JSON layers add.

Images: ../shared/data/crack-sample beside the repo (linked, never copied) if present, else synthetic.
Model: --model (default models/model.keras); if missing, a quick one is trained here.
It is logged and registered in a temporary MLflow store, as train does.

    python bench/serve.py [--model FILE] [--images DIR]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "bench"), str(REPO / "tests")]

from predict import image_folder, quick_model  # noqa: E402 - bench/predict.py

BATCHES = {1: 20, 64: 5, 256: 3}  # images per request: requests timed


def median_s(call, times: int) -> float:
    call()  # warm-up: graph tracing, connection
    runs = []
    for _ in range(times):
        t = time.perf_counter()
        call()
        runs.append(time.perf_counter() - t)
    return statistics.median(runs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=REPO / "models" / "model.keras")
    ap.add_argument("--images", type=Path, help="folder with Positive/ and Negative/ (default: the shared sample)")
    opts = ap.parse_args()

    import mlflow
    import numpy as np
    import requests
    from mlflow_server import models_serve

    from crackclf import imaging, inference, tracking

    n = max(BATCHES)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        folder, described = image_folder(opts.images, n, tmp)
        model_path = opts.model
        if not model_path.is_file():
            model_path = tmp / "quick.keras"
            quick_model(folder, model_path)
        model = inference.load_model(model_path)
        size = model.size
        files = sorted(p for p in folder.rglob("*") if imaging.is_image_path(p))[:n]
        x = np.stack([imaging.load_patch(f, size) for f in files])

        uri = f"sqlite:///{tmp / 'mlflow.db'}"
        mlflow.set_tracking_uri(uri)
        mlflow.set_registry_uri(uri)
        with mlflow.start_run():
            version = tracking.log_keras_model(model.net, x[:1], registered_model="bench").registered_model_version
        print(f"images: {described}\nmodel:  {model_path} ({size} px input), registered as models:/bench/{version}\n"
              f"{os.cpu_count()} CPU cores\n")

        rows = []
        with models_serve(f"models:/bench/{version}", uri, tmp / "serve.log") as (url, startup_s):
            session = requests.Session()
            for batch, times in BATCHES.items():
                body = {"inputs": x[:batch].tolist()}

                def request():
                    answer = session.post(f"{url}/invocations", json=body, timeout=120)
                    answer.raise_for_status()
                    return answer

                served = np.asarray(request().json()["predictions"], np.float64)[:, 0]
                local = np.asarray(model.net.predict_on_batch(x[:batch].astype(np.float32)), np.float64)[:, 0]
                np.testing.assert_allclose(served, local, atol=1e-5)  # the same answers, or no timing
                rows.append((batch, median_s(request, times),
                             median_s(lambda: model.net.predict_on_batch(x[:batch].astype(np.float32)), times)))

    print(f"mlflow models serve: answers /ping {startup_s:.1f} s after start\n")
    print(f"{'images per request':>18s} {'served ms':>10s} {'images/s':>9s} {'in process ms':>14s} "
          f"{'images/s':>9s} {'HTTP+JSON adds':>15s}")
    for batch, served, local in rows:
        print(f"{batch:18d} {1000 * served:10.1f} {batch / served:9.0f} {1000 * local:14.1f} "
              f"{batch / local:9.0f} {1000 * (served - local):12.1f} ms")


if __name__ == "__main__":
    main()
