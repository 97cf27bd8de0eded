"""The reference CNN from params: augmentation layers act in training only and never reach the saved model."""

import numpy as np
import pytest

from crackclf import config
from crackclf.model import build_model, without_augmentation

AUGMENT = {"augment": True, "augment_zoom": 0.2, "augment_translate": 0.25, "augment_brightness": 0.2,
           "augment_contrast": 0.3, "augment_gamma": 0.5, "augment_blur": 1.5, "augment_noise": 8.0}
PHOTOMETRIC = ("zoom", "translate", "brightness", "contrast", "gamma", "blur", "noise")


def test_augmentation_changes_training_inputs_only():
    train = config.parse({"train": {**AUGMENT, "dropout": 0.0}}).train
    net = build_model(train, 48, seed=1)
    names = [layer.name for layer in net.layers]
    assert all(n in names for n in PHOTOMETRIC)
    plain = build_model(without_augmentation(train), 48, seed=1)
    assert not {layer.name for layer in plain.layers} & set(PHOTOMETRIC + ("transpose",))
    for layer in plain.layers:
        if layer.weights:
            layer.set_weights(net.get_layer(layer.name).get_weights())
    x = np.random.default_rng(0).uniform(0, 255, (6, 48, 48, 1)).astype("float32")
    inference = np.asarray(net(x, training=False))
    np.testing.assert_allclose(inference, np.asarray(plain(x, training=False)), atol=1e-6)
    assert not np.allclose(np.asarray(net(x, training=True)), inference, atol=1e-4)


@pytest.mark.parametrize("key", [k for k in AUGMENT if k != "augment"])
def test_each_augmentation_is_a_validated_param(key):
    with pytest.raises(config.ConfigError, match=f"train.{key}"):
        config.parse({"train": {key: -1}})


@pytest.mark.parametrize("augment", [{}, AUGMENT])
@pytest.mark.parametrize(("center", "seen"), [(False, [0, 0.5, 1]), (True, [-1, 0, 1])])
def test_first_conv_sees_the_pixels_scaled_once(augment, center, seen):
    """Raw 0..255 in; 0..1 into conv1, or -1..1 with ``train.center_inputs`` (with and without the
    0..1 augmentation layers in between), whatever trains, evaluates or serves the model."""
    import keras

    net = build_model(config.parse({"train": {**augment, "center_inputs": center}}).train, 48, seed=1)
    to_conv = keras.Model(net.inputs, net.get_layer("conv1").input)
    x = np.stack([np.full((48, 48, 1), v, "float32") for v in (0, 127.5, 255)])
    np.testing.assert_allclose(np.asarray(to_conv(x, training=False))[:, 0, 0, 0], seen, atol=1e-6)


def test_standardized_inputs_lose_exposure_and_contrast_but_not_flatness():
    """``train.standardize_inputs``: one texture under other light and contrast reaches conv1 alike;
    a nearly flat patch (spread under the floor) stays nearly flat instead of becoming loud noise."""
    import keras

    net = build_model(config.parse({"train": {"standardize_inputs": 0.04}}).train, 48, seed=1)
    to_conv = keras.Model(net.inputs, net.get_layer("conv1").input)
    texture = np.random.default_rng(0).normal(0, 20, (48, 48, 1))
    seen = np.asarray(to_conv(np.stack([120 + texture, 40 + 2.5 * texture,
                                        100 + 0.1 * texture]).astype("float32"), training=False))
    np.testing.assert_allclose(seen[0], seen[1], atol=1e-3)
    np.testing.assert_allclose(seen[0].mean(), 0, atol=1e-4)
    np.testing.assert_allclose(seen[0].std(), 1, atol=1e-3)
    assert seen[2].std() < 0.25  # spread 2 grey levels, floored at 0.04 x 255 = 10.2
    reloaded = keras.models.model_from_json(net.to_json())  # a saved model rebuilds the layer
    assert reloaded.get_layer("standardize").floor == 0.04


@pytest.mark.parametrize("pooling", ["max", "average"])
def test_a_global_pool_scores_a_crack_alike_wherever_it_lies(pooling):
    """``train.global_pooling``: a dark line moved by a multiple of the network's stride (three 2x2
    pools: 8 px) gets the same probability; through flatten (the default) it does not."""
    images = np.full((2, 64, 64, 1), 128, "float32")
    # Moved 8 px down and 16 px right, seen by whole cells of the last pool in both (none past an edge).
    images[0, 24:36, 24] = images[1, 32:44, 40] = 20
    probability = {}
    for head in ("none", pooling):
        net = build_model(config.parse({"train": {"global_pooling": head}}).train, 64, seed=1)
        probability[head] = np.asarray(net(images, training=False))[:, 0]
    np.testing.assert_allclose(probability[pooling][0], probability[pooling][1], rtol=1e-5)
    assert abs(probability["none"][0] - probability["none"][1]) > 1e-4


def test_global_pooling_is_a_validated_param():
    with pytest.raises(config.ConfigError, match="train.global_pooling"):
        config.parse({"train": {"global_pooling": "min"}})
