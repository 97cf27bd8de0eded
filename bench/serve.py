"""Benchmark: serving a crackclf model over HTTP, every way the project offers, in one run.

Prints, measured in the same run on the same model and image files:
  1. ``mlflow models serve`` of the Keras model, fed JSON pixel tensors (the old path), and
  2. ``mlflow models serve`` of the images model (``crackclf.pyfunc``: base64 file bytes in),
     one request per batch of 1, 64 and 256 patches (median of several requests), and one
     whole 4608x3456 photo, side by side with the same work in this warm process
     (``predict_on_batch`` on pixels; the images model's ``predict`` on bytes);
  3. ``crackclf serve``'s ``POST /api/predict``: images/s for one patch per request at 1 and 16
     concurrent clients (a bounded load test on loopback: a fixed number of requests, any
     error fails the run), and one whole photo;
  4. the page of ``crackclf serve`` in headless Chromium (when Debian's chromium is there):
     seconds from choosing files to the crack map shown, for the whole photo and for 20 patches.

Images: ../shared/data/crack-sample beside the repo (linked, never copied) if present, else
synthetic; the whole photo is made of those patches (so its tiles are real texture).
Model: --model (default models/model.keras); if missing, a quick one is trained here. It is
logged and registered in a temporary MLflow store, as train and evaluate do.

    python bench/serve.py [--model FILE] [--images DIR] [--no-page]
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "bench"), str(REPO / "tests"), str(REPO / "docs")]

from predict import image_folder, quick_model  # noqa: E402 - bench/predict.py

BATCHES = {1: 20, 64: 5, 256: 3}  # images per request: requests timed
PIXEL_TIMES = {1: 10, 64: 3, 256: 1}  # the pixel path is slow: fewer rounds
PHOTO_SIZE = (4608, 3456)
LOAD = {1: 150, 16: 480}  # concurrent clients: requests sent (bounded load test)
PAGE_PATCHES = 20


@contextlib.contextmanager
def models_serve(model_uri: str, store: str, log_path: Path) -> Iterator[tuple[str, float]]:
    """``mlflow models serve`` as tests/mlflow_server.py runs it, with a request timeout long enough for
    a 256-image pixel request on a busy machine (MLflow's default, 60 s, answers 504)."""
    from httpserver import free_port
    from mlflow_server import MLFLOW, running, server_env

    port = free_port()
    cmd = [MLFLOW, "models", "serve", "-m", model_uri, "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port)]
    env = server_env(MLFLOW_TRACKING_URI=store, MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT="900")
    with running(cmd, f"http://127.0.0.1:{port}/ping", log_path, timeout=300, env=env) as startup_s:
        yield f"http://127.0.0.1:{port}", startup_s


def median_s(call, times: int) -> float:
    call()  # warm-up: graph tracing, connection
    runs = []
    for _ in range(times):
        t = time.perf_counter()
        call()
        runs.append(time.perf_counter() - t)
    return statistics.median(runs)


def whole_photo(files: list[Path], path: Path) -> bytes:
    """A 4608x3456 JPEG tiled from the patches: real texture, the size of a phone camera's photo."""
    from PIL import Image

    photo = Image.new("RGB", PHOTO_SIZE)
    i = 0
    for y in range(0, PHOTO_SIZE[1], 227):
        for x in range(0, PHOTO_SIZE[0], 227):
            with Image.open(files[i % len(files)]) as patch:
                photo.paste(patch.convert("RGB"), (x, y))
            i += 1
    photo.save(path, quality=90)
    return path.read_bytes()


def load_test(url: str, bodies: list[bytes], clients: int, requests_n: int, limit_s: float = 120) -> tuple[float, int]:
    """``requests_n`` one-patch requests from ``clients`` threads; (images/s, errors). Bounded in time too."""
    import requests

    deadline = time.monotonic() + limit_s
    errors = 0

    def worker(k: int) -> int:
        nonlocal errors
        done = 0
        with requests.Session() as session:
            for i in range(k, requests_n, clients):
                if time.monotonic() > deadline:
                    break
                r = session.post(f"{url}/api/predict", files=[("files", (f"{i}.jpg", bodies[i % len(bodies)]))],
                                 timeout=60)
                if r.status_code != 200 or r.json()[0]["error"]:
                    errors += 1
                done += 1
        return done

    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        done = sum(pool.map(worker, range(clients)))
    return done / (time.perf_counter() - start), errors + (requests_n - done)


def page_times(url: str, photo: Path, patches: list[Path]) -> tuple[float, float] | None:
    """Seconds from choosing files to every crack map shown: one whole photo; ``PAGE_PATCHES`` patches."""
    from screenshot import CHROMIUM_ARGS, find_chromium

    exe = find_chromium()
    if exe is None:
        return None
    from playwright.sync_api import sync_playwright

    out = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=exe, headless=True, args=CHROMIUM_ARGS)
        for files in ([photo], patches):
            page = browser.new_page(viewport={"width": 1100, "height": 900})
            page.set_default_timeout(300_000)
            page.goto(url)
            page.wait_for_function("document.getElementById('model').textContent.includes('threshold')")
            start = time.perf_counter()
            page.set_input_files("#files", [str(f) for f in files])
            page.wait_for_function(f"document.querySelectorAll('.card[data-state=done]').length === {len(files)}",
                                   polling=20)
            out.append(time.perf_counter() - start)
            if page.locator(".card[data-state=error]").count():
                raise RuntimeError("the page showed an error")
            page.close()
        browser.close()
    return out[0], out[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=REPO / "models" / "model.keras")
    ap.add_argument("--images", type=Path, help="folder with Positive/ and Negative/ (default: the shared sample)")
    ap.add_argument("--no-page", action="store_true", help="skip the browser timings")
    opts = ap.parse_args()

    import mlflow
    import numpy as np
    import pandas as pd
    import requests
    from crackserve import serving

    from crackclf import config, imaging, inference, pyfunc, tracking

    n = max(BATCHES)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        folder, described = image_folder(opts.images, n, tmp)
        model_path = opts.model
        if not model_path.is_file():
            model_path = tmp / "quick.keras"
            quick_model(folder, model_path)
        model = inference.load_model(model_path, runtime="keras")
        size = model.size
        files = sorted(p for p in folder.rglob("*") if imaging.is_image_path(p))[:n]
        x = np.stack([imaging.load_patch(f, size) for f in files])
        raw = [f.read_bytes() for f in files]
        photo_path = tmp / "photo.jpg"
        photo = whole_photo(files, photo_path)
        params = config.Params()
        threshold = inference.default_threshold(model_path, print)

        uri = f"sqlite:///{tmp / 'mlflow.db'}"
        mlflow.set_tracking_uri(uri)
        mlflow.set_registry_uri(uri)
        with mlflow.start_run():
            version = tracking.log_keras_model(model.net, x[:1], registered_model="bench").registered_model_version
            images_version = pyfunc.log_images_model(model_path, threshold, params,
                                                     "bench-images").registered_model_version
        print(f"images: {described}; whole photo {PHOTO_SIZE[0]}x{PHOTO_SIZE[1]} ({len(photo) / 2**20:.1f} MB JPEG)\n"
              f"model:  {model_path} ({size} px input), registered as models:/bench/{version} and "
              f"models:/bench-images/{images_version}\n{os.cpu_count()} CPU cores\n")

        # 1. pixel tensors through mlflow models serve, against predict_on_batch in process
        pixel_rows = []
        with models_serve(f"models:/bench/{version}", uri, tmp / "serve.log") as (url, pixel_start):
            session = requests.Session()
            for batch, times in PIXEL_TIMES.items():
                body = {"inputs": x[:batch].tolist()}

                def request():
                    answer = session.post(f"{url}/invocations", json=body, timeout=900)
                    answer.raise_for_status()
                    return answer

                served = np.asarray(request().json()["predictions"], np.float64)[:, 0]
                local = np.asarray(model.net.predict_on_batch(x[:batch].astype(np.float32)), np.float64)[:, 0]
                np.testing.assert_allclose(served, local, atol=1e-5)  # the same answers, or no timing
                pixel_rows.append((batch, median_s(request, times),
                                   median_s(lambda: model.net.predict_on_batch(x[:batch].astype(np.float32)), times)))

        # 2. image bytes through mlflow models serve, against the images model in process
        images_model = mlflow.pyfunc.load_model(f"models:/bench-images/{images_version}")
        cases = [(f"{b} patches", raw[:b], BATCHES[b]) for b in BATCHES] + [("1 whole photo", [photo], 3)]
        bytes_rows = []
        with models_serve(f"models:/bench-images/{images_version}", uri, tmp / "serve-images.log") as (url, bytes_start):
            session = requests.Session()
            for what, datas, times in cases:
                body = {"dataframe_split": {"columns": ["image"],
                                            "data": [[base64.b64encode(d).decode()] for d in datas]}}

                def request():
                    answer = session.post(f"{url}/invocations", json=body, timeout=300)
                    answer.raise_for_status()
                    return answer

                served = pd.DataFrame(request().json()["predictions"])
                assert (served["error"] == "").all(), served
                frame = pd.DataFrame({"image": datas})
                np.testing.assert_allclose(served["probability"], images_model.predict(frame)["probability"],
                                           atol=1e-5)  # the same answers as in process, or no timing
                tiles = int(served["tiles"].sum())
                bytes_rows.append((what, len(datas), tiles, median_s(request, times),
                                   median_s(lambda: images_model.predict(frame), times)))

        # 3. crackclf serve: bounded load tests and one whole photo; 4. the page
        with serving(model_path, tmp / "crackclf-serve.log", timeout=300) as url:
            started = time.perf_counter()
            load = {c: load_test(url, raw, c, LOAD[c]) for c in LOAD}
            session = requests.Session()

            def photo_request():
                r = session.post(f"{url}/api/predict", files=[("files", ("photo.jpg", photo))], timeout=300)
                assert r.status_code == 200 and r.json()[0]["error"] is None, r.text
                return r

            photo_api = median_s(photo_request, 3)
            load_s = time.perf_counter() - started
            page = None if opts.no_page else page_times(url, photo_path, files[:PAGE_PATCHES])

    print(f"mlflow models serve answers /ping {pixel_start:.1f} s (Keras model) and {bytes_start:.1f} s "
          f"(images model) after start\n")
    print("1. pixel tensors (JSON) to `mlflow models serve` of the Keras model")
    print(f"{'images per request':>18s} {'served ms':>10s} {'images/s':>9s} {'in process ms':>14s} {'images/s':>9s}")
    for batch, served, local in pixel_rows:
        print(f"{batch:18d} {1000 * served:10.1f} {batch / served:9.0f} {1000 * local:14.1f} {batch / local:9.0f}")
    print("\n2. image file bytes (base64 JSON) to `mlflow models serve` of the images model")
    print(f"{'request':>18s} {'tiles':>6s} {'served ms':>10s} {'images/s':>9s} {'in process ms':>14s}")
    for what, count, tiles, served, local in bytes_rows:
        print(f"{what:>18s} {tiles:6d} {1000 * served:10.1f} {count / served:9.1f} {1000 * local:14.1f}")
    pix64 = next(s for b, s, _ in pixel_rows if b == 64)
    img64 = next(s for w, _, _, s, _ in bytes_rows if w == "64 patches")
    print(f"   64 patches: image bytes {64 / img64:.0f} images/s against pixel tensors {64 / pix64:.0f} images/s: "
          f"{pix64 / img64:.1f}x")
    print("\n3. crackclf serve, POST /api/predict, one patch per request (bounded load test on loopback)")
    for clients, (rate, errors) in load.items():
        print(f"   {clients:2d} concurrent clients: {rate:6.1f} images/s, {LOAD[clients]} requests, {errors} errors")
    print(f"   one {PHOTO_SIZE[0]}x{PHOTO_SIZE[1]} photo: {photo_api:.2f} s per request "
          f"(load tests and photo: {load_s:.0f} s)")
    if page is not None:
        print(f"\n4. the page, from choosing files to the crack map shown: one {PHOTO_SIZE[0]}x{PHOTO_SIZE[1]} photo "
              f"{page[0]:.1f} s; {PAGE_PATCHES} patches {page[1]:.1f} s")
    if any(errors for _, errors in load.values()):
        sys.exit("load test: some requests failed")


if __name__ == "__main__":
    main()
