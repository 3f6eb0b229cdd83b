"""Shared test set-up: quiet TensorFlow, CPU only, small thread pools."""

import os

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")


@pytest.fixture(scope="module")
def restore_global_tf_state():
    """Undoes the launchers' process-global TensorFlow settings.

    The search and re-training launchers turn op determinism on and
    Grappler off for the whole process; a module that runs them uses this
    fixture (``pytestmark``) so later modules run with the defaults.
    """
    import tensorflow as tf
    from tensorflow.python.framework import config as tf_config

    determinism = tf_config.is_op_determinism_enabled()
    yield
    if not determinism:
        tf_config.disable_op_determinism()
    tf.config.optimizer.set_experimental_options(
        {"disable_meta_optimizer": False}
    )
