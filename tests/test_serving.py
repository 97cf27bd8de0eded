"""Serving: ``mlflow models serve -m models:/crackclf@champion`` answers HTTP predictions that
match ``crackclf predict`` on the same image files.

The request is a pixel tensor, ``{"inputs": [image, ...]}``, each image the (size, size, 1)
grey levels that ``crackclf.imaging.load_patch`` makes of a file: the preprocessing of
``crackclf predict`` and of training. The answer is ``{"predictions": [[p_crack], ...]}``.

Timings: ``bench/serve.py``.
"""

import numpy as np
import pytest
import requests
from PIL import Image

from crackclf import imaging, inference, predict
from mlflow_server import models_serve, tracking_to

pytestmark = pytest.mark.slow
MODEL_URI = "models:/crackclf@champion"


@pytest.fixture(scope="module")
def store(champion_store) -> str:
    return champion_store[0]


@pytest.fixture(scope="module")
def images(synthetic_folder, tmp_path_factory) -> list:
    """Dataset patches of both classes, and a PNG of another size and mode (resized whole, as a patch)."""
    files = sorted(synthetic_folder.glob("Positive/*.jpg"))[:3] + sorted(synthetic_folder.glob("Negative/*.jpg"))[:3]
    odd = tmp_path_factory.mktemp("odd") / "odd.png"
    Image.open(files[0]).convert("RGBA").resize((300, 200)).save(odd)
    return [*files, odd]


@pytest.fixture(scope="module")
def served(store, tmp_path_factory):
    """``mlflow models serve`` of the champion on a free loopback port; yields its URL."""
    with models_serve(MODEL_URI, store, tmp_path_factory.mktemp("serve") / "serve.log", timeout=120) as (url, _):
        yield url


def test_served_champion_answers_like_crackclf_predict(served, store, images):
    with tracking_to(store):
        model = inference.load_model(MODEL_URI)  # what `crackclf predict --model models:/crackclf@champion` loads
        size = model.size
        expected = [p.probability for p in predict.predict_files(
            model, images, 0.5, tile_size=227, stride=227, batch_size=64, on_error=pytest.fail)]
    assert len(expected) == len(images)

    x = np.stack([imaging.load_patch(path, size) for path in images])  # uint8 grey levels: JSON integers
    answer = requests.post(f"{served}/invocations", json={"inputs": x.tolist()}, timeout=60)
    assert answer.status_code == 200, answer.text
    got = np.asarray(answer.json()["predictions"], np.float64)
    assert got.shape == (len(images), 1)
    np.testing.assert_allclose(got[:, 0], expected, atol=1e-5)
    assert got[:3, 0].min() > got[3:6, 0].max()  # a model that tells cracks apart, not a constant

    one = requests.post(f"{served}/invocations", json={"inputs": x[-1:].tolist()}, timeout=60)  # batch of one
    assert one.json()["predictions"][0][0] == pytest.approx(expected[-1], abs=1e-5)


def test_an_image_of_the_wrong_size_is_refused(served):
    wrong = np.zeros((1, 32, 32, 1), np.uint8)
    answer = requests.post(f"{served}/invocations", json={"inputs": wrong.tolist()}, timeout=60)
    assert answer.status_code == 400
    assert answer.json()["error_code"] == "INVALID_PARAMETER_VALUE" and "shape" in answer.json()["message"]
