"""``crackclf serve``: the image API answers as ``crackclf predict`` does, and bad input never costs it.

One real server (a process of its own, the tiny model) serves every test of this module;
each bad-input test ends by checking it still scores a good file.
"""

from __future__ import annotations

import csv
import io
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import requests

import crackserve
from crackclf import config, inference, predict
from crackclf.batching import SharedBatches

LIMITS = {"max_upload_mb": 1, "max_files": 4, "max_megapixels": 50}


@pytest.fixture(scope="module")
def photo_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("upload") / "wall.jpg"
    path.write_bytes(crackserve.jpeg(crackserve.photo()))
    return path


@pytest.fixture(scope="module")
def server(tiny_model_path, tmp_path_factory) -> str:
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    with crackserve.serving(tiny_model_path, log, {"serve": LIMITS}) as url:
        yield url


def post(url: str, *files: tuple[str, bytes]) -> requests.Response:
    return requests.post(f"{url}/api/predict", files=[("files", f) for f in files], timeout=120)


def still_scores(url: str, photo_file: Path) -> None:
    answer = post(url, (photo_file.name, photo_file.read_bytes()))
    assert answer.status_code == 200 and answer.json()[0]["error"] is None, answer.text


def test_answers_equal_crackclf_predict(server, photo_file, synthetic_folder, tiny_model_path):
    patch = sorted(synthetic_folder.glob("Positive/*.jpg"))[0]
    answer = post(server, (photo_file.name, photo_file.read_bytes()), (patch.name, patch.read_bytes()))
    assert answer.status_code == 200, answer.text
    got = answer.json()

    model = inference.load_model(tiny_model_path, runtime="keras")
    cfg = config.Params().predict
    expected = list(predict.predict_files(model, [photo_file, patch], 0.5, cfg.tile_size, cfg.stride,
                                          cfg.batch_size, pytest.fail))
    assert [a["name"] for a in got] == [photo_file.name, patch.name]  # in the order sent
    for a, e in zip(got, expected):
        assert a["error"] is None
        assert (a["label"], a["tiles"], a["crack_tiles"]) == (e.label, e.tiles, e.crack_tiles)
        assert a["probability"] == pytest.approx(e.probability, abs=1e-5)
        assert a["threshold"] == 0.5
        boxes = [[t["x"], t["y"], t["width"], t["height"]] for t in a["tile_table"]]
        assert boxes == e.tile_table.boxes.tolist()  # photo pixels, as `crackclf predict --tiles` gives them
        np.testing.assert_allclose([t["probability"] for t in a["tile_table"]], e.tile_table.probabilities,
                                   atol=1e-5)
    photo, single = got
    assert photo["whole_photo"] and (photo["width"], photo["height"]) == (908, 681)
    assert photo["tiles"] == len(photo["tile_table"]) > 1 and photo["crack_tiles"] >= 1
    assert not single["whole_photo"] and single["tile_table"] == [
        {"x": 0, "y": 0, "width": 227, "height": 227, "probability": single["probability"]}]

    # Downloads: the map PNG (the photo's proportions) and the tile table as CSV.
    png = requests.get(server + photo["map"], timeout=60)
    assert png.status_code == 200 and png.headers["content-type"] == "image/png"
    from PIL import Image

    with Image.open(io.BytesIO(png.content)) as img:
        assert max(img.size) == 1600 and abs(img.width / img.height - 908 / 681) < 0.01
    rows = list(csv.DictReader(io.StringIO(requests.get(server + photo["csv"], timeout=60).text)))
    assert len(rows) == photo["tiles"]
    assert [(int(r["x"]), int(r["y"])) for r in rows] == [(t["x"], t["y"]) for t in photo["tile_table"]]
    assert sum(r["label"] == "crack" for r in rows) == photo["crack_tiles"]
    cam = requests.get(server + photo["explain"], timeout=120)  # the page's Grad-CAM toggle
    assert cam.status_code == 200 and cam.headers["content-type"] == "image/png"
    with Image.open(io.BytesIO(cam.content)) as img, Image.open(io.BytesIO(png.content)) as shown:
        assert img.size == shown.size and img.tobytes() != shown.tobytes()
    assert requests.get(f"{server}/api/results/nosuchid/map.png", timeout=10).status_code == 404


