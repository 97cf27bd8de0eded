"""The reference CNN, built from params alone.

It takes raw 0..255 grayscale pixels and rescales inside itself, so training,
evaluation, prediction and serving can never disagree on preprocessing.
"""

from __future__ import annotations

import keras
from keras import layers, ops

from crackclf.config import TrainParams


@keras.saving.register_keras_serializable(package="crackclf")
class RandomTranspose(layers.Layer):
    """Swaps height and width of a random half of the batch, in training only.

    With independent horizontal and vertical flips this reaches all eight 90-degree
    rotations and mirror images of a square patch.
    """

    def __init__(self, seed: int | None = None, **kwargs):
        super().__init__(**kwargs)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def call(self, x, training=None):
        if not training:
            return x
        swap = keras.random.uniform((ops.shape(x)[0], 1, 1, 1), seed=self.seed_generator) < 0.5
        return ops.where(swap, ops.transpose(x, (0, 2, 1, 3)), x)

    def get_config(self):
        return {**super().get_config(), "seed": self.seed}


@keras.saving.register_keras_serializable(package="crackclf")
class RandomGamma(layers.Layer):
    """Raises 0..1 pixels to a random power in [1/(1+g), 1+g], in training only: the tone curves of
    other cameras and light, which brightness and contrast (linear) do not reach."""

    def __init__(self, factor: float, seed: int | None = None, **kwargs):
        super().__init__(**kwargs)
        self.factor, self.seed = factor, seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def call(self, x, training=None):
        if not training or not self.factor:
            return x
        log_g = keras.random.uniform((ops.shape(x)[0], 1, 1, 1), -1.0, 1.0, seed=self.seed_generator)
        gamma = ops.exp(log_g * ops.log(1.0 + self.factor))
        return ops.power(ops.clip(x, 1e-6, 1.0), gamma)

    def get_config(self):
        return {**super().get_config(), "factor": self.factor, "seed": self.seed}


@keras.saving.register_keras_serializable(package="crackclf")
class Standardize(layers.Layer):
    """Each image to zero mean and unit spread (``train.standardize_inputs``): a photo's exposure and
    contrast, which differ from the dataset's, no longer reach the convolutions. The spread is floored
    so that a nearly flat patch (a dark border, bare sky) is not blown up into loud noise."""

    def __init__(self, floor: float, **kwargs):
        super().__init__(**kwargs)
        self.floor = floor

    def call(self, x):
        mean, variance = ops.moments(x, axes=(1, 2, 3), keepdims=True)
        return (x - mean) / ops.maximum(ops.sqrt(variance), self.floor)

    def get_config(self):
        return {**super().get_config(), "floor": self.floor}


def _photometric(x, train: TrainParams, seed_at):
    """Scale and photometric augmentation (``train.augment_*``, off at 0): real inspection photos
    differ from the dataset's patches in scale, light, focus and sensor noise."""
    if train.augment_zoom:
        x = layers.RandomZoom((-train.augment_zoom, train.augment_zoom), fill_mode="reflect",
                              seed=seed_at(3), name="zoom")(x)
    if train.augment_translate:
        # A dataset patch is cut around its crack; a photo tile holds it anywhere, a corner too.
        x = layers.RandomTranslation(train.augment_translate, train.augment_translate, fill_mode="reflect",
                                     seed=seed_at(9), name="translate")(x)
    if train.augment_brightness:
        x = layers.RandomBrightness(train.augment_brightness, value_range=(0, 1), seed=seed_at(4),
                                    name="brightness")(x)
    if train.augment_contrast:
        x = layers.RandomContrast(train.augment_contrast, value_range=(0, 1), seed=seed_at(5), name="contrast")(x)
    if train.augment_gamma:
        x = RandomGamma(train.augment_gamma, seed=seed_at(6), name="gamma")(x)
    if train.augment_blur:
        x = layers.RandomGaussianBlur(1.0, kernel_size=5, sigma=(0.1, train.augment_blur), value_range=(0, 1),
                                      seed=seed_at(7), name="blur")(x)
    if train.augment_noise:
        x = layers.GaussianNoise(train.augment_noise / 255, seed=seed_at(8), name="noise")(x)
    return x


