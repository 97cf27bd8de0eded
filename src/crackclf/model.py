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

    With RandomFlip("horizontal_and_vertical") this reaches all eight 90-degree
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
    inputs = keras.Input((image_size, image_size, 1), name="image")
    x = layers.Rescaling(1.0 / 255, name="rescale")(inputs)
    if train.augment:
        x = layers.RandomFlip("horizontal_and_vertical", seed=seed, name="flip")(x)
        x = RandomTranspose(seed=seed, name="transpose")(x)
    for i, filters in enumerate(train.conv_filters, start=1):
        x = layers.Conv2D(filters, train.kernel_size, activation="relu", name=f"conv{i}")(x)
        x = layers.MaxPooling2D(train.pool_size, name=f"pool{i}")(x)
        x = layers.Dropout(train.dropout, seed=seed, name=f"dropout{i}")(x)
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
