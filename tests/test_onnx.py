"""The ONNX copy: it answers like Keras, it is used only for its own model, a damaged or foreign
copy is refused (never a silent wrong answer), and its path never imports TensorFlow."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import synth
from crackclf import cli, dataset, export, files, imaging, inference
from crackclf.inference import ModelError

REPO = Path(__file__).resolve().parents[1]


def pair(tmp_path: Path, keras_file: Path, onnx_bytes: bytes | None) -> Path:
    """``tmp_path/model.keras`` (a copy of ``keras_file``) with ``onnx_bytes`` as its model.onnx."""
    path = tmp_path / "model.keras"
    path.write_bytes(keras_file.read_bytes())
    if onnx_bytes is not None:
        path.with_suffix(".onnx").write_bytes(onnx_bytes)
    return path


def load(path, runtime="auto") -> tuple[inference.Model, list[str]]:
    lines: list[str] = []
    return inference.load_model(path, runtime, lines.append), lines


def odd_inputs(size: int) -> np.ndarray:
    """All black, all white, a one-pixel crack on plain concrete, and one dark pixel."""
    plain = imaging.resize(synth.concrete(np.random.default_rng(1)), size)[:, :, 0]
    line, dot = plain.copy(), plain.copy()
    line[:, size // 2] = 20
    dot[size // 3, size // 3] = 0
    images = [np.zeros((size, size)), np.full((size, size), 255), line, dot]
    return np.stack(images).astype(np.uint8)[..., None]


def test_both_runtimes_agree_on_patches_and_odd_inputs(tiny_model_path, prepared_dir):
    onnx, lines = load(tiny_model_path)
    keras_model, _ = load(tiny_model_path, "keras")
    assert (onnx.runtime, keras_model.runtime, lines) == ("onnx", "keras", [])
    assert onnx.net is None and onnx.size == keras_model.size == 48 and onnx.source == str(tiny_model_path)
    x, y = dataset.load_split(prepared_dir, "test")
    images = np.concatenate([np.asarray(x), odd_inputs(48)])
    p_onnx, f_onnx = onnx.predict_with_features(images, 16)
    p_keras, f_keras = keras_model.predict_with_features(images, 16)
    width = f_keras.shape[1]  # model.with_features decides it
    assert p_onnx.shape == (len(images),) and f_onnx.shape == f_keras.shape == (len(images), width) and width > 1
    assert f_onnx.dtype == np.float32
    np.testing.assert_allclose(p_onnx, p_keras, rtol=0, atol=1e-5)
    np.testing.assert_allclose(f_onnx, f_keras, rtol=1e-5, atol=1e-5)
    assert ((p_onnx[: len(y)] >= 0.5) == y).mean() >= 0.8  # a real model, not a constant
    assert np.ptp(f_onnx, axis=0).max() > 0  # features that vary between images
    # predict is predict_with_features' first output, whatever the batch size.
    np.testing.assert_array_equal(onnx.predict(images, 7), p_onnx)
    np.testing.assert_allclose(keras_model.predict(images, 1), p_keras, rtol=0, atol=1e-6)
    assert onnx.predict(images[:0], 8).shape == (0,) and onnx.predict_with_features(images[:0], 8)[1].shape == (0, width)


def test_the_copy_records_its_model(tiny_model_path):
    import onnx

    proto = onnx.load(str(tiny_model_path.with_suffix(".onnx")))
    meta = {p.key: p.value for p in proto.metadata_props}
    assert meta[export.KEY_KERAS_SHA256] == files.sha256(tiny_model_path)
    assert meta[export.KEY_SIZE] == "48" and meta[export.KEY_FEATURE_LAYER] == "pool2"
    assert len(json.loads(meta[export.KEY_PROBE])["probabilities"]) == len(export.probe_images(48))
    assert [o.name for o in proto.graph.output] == ["crack_probability", "features"]
    assert [i.name for i in proto.graph.input] == ["image"]
    assert {o.domain: o.version for o in proto.opset_import}[""] == export.OPSET


def test_no_copy_falls_back_with_one_line(keras_only_model_path):
    model, lines = load(keras_only_model_path)
    assert model.runtime == "keras" and model.net is not None
    assert len(lines) == 1 and "no ONNX copy" in lines[0] and lines[0].endswith("running on Keras")
    with pytest.raises(ModelError, match=r"^--runtime onnx: .*model\.onnx: no ONNX copy"):
        load(keras_only_model_path, "onnx")


def test_copy_of_another_model_is_refused(tiny_model_path, tmp_path):
    import keras

    other = tmp_path / "other.keras"
    net = keras.saving.load_model(tiny_model_path)
    net.set_weights([w * 0.5 for w in net.get_weights()])
    net.save(other)
    path = pair(tmp_path, other, tiny_model_path.with_suffix(".onnx").read_bytes())  # retrained, not re-exported
    model, lines = load(path)
    assert model.runtime == "keras"
    assert len(lines) == 1 and "the copy of another model" in lines[0], lines
    with pytest.raises(ModelError, match="another model"):
        load(path, "onnx")


def damaged_copies(good: bytes) -> dict[str, tuple[bytes, str]]:
    """Copies that must never answer, with the words of their refusal: cut short in several places,
    stripped of their record, weights changed (still a valid ONNX file with the right record, so
    only the probe images catch it), not ONNX at all."""
    import onnx
    from onnx import numpy_helper

    copies = {f"truncated to {f:.1%}": (good[: int(len(good) * f)], "not a readable ONNX model")
              for f in (0.1, 0.5, 0.9, 0.999)}
    stripped = onnx.load_from_string(good)
    del stripped.metadata_props[:]
    copies["foreign (no record)"] = (stripped.SerializeToString(), "not an ONNX copy written by crackclf")
    edited = onnx.load_from_string(good)
    init = max(edited.graph.initializer, key=lambda t: np.prod(t.dims))  # the dense layer's kernel
    init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) * 1.01, init.name))
    copies["weights changed by 1 %"] = (edited.SerializeToString(), "damaged: probe probabilities differ")
    copies["not ONNX"] = (b"\x89PNG\r\n\x1a\n" + bytes(200), "not a readable ONNX model")
    return copies


def test_damaged_or_foreign_copies_are_refused(tiny_model_path, tmp_path):
    good = tiny_model_path.with_suffix(".onnx").read_bytes()
    expected = inference.load_model(tiny_model_path, "keras").predict(odd_inputs(48), 4)
    for name, (data, words) in damaged_copies(good).items():
        folder = tmp_path / name.replace(" ", "_").replace("%", "pc")
        folder.mkdir()
        path = pair(folder, tiny_model_path, data)
        model, lines = load(path)
        assert model.runtime == "keras", name
        assert len(lines) == 1 and f"{path.with_suffix('.onnx')}: {words}" in lines[0], (name, lines)
        np.testing.assert_allclose(model.predict(odd_inputs(48), 4), expected, atol=1e-6)
        with pytest.raises(ModelError, match=r"^--runtime onnx: "):
            load(path, "onnx")


def test_cli_runtime_flag(keras_only_model_path, tiny_model_path, tmp_path, capsys):
    image = tmp_path / "patch.png"
    synth.patch(np.random.default_rng(2), True).save(image)
    assert cli.main(["predict", str(image), "--model", str(keras_only_model_path), "--runtime", "onnx"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("crackclf predict: error: --runtime onnx: ") and "no ONNX copy" in err[0]
    rows = {}
    for runtime in ("auto", "keras"):
        assert cli.main(["predict", str(image), "--model", str(tiny_model_path), "--runtime", runtime]) == 0
        out = capsys.readouterr()
        assert "Keras" not in out.err and "onnx" not in out.err, out.err  # no fallback line, whatever else is said
        rows[runtime] = out.out.splitlines()[1].split(",")
    assert rows["auto"][2:] == rows["keras"][2:] and float(rows["auto"][1]) == pytest.approx(
        float(rows["keras"][1]), abs=1e-5)


def test_onnx_path_imports_neither_tensorflow_keras_nor_mlflow(tiny_model_path, tmp_path):
    image = tmp_path / "patch.png"
    synth.patch(np.random.default_rng(3), False).save(image)
    code = f"""