def without_augmentation(train: TrainParams) -> TrainParams:
    """The same network with no augmentation layers: the model that is saved, exported and served."""
    return train.model_copy(update={"augment": False, **{k: 0.0 for k in type(train).model_fields
                                                         if k.startswith("augment_")}})


def build_model(train: TrainParams, image_size: int, seed: int | None = None) -> keras.Model:
    # One seed per random layer: layers seeded alike draw alike. RandomFlip("horizontal_and_vertical")
    # also draws one coin for both flips, so each flip is a layer of its own.
    def seed_at(offset: int) -> int | None:
        return None if seed is None else seed + offset

    inputs = keras.Input((image_size, image_size, 1), name="image")
    x = layers.Rescaling(1.0 / 255, name="rescale")(inputs)
    if train.augment:
        x = layers.RandomFlip("horizontal", seed=seed_at(0), name="flip_horizontal")(x)
        x = layers.RandomFlip("vertical", seed=seed_at(1), name="flip_vertical")(x)
        x = RandomTranspose(seed=seed_at(2), name="transpose")(x)
    x = _photometric(x, train, seed_at)
    # After the photometric layers, which work on 0..1.
    if train.standardize_inputs:
        x = Standardize(train.standardize_inputs, name="standardize")(x)
    elif train.center_inputs:
        x = layers.Rescaling(2.0, offset=-1.0, name="center")(x)
    for i, filters in enumerate(train.conv_filters, start=1):
        x = layers.Conv2D(filters, train.kernel_size, activation="relu", name=f"conv{i}")(x)
        x = layers.MaxPooling2D(train.pool_size, name=f"pool{i}")(x)
        x = layers.Dropout(train.dropout, seed=seed_at(10 + i), name=f"dropout{i}")(x)
    # Flatten weighs each position on its own; a global pool sees a crack alike wherever it lies.
    pool = {"none": layers.Flatten, "max": layers.GlobalMaxPooling2D, "average": layers.GlobalAveragePooling2D}
    x = pool[train.global_pooling](name="flatten" if train.global_pooling == "none" else "global_pool")(x)
    x = layers.Dense(train.dense_units, activation="relu", name="dense")(x)
    # float32 output keeps the probability exact under mixed precision.
    outputs = layers.Dense(1, activation="sigmoid", dtype="float32", name="crack_probability")(x)
    return keras.Model(inputs, outputs, name="crackclf_cnn")


def compile_model(model: keras.Model, train: TrainParams) -> keras.Model:
    optimizer = {"adam": keras.optimizers.Adam}[train.optimizer](learning_rate=train.learning_rate)
    model.compile(
        optimizer=optimizer,
        loss="binary_crossentropy",
        metrics=["accuracy", keras.metrics.AUC(name="auc")],
    )
    return model


FEATURE_LAYER = "pool2"  # the second conv block's pooling; a one-block model uses its last pool


def feature_layer(net: keras.Model) -> str:
    """The layer whose output ``with_features`` pools: ``pool2``, else the last ``pool<i>``."""
    pools = [layer.name for layer in net.layers if layer.name.startswith("pool") and layer.name[4:].isdigit()]
    if not pools:
        raise ValueError(f"{net.name}: no pool<i> layer to take features from")
    return FEATURE_LAYER if FEATURE_LAYER in pools else pools[-1]


def with_features(net: keras.Model) -> keras.Model:
    """``net`` with a second output: ``[crack_probability, features]``, sharing its weights.

    features (N, channels) = global average of the feature layer's output: what the
    unfamiliar-input check compares images by (``unfamiliar``). Not the global max too:
    measured on the real sample, adding it dropped the ROC AUC of dataset patches
    against textures from 0.994 to 0.974 (the max of a crack model's features is
    crack-ness, as high on a brick joint as on a crack). Defined here once: the ONNX
    copy is an export of this model, and the Keras runtime runs it too.
    """
    x = net.get_layer(feature_layer(net)).output
    features = layers.GlobalAveragePooling2D(name="features", dtype="float32")(x)
    return keras.Model(net.inputs, [net.outputs[0], features], name=f"{net.name}_with_features")
