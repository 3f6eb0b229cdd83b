"""The search step the probes measure (memory_probe.py, op_profile.py)."""

import numpy as np
import tensorflow as tf

from tf_amended_darts.core import engine
from tf_amended_darts.vision.supernet import SearchNetwork


def search_step(
    arch, hvp, layers, channels, size, batch, grappler=False, recompute=False
):
    """``(step, data)``: `BilevelSearch.train_step` of a supernet in a
    `tf.function`, and one fixed pair of random (train, val) batches.

    Grappler is switched for the whole process (off unless ``grappler``);
    ``recompute``: cells recomputed (recompute_cells.py).
    """
    tf.config.optimizer.set_experimental_options(
        {"disable_meta_optimizer": not grappler}
    )
    net = SearchNetwork(10, layers=layers, init_channels=channels)
    net.build((None, size, size, 3))
    if recompute:  # measured alternative, not kept (recompute_cells.py)
        from recompute_cells import patch

        patch(net)
    search = engine.BilevelSearch(net, arch_grad=arch, hvp=hvp)
    search.compile()
    rng = np.random.default_rng(0)

    def one_batch():
        return (
            tf.constant(rng.normal(size=(batch, size, size, 3)), tf.float32),
            tf.constant(rng.integers(0, 10, batch), tf.int32),
        )

    return tf.function(search.train_step), (one_batch(), one_batch())
