"""Atomic, epoch-numbered checkpoints of a Keras model and its optimisers.

Each save writes ``ckpt-<epoch>.weights.h5`` through a temporary file, an
``fsync`` and an atomic rename, so a ``kill -9`` at any moment leaves either
the new checkpoint complete or only the previous one: never a torn file.
The epoch is in the file name, so weights and progress cannot disagree.
Keras' ``save_weights`` stores the model's weights (trainable and not:
architecture parameters, batch-norm statistics) and the variables of the
optimisers it tracks as attributes (iterations, momentum buffers, moments).
It does NOT store ``keras.random.SeedGenerator`` states: a model with random
layers (dropout, drop-path) must save them itself (see
``retrain.Retrainer``); the search network has none.
"""

import os
import re

PATTERN = re.compile(r"^ckpt-(\d+)\.weights\.h5$")
TMP_PREFIX = ".tmp-"


class EpochCheckpointer:
    """Saves and restores ``model`` once per epoch in ``directory``.

    Args:
        model: a built Keras model (its ``save_weights`` / ``load_weights``).
        directory: where checkpoints live (created).
        keep: how many most recent checkpoints to keep (>= 1).
    """

    def __init__(self, model, directory, keep=2):
        if keep < 1:
            raise ValueError(f"Expected `keep` >= 1. Received: keep={keep}")
        self.model = model
        self.directory = directory
        self.keep = keep
        os.makedirs(directory, exist_ok=True)
        for name in os.listdir(directory):
            if name.startswith(TMP_PREFIX):  # a save interrupted by a kill
                os.remove(os.path.join(directory, name))

    def epochs(self):
        """Epoch numbers of the complete checkpoints, ascending."""
        found = []
        for name in os.listdir(self.directory):
            match = PATTERN.match(name)
            if match:
                found.append(int(match.group(1)))
        return sorted(found)

    def path(self, epoch):
        return os.path.join(self.directory, f"ckpt-{epoch:04d}.weights.h5")

    def restore(self):
        """Loads the newest checkpoint; returns its epoch (0 if none)."""
        epochs = self.epochs()
        if not epochs:
            return 0
        self.model.load_weights(self.path(epochs[-1]))
        return epochs[-1]

    def save(self, epoch):
        """Writes the checkpoint of ``epoch`` atomically; prunes old ones."""
        final = self.path(epoch)
        tmp = os.path.join(self.directory,
                           f"{TMP_PREFIX}{os.path.basename(final)}")
        self.model.save_weights(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, final)
        _fsync_dir(self.directory)
        for old in self.epochs()[:-self.keep]:
            os.remove(self.path(old))
        return final


def _fsync_dir(directory):
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
