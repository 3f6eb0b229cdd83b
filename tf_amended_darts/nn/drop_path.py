"""Drop-path (per-sample dropout of whole paths) and its linear ramp, and
element-wise dropout (P-DARTS' dropout on skip-connections)."""

import keras
import tensorflow as tf

from tf_amended_darts.nn.validate import check_int, check_prob

# quark0/darts cnn/train.py: --drop_path_prob 0.2, ramped linearly over the
# epochs.
DROP_PATH_PROB = 0.2


def _keep_mask(shape, rate, dtype, seed):
    """A Bernoulli(keep) mask of ``shape`` (1 with probability ``keep = 1 -
    rate``) and ``keep``, both in ``dtype``, from one float32 uniform draw."""
    keep = 1.0 - tf.cast(rate, "float32")
    noise = keras.random.uniform(shape, dtype="float32", seed=seed)
    return tf.cast(noise < keep, dtype), tf.cast(keep, dtype)


def drop_path(x, drop_prob, seed=None):
    """Zeroes whole samples with probability `drop_prob`, rescales the rest.

    Reference ``utils.drop_path`` (quark0/darts): a per-sample mask drawn
    from Bernoulli(keep), keep = 1 - drop_prob, and ``x / keep * mask``.
    With ``drop_prob == 0`` the result equals `x` exactly.

    Args:
        x: NHWC tensor.
        drop_prob: Python float or scalar tensor in [0, 1).
        seed: A `keras.random.SeedGenerator`, an int or None.

    Returns:
        A tensor like `x`.
    """
    shape = tf.stack([tf.shape(x)[0], 1, 1, 1])
    mask, keep = _keep_mask(shape, drop_prob, x.dtype, seed)
    return x / keep * mask


def path_factors(batch_size, num_paths, drop_prob, dtype, seed=None):
    """`drop_path`'s factors for ``num_paths`` paths of one batch, in one
    draw.

    Column ``j`` is what `drop_path` multiplies path ``j``'s samples by: 0
    with probability ``drop_prob``, else ``1 / keep``, independently per
    sample and path (the reference's per-path Bernoulli masks, drawn as
    one uniform tensor: a search cell's edge draws once for all its
    candidates instead of once per candidate, a few graph nodes instead of
    a dozen per candidate).

    Args:
        batch_size: int or scalar tensor.
        num_paths: Python int >= 1.
        drop_prob: Python float or scalar tensor in [0, 1).
        dtype: the factors' dtype.
        seed: A `keras.random.SeedGenerator`, an int or None.

    Returns:
        A ``(batch_size, num_paths)`` tensor.
    """
    mask, keep = _keep_mask(
        tf.stack([batch_size, num_paths]), drop_prob, dtype, seed
    )
    return mask / keep


def dropout(x, rate, seed=None):
    """Element-wise dropout: each element kept with probability 1 - rate.

    PyTorch ``nn.Dropout(p)`` in training mode (P-DARTS wraps its stride-1
    skip-connections in it, model_search.py ``MixedOp``): elements are
    zeroed independently with probability ``rate`` and the rest divided by
    ``1 - rate``. Given the mask this is linear in ``x``, so derivatives of
    every order are exact. With ``rate == 0`` the result equals ``x``.

    Args:
        x: a tensor.
        rate: Python float or scalar tensor in [0, 1).
        seed: A `keras.random.SeedGenerator`, an int or None.

    Returns:
        A tensor like ``x``.
    """
    mask, keep = _keep_mask(tf.shape(x), rate, x.dtype, seed)
    return x / keep * mask


def drop_path_prob_at(epoch, max_prob, epochs):
    """``max_prob * epoch / epochs`` (reference ``train.py``, epoch from 0)."""
    return max_prob * epoch / epochs


class DropPathSchedule(keras.callbacks.Callback):
    """Ramps the model's drop-path probability linearly from 0.

    At the start of epoch ``e`` (0-based) sets ``model.drop_path_prob =
    max_prob * e / epochs``, as the reference ``train.py``:
    ``model.drop_path_prob = args.drop_path_prob * epoch / args.epochs``.

    Args:
        max_prob: The probability the ramp tends to, in [0, 1) (reference
            default 0.2).
        epochs: Total training epochs.
    """

    def __init__(self, max_prob=DROP_PATH_PROB, epochs=600):
        super().__init__()
        self.max_prob = check_prob("max_prob", max_prob)
        check_int("epochs", epochs)
        self.epochs = epochs

    def on_epoch_begin(self, epoch, logs=None):
        self.model.drop_path_prob = drop_path_prob_at(
            epoch, self.max_prob, self.epochs
        )
