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
    for i, filters in enumerate(train.conv_filters, start=1):
        x = layers.Conv2D(filters, train.kernel_size, activation="relu", name=f"conv{i}")(x)
        x = layers.MaxPooling2D(train.pool_size, name=f"pool{i}")(x)
        x = layers.Dropout(train.dropout, seed=seed_at(10 + i), name=f"dropout{i}")(x)
    x = layers.Flatten(name="flatten")(x)
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
