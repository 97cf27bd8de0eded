"""Grad-CAM (crackclf predict --explain): the heat falls on the crack, is placed where the network looks,
and only the TensorFlow backend is asked for it."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFilter

import synth
from crackclf import cli, config, explain, imaging, inference

REPO = Path(__file__).resolve().parents[1]
BAND = 30  # px at 227: the drawn crack (8 to 14 px wide) and about 8 px either side of it


def crack_patches(size: int, n: int = 24, seed: int = 11):
    """Synthetic crack patches at the model's input size, and masks of a band along each drawn crack."""
    rng = np.random.default_rng(seed)
    images, masks = [], []
    for _ in range(n):
        img = synth.concrete(rng)
        line = synth.draw_crack(img, rng)
        img = img.filter(ImageFilter.GaussianBlur(0.6))
        mask = Image.new("L", img.size, 0)
        ImageDraw.Draw(mask).line(line, fill=255, width=BAND)
        images.append(imaging.resize(img, size))
        masks.append(np.asarray(mask.resize((size, size), Image.Resampling.BOX)) > 0)
    return np.stack(images), np.stack(masks)


def test_most_of_the_heat_falls_on_the_crack_line(tiny_model_path):
    model = inference.load_model(tiny_model_path, "keras")
    x, masks = crack_patches(model.size)
    probs = model.predict(x, 64)
    cams = explain.heat_maps(model.net, x)
    assert cams.shape == (len(x), model.size, model.size) and 0 <= cams.min() and cams.max() <= 1
    seen = probs >= 0.5
    assert seen.mean() >= 0.8  # the tiny model sees these cracks
    on_line = (cams * masks).sum(axis=(1, 2)) / cams.sum(axis=(1, 2))
    share = masks.mean(axis=(1, 2))  # what an evenly spread map would put there
    # Measured: median 0.94 of the heat on a band covering 16 % of the patch.
    assert np.median(on_line[seen]) >= 0.7 and (on_line[seen] >= 0.5).mean() >= 0.9, on_line[seen]
    assert np.median(on_line[seen] / share[seen]) >= 3


def test_cells_sit_at_the_centre_of_their_receptive_field():
    from crackclf.model import build_model

    reference = build_model(config.Params().train, 128)  # 3x3 valid convolutions, 2x2 pooling
    assert explain.geometry(reference, explain.last_conv(reference)) == (8.5, 4.0)
    tiny = build_model(config.parse(synth.TINY_PARAMS).train, 48)
    conv = explain.last_conv(tiny)
    assert conv.name == "conv2" and explain.geometry(tiny, conv) == (3.5, 2.0)
    # a map hot in one cell only is centred on that cell's centre, in input pixels: 3.5 + 5 * 2
    weights = explain._resample(21, 3.5, 2.0, 48)
    assert np.allclose(weights.sum(axis=1), 1)
    assert (weights[:, 5] * np.arange(48)).sum() / weights[:, 5].sum() == pytest.approx(13.5)


def test_tile_maps_make_one_photo_map():
    cams = np.zeros((2, 4, 4), np.float32)
    cams[0, 0, 0] = cams[1, 3, 3] = 1
    boxes = np.array([[0, 0, 100, 100], [100, 50, 100, 100]])
    heat = explain.photo_heat(cams, boxes, np.array([1.0, 0.5]), (200, 150), (15, 20))
    assert heat.shape == (15, 20)
    assert heat[0, 0] == pytest.approx(1.0, abs=0.05) and heat[14, 19] == pytest.approx(0.5, abs=0.05)
    assert heat[14, 0] == 0 and heat[0, 19] == 0  # no tile there, or a cold corner of one


def test_explain_draws_the_crack_tiles(tiny_model_path, tmp_path, capsys):
    rng = np.random.default_rng(4)
    photo = Image.new("L", (2 * 227, 227))
    crack = synth.concrete(rng)
    synth.draw_crack(crack, rng)
    photo.paste(crack, (0, 0))
    photo.paste(synth.concrete(rng), (227, 0))
    photo.save(tmp_path / "wall.png")
    synth.patch(rng, True).save(tmp_path / "patch.jpg", quality=90)
    synth.patch(rng, False).save(tmp_path / "plain.jpg", quality=90)
    base = ["predict", "--model", str(tiny_model_path), "--threshold", "0.5", "--runtime", "keras"]

    assert cli.main([*base, str(tmp_path / "wall.png"), "--explain", str(tmp_path / "wall-cam.png")]) == 0
    assert "Grad-CAM of 1 image" in capsys.readouterr().err
    with Image.open(tmp_path / "wall-cam.png") as img:
        pixels = np.asarray(img.convert("RGB"), np.int32)
    warm = (pixels[..., 0] - pixels[..., 2]) > 60  # heat colours: yellow to red, over a grey photo
    half = pixels.shape[1] // 2  # the cracked tile is the left half, the plain one the right
    assert warm[:, :half].sum() > 50 * max(1, warm[:, half:].sum()), (warm[:, :half].sum(), warm[:, half:].sum())

    out = tmp_path / "explained"
    assert cli.main([*base, str(tmp_path / "patch.jpg"), str(tmp_path / "plain.jpg"), "--explain", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["patch.png"]  # no crack tile in plain.jpg: nothing to draw
    assert "Grad-CAM of 1 image" in capsys.readouterr().err

    # One picture for several images is a usage error, before any work.
    assert cli.main([*base, str(tmp_path / "patch.jpg"), str(tmp_path / "plain.jpg"), "--explain",
                     str(tmp_path / "two.png")]) == 2
    assert "one picture explains one image" in capsys.readouterr().err


def test_other_backends_refuse_in_one_line(tiny_model_path, tmp_path):
    synth.patch(np.random.default_rng(1), True).save(tmp_path / "patch.jpg")
    env = {**os.environ, "KERAS_BACKEND": "jax", "TF_CPP_MIN_LOG_LEVEL": "2"}
    done = subprocess.run([sys.executable, "-m", "crackclf", "predict", str(tmp_path / "patch.jpg"), "--model",
                           str(tiny_model_path), "--explain", str(tmp_path / "cam.png")],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    ours = [line for line in done.stderr.splitlines() if line.startswith("crackclf")]
    assert done.returncode == 2 and len(ours) == 1, done.stderr
    assert "TensorFlow backend" in ours[0] and "jax" in ours[0] and "Traceback" not in done.stderr
    assert not (tmp_path / "cam.png").exists()
