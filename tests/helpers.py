"""Helpers shared by the test modules (fixtures are in conftest.py)."""

import os

# The repository root (flagfiles and launchers are run from here).
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# The smallest search the launchers run: S3 on 8x8 digits, 3 cells, C = 4.
SEARCH_TINY = (
    "--dataset=digits",
    "--image_size=8",
    "--space=s3",
    "--layers=3",
    "--init_channels=4",
    "--batch_size=8",
    "--epochs=1",
    "--steps_per_epoch=2",
    "--verbose=0",
    "--arch_lr=0.01",
)
# The smallest re-training: DARTS_V2, 3 cells, C = 4, 16x16 digits.
RETRAIN_TINY = (
    "--genotype=DARTS_V2",
    "--dataset=digits",
    "--image_size=16",
    "--layers=3",
    "--init_channels=4",
    "--batch_size=16",
    "--epochs=2",
    "--steps_per_epoch=2",
    "--noauxiliary",
    "--cutout=4",
    "--drop_path_prob=0.2",
    "--verbose=0",
)


def _flag_name(arg):
    name = arg.lstrip("-").split("=")[0]
    return name


def flags_with(base, **values):
    """``base`` (a list of ``--flag[=value]``) with ``values`` set.

    ``True`` gives ``--name``, ``False`` ``--noname``, ``None`` removes the
    flag (its default applies), anything else ``--name=value``. Flags not
    named keep their place; new ones are appended.
    """
    out = []
    for arg in base:
        name = _flag_name(arg)
        if name.startswith("no") and name[2:] in values:
            name = name[2:]  # --noname is the flag `name`
        if name not in values:
            out.append(arg)
    for name, value in values.items():
        if value is None:
            continue
        if value is True:
            out.append(f"--{name}")
        elif value is False:
            out.append(f"--no{name}")
        else:
            out.append(f"--{name}={value}")
    return out


def search_flag_values(args):
    """The search launcher's flags, parsed from ``args``."""
    from absl import flags

    from tf_amended_darts.jobs import search_config

    fv = flags.FlagValues()
    search_config.define_flags(fv)
    fv(["search"] + list(args))
    return fv


def retrain_flag_values(args):
    """The re-training launcher's flags, parsed from ``args``."""
    from absl import flags

    from tf_amended_darts.jobs import retrain_config

    fv = flags.FlagValues()
    retrain_config.define_flags(fv)
    fv(["retrain"] + list(args))
    return fv


def search_config_of(args):
    """The validated search config of ``args``."""
    from tf_amended_darts.jobs import search_config

    return search_config.from_flags(search_flag_values(args))


def run_retrain_launcher(args):
    """``launchers/retrain.py`` with ``args``, in this process."""
    from launchers import retrain as launcher

    return launcher.main(["retrain"], retrain_flag_values(args))


def h5_datasets(path):
    """``{name: array}`` of every dataset in an HDF5 (``.weights.h5``)
    file."""
    import h5py

    out = {}
    with h5py.File(path, "r") as f:
        f.visititems(
            lambda name, obj: (
                out.__setitem__(name, obj[()])
                if isinstance(obj, h5py.Dataset)
                else None
            )
        )
    return out


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


def downstream(op):
    """Names of the graph ops that consume, directly or not, the outputs
    of ``op`` (data edges only)."""
    found, frontier = set(), [op]
    while frontier:
        current = frontier.pop()
        for out in current.outputs:
            for consumer in out.consumers():
                if consumer.name not in found:
                    found.add(consumer.name)
                    frontier.append(consumer)
    return found


def waits_for(op):
    """Names of the graph ops ``op`` waits for by control edges, looking
    through the `tf.group` NoOps that gather them (`bilevel.waiting_for`)."""
    found = set()
    for dep in op.control_inputs:
        if dep.type == "NoOp":
            found |= waits_for(dep)
        else:
            found.add(dep.name)
    return found