def test_bad_files_get_errors_and_the_rest_is_scored(server, photo_file):
    good = photo_file.read_bytes()
    sent = [
        ("notes.txt", b"not an image at all\n" * 20),
        ("truncated.jpg", good[: len(good) // 2]),
        ("bomb.png", crackserve.bomb_png(20000)),  # 400 megapixels in 49 KB: past Pillow's own limit
        ("big.png", crackserve.bomb_png(10000)),  # 100 megapixels: past serve.max_megapixels (50)
    ]
    for name, data in sent:
        answer = post(server, (name, data), (photo_file.name, good))
        assert answer.status_code == 200, answer.text
        bad, ok = answer.json()
        assert bad["name"] == name and bad["error"] and bad["probability"] is None, bad
        assert ok["error"] is None and ok["tiles"] > 1
        assert "Traceback" not in bad["error"] and "object at 0x" not in bad["error"]
    errors = {name: post(server, (name, data)).json()[0]["error"] for name, data in sent}
    assert "not a readable image" in errors["notes.txt"] and "truncated" in errors["truncated.jpg"]
    assert "too large" in errors["bomb.png"] and "too large (10000x10000" in errors["big.png"]

    nothing = post(server, *sent[:2])  # nothing could be scored: 4xx, never 500
    assert nothing.status_code == 422 and all(a["error"] for a in nothing.json())
    still_scores(server, photo_file)


def test_upload_limits(server, photo_file):
    over = b"\xff\xd8" + b"\0" * int(1.2 * 2**20)  # 1.2 MB, over serve.max_upload_mb
    answer = post(server, ("huge.jpg", over), (photo_file.name, photo_file.read_bytes()))
    assert answer.status_code == 200
    assert answer.json()[0]["error"].startswith("file too large (1.2 MB") and answer.json()[1]["error"] is None
    assert post(server, ("huge.jpg", over)).status_code == 413  # nothing else in it

    assert post(server, *[(f"{i}.jpg", photo_file.read_bytes()) for i in range(5)]).status_code == 413  # max_files
    # Over the whole request's cap (4 files x 1 MB), sent without a length: refused while it streams.
    body = (b'--xyz\r\nContent-Disposition: form-data; name="files"; filename="a.jpg"\r\n\r\n'
            + b"\0" * (6 * 2**20) + b"\r\n--xyz--\r\n")
    chunks = (body[i:i + 65536] for i in range(0, len(body), 65536))
    refused = requests.post(f"{server}/api/predict", data=chunks, timeout=60,
                            headers={"Content-Type": "multipart/form-data; boundary=xyz"})
    assert refused.status_code == 413
    assert post(server).status_code == 422  # no files part at all: FastAPI's validation error
    still_scores(server, photo_file)


def test_model_health_docs_and_page(server, tiny_model_path):
    info = requests.get(f"{server}/api/model", timeout=10).json()
    assert info["path"] == str(Path(tiny_model_path).resolve()) and info["threshold"] == 0.5
    assert info["image_size"] == 48
    assert requests.get(f"{server}/api/health", timeout=10).json()["status"] == "ok"
    assert "/api/predict" in requests.get(f"{server}/openapi.json", timeout=10).json()["paths"]
    docs = requests.get(f"{server}/docs", timeout=10).text
    assert "/docs-assets/swagger-ui-bundle.js" in docs and "cdn" not in docs  # API docs offline too
    assert requests.get(f"{server}/docs-assets/swagger-ui-bundle.js", timeout=10).status_code == 200
    page = requests.get(server, timeout=10).text
    assert "/static/app.js" in page and "/static/style.css" in page
    for asset in ("app.js", "style.css"):
        assert requests.get(f"{server}/static/{asset}", timeout=10).status_code == 200
    web = Path(crackserve.__file__).parents[1] / "src" / "crackclf" / "web"
    for path in web.iterdir():  # offline: nothing loaded from another host
        text = path.read_text(encoding="utf-8")
        assert "http://" not in text and "https://" not in text and "//cdn" not in text, path


def test_concurrent_clients(server, synthetic_folder):
    patches = sorted(synthetic_folder.glob("*/*.jpg"))[:32]

    def one(path: Path) -> dict:
        answer = post(server, (path.name, path.read_bytes()))
        assert answer.status_code == 200
        return answer.json()[0]

    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(one, patches))
    assert [a["name"] for a in answers] == [p.name for p in patches] and not any(a["error"] for a in answers)
    alone = post(server, (patches[5].name, patches[5].read_bytes())).json()[0]
    assert alone["probability"] == pytest.approx(answers[5]["probability"], abs=1e-5)  # batching changes nothing


class SlowModel:
    """Half a second a call whatever the batch: batching pays only if calls are shared."""

    size = 4

    def __init__(self):
        self.batches: list[int] = []

    def predict(self, images, batch_size):
        self.batches.append(len(images))
        time.sleep(0.2)
        return images.reshape(len(images), -1)[:, 0].astype(np.float64)


def test_shared_batches_join_concurrent_calls():
    model = SlowModel()
    shared = SharedBatches(model, batch_size=64)
    start = threading.Barrier(8)

    def call(i: int) -> np.ndarray:
        images = np.full((i + 1, 4, 4, 1), i, np.uint8)
        start.wait()
        return shared.predict(images)

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(call, range(8)))
    shared.close()
    assert [r.tolist() for r in results] == [[float(i)] * (i + 1) for i in range(8)]  # each caller its own
    assert len(model.batches) < 8 and sum(model.batches) == sum(range(1, 9))  # fewer calls than callers

    failing = SharedBatches(type("Broken", (), {"size": 4, "predict": lambda self, x, b: 1 / 0})(), 8)
    with pytest.raises(ZeroDivisionError):
        failing.predict(np.zeros((1, 4, 4, 1)))
    failing.close()
