"""Helpers shared by the test modules (fixtures are in conftest.py)."""

import os

# The repository root (flagfiles and launchers are run from here).
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_classifier(seed=0, features=4, classes=3, momentum=0.9):
    """A small compiled Keras classifier whose metrics exist up front.

    Like the package's models (`BilevelSearch`, `Retrainer`) it creates
    its metric trackers in ``__init__`` and builds its optimiser at
    compile, so checkpoints can save and restore both.
    """
    import keras  # pylint: disable=C0415 (helpers stay light to import)
    import tensorflow as tf  # pylint: disable=C0415

    class Tiny(keras.Model):
        def __init__(self):
            super().__init__()
            self.net = keras.Sequential(
                [
                    keras.layers.Dense(8, activation="relu"),
                    keras.layers.Dense(classes),
                ]
            )
            self.net.build((None, features))
            self.loss_tracker = keras.metrics.Mean(name="loss")
            self.accuracy = keras.metrics.SparseCategoricalAccuracy(
                name="accuracy"
            )
            self.built = True

        @property
        def metrics(self):
            return [self.loss_tracker, self.accuracy]

        def call(self, x):
            return self.net(x)

        def train_step(self, data):
            x, y = data
            with tf.GradientTape() as tape:
                logits = self.net(x)
                loss = tf.reduce_mean(
                    keras.losses.sparse_categorical_crossentropy(
                        y, logits, from_logits=True
                    )
                )
            variables = self.net.trainable_variables
            grads = tape.gradient(loss, variables)
            self.optimizer.apply(grads, variables)
            self.loss_tracker.update_state(loss)
            self.accuracy.update_state(y, logits)
            return {m.name: m.result() for m in self.metrics}

    keras.utils.set_random_seed(seed)
    model = Tiny()
    model.compile(optimizer=keras.optimizers.SGD(0.1, momentum=momentum))
    model.optimizer.build(model.net.trainable_variables)
    return model


def tiny_batches(epoch, batches=5, batch=8, features=4, classes=3):
    """Epoch ``epoch``'s batches for `tiny_classifier` (fixed per epoch)."""
    import numpy as np  # pylint: disable=C0415
    import tensorflow as tf  # pylint: disable=C0415

    rng = np.random.default_rng(100 + epoch)
    x = rng.normal(size=(batches * batch, features)).astype("float32")
    y = rng.integers(0, classes, batches * batch)
    return tf.data.Dataset.from_tensor_slices((x, y)).batch(batch)