import sys
from crackclf import cli
code = cli.main(["predict", {str(image)!r}, "--model", {str(tiny_model_path)!r}, "--runtime", "onnx"])
loaded = sorted({{m.split(".")[0] for m in sys.modules}} & {{"tensorflow", "keras", "mlflow", "jax", "torch"}})
print("RESULT", code, loaded, file=sys.stderr)
"""
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert "RESULT 0 []" in done.stderr, done.stderr[-2000:]
    assert done.stdout.startswith("path,probability,label,tiles,crack_tiles,unfamiliar,")


def test_export_without_tensorflow_is_skipped_with_one_line(tiny_model_path, tmp_path, monkeypatch, capsys):
    import importlib.util

    import keras

    path = pair(tmp_path, tiny_model_path, b"stale copy of an earlier model")
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(keras.backend, "backend", lambda: "jax")
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "tensorflow"
                        else real_find_spec(name, *a))
    assert export.save_onnx_copy(keras.saving.load_model(path), path) is None
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "model.onnx: not written: ONNX export needs TensorFlow" in err[0]
    assert not path.with_suffix(".onnx").exists()  # the stale copy went with it


@pytest.mark.slow
def test_other_backends_export_through_a_tensorflow_process(tiny_model_path, tmp_path, monkeypatch):
    import keras

    path = pair(tmp_path, tiny_model_path, None)
    monkeypatch.setattr(keras.backend, "backend", lambda: "jax")
    assert export.save_onnx_copy(None, path, run_id="run123") == path.with_suffix(".onnx")
    model, lines = load(path, "onnx")
    assert lines == [] and model.runtime == "onnx"
    import onnx

    meta = {p.key: p.value for p in onnx.load(str(path.with_suffix(".onnx"))).metadata_props}
    assert meta[export.KEY_RUN_ID] == "run123" and meta[export.KEY_KERAS_SHA256] == files.sha256(path)


@pytest.mark.parametrize("train", [{"standardize_inputs": 0.04}, {"global_pooling": "max"}])
def test_other_layers_export_and_answer_alike(tmp_path, train):
    """``train.standardize_inputs`` puts a layer of crackclf's own before conv1, ``train.global_pooling``
    another head: the ONNX copy passes the probe check and answers like Keras, flat images (spread under
    the floor) included."""
    from crackclf import config
    from crackclf.model import build_model

    net = build_model(config.parse({"train": train}).train, 48, seed=3)
    path = tmp_path / "model.keras"
    net.save(path)
    export.save_onnx_copy(net, path)
    onnx, lines = load(path)
    assert (onnx.runtime, lines) == ("onnx", [])
    images = odd_inputs(48)
    np.testing.assert_allclose(onnx.predict(images, 4), load(path, "keras")[0].predict(images, 4), atol=1e-5)
