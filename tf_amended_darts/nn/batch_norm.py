"""Batch normalisation with PyTorch semantics and exact higher derivatives.

Statistics as `torch.nn.BatchNorm2d` computes them (biased variance for the
normalisation, unbiased for the moving variance, momentum 0.1 in PyTorch's
convention), the normalisation itself by `batch_norm_grad.normalize_batch`,
whose derivatives of every order are exact.
"""

import keras
import tensorflow as tf

from tf_amended_darts.nn.base import ConfigLayer
from tf_amended_darts.nn.batch_norm_grad import normalize_batch
from tf_amended_darts.nn.contexts import (
    cross_replica_sum,
    statistics_frozen,
    sync_replica_context,
)
from tf_amended_darts.nn.graph_constants import graph_constant
from tf_amended_darts.nn.validate import check_bool

# torch.nn.BatchNorm2d defaults, used by DARTS (quark0/darts, operations.py).
# PyTorch's momentum weights the new batch statistic; the Keras convention
# (weight of the old moving value) is 1 - 0.1 = 0.9.
PYTORCH_BN_EPSILON = 1e-5  # torch.nn.BatchNorm2d(eps=1e-5); Keras uses 1e-3
PYTORCH_BN_MOMENTUM = 0.1  # torch.nn.BatchNorm2d(momentum=0.1)
BN_MOMENTUM = 1.0 - PYTORCH_BN_MOMENTUM  # Keras convention: 0.9

_NHW = (0, 1, 2)  # batch-norm reduction axes (NHWC)
# Compute dtypes of the Keras mixed-precision policies ("mixed_float16",
# "mixed_bfloat16"), under which `BatchNorm` keeps float32 statistics.
LOW_PRECISION_DTYPES = ("float16", "bfloat16")


@keras.saving.register_keras_serializable(package="tf_amended_darts")
class BatchNorm(ConfigLayer):
    """Batch normalisation over N, H, W per channel, with PyTorch semantics.

    Training mode normalises with the biased batch variance computed as
    `mean(square(x - mean))`, the gradient flowing through the mean in both
    places (no `stop_gradient`, unlike `tf.nn.moments`), so that second
    derivatives are exact. Moving statistics follow `torch.nn.BatchNorm2d`:
    `moving = momentum * moving + (1 - momentum) * batch`, with the unbiased
    batch variance (`n / (n - 1)`) for `moving_variance`. The updates are plain
    `variable.assign` calls, so under `model.stateless_call` they come back in
    the returned non-trainable values; every training-mode call updates them,
    except inside `frozen_statistics()`, which makes no update at all.
    Under a `tf.distribute` strategy with several replicas each replica
    normalises with its own batch statistics, unless the layer is
    synchronized (``synchronized=True``, or ``None`` inside
    `synchronized_statistics()`, as the search engine does): then one
    all-reduce (sum) of the per-channel ``[sum(x - c), sum((x - c)^2),
    count]`` gives the statistics of the global batch, ``c`` being the
    moving mean (the same on every replica, constant in the weights; it
    only tempers the cancellation of ``E[d^2] - E[d]^2``). The all-reduce is
    differentiable to any order (its gradient is an all-reduce), so first
    and second derivatives are those of one replica on the global batch.
    The moving statistics take the mean of the replicas' updates
    (`aggregation="mean"`). Inference mode uses the moving statistics.
    Under a mixed-precision policy (``mixed_float16``, ``mixed_bfloat16``)
    the statistics and the normalisation are computed in float32 (the
    variable dtype) and only the output is in the compute dtype.

    Reference: Ioffe & Szegedy, 2015; `torch.nn.BatchNorm2d`. DARTS
    (quark0/darts) uses `affine=False` during search, `True` in re-training.

    Args:
        affine: Whether to learn a per-channel scale `gamma` (init 1) and
            offset `beta` (init 0).
        momentum: Keras-convention momentum, the weight of the old moving
            value (PyTorch momentum 0.1 == 0.9 here).
        epsilon: Added to the variance (PyTorch default 1e-5).
        synchronized: Cross-replica batch statistics under a multi-replica
            strategy: ``True`` always, ``False`` never, ``None`` (default)
            inside `synchronized_statistics()` only.
        **kwargs: Base layer keyword arguments (`name`, `dtype`, ...).
    """

    _config_keys = ("affine", "momentum", "epsilon", "synchronized")

    def __init__(
        self,
        affine=True,
        momentum=BN_MOMENTUM,
        epsilon=PYTORCH_BN_EPSILON,
        synchronized=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        check_bool("affine", affine)
        if synchronized is not None:
            check_bool("synchronized", synchronized)
        if not 0.0 <= momentum <= 1.0:
            raise ValueError(
                f"Expected `momentum` in [0, 1]. Received: momentum={momentum}"
            )
        if not epsilon > 0.0:
            raise ValueError(
                f"Expected `epsilon` > 0. Received: epsilon={epsilon}"
            )
        self.affine = affine
        self.momentum = float(momentum)
        self.epsilon = float(epsilon)
        self.synchronized = synchronized

    def build(self, input_shape):
        if len(input_shape) != 4 or input_shape[-1] is None:
            raise ValueError(
                "Expected a 4D NHWC input with a known channel count. "
                f"Received: input_shape={input_shape}"
            )
        shape = (input_shape[-1],)
        if self.affine:
            self.gamma = self.add_weight(
                shape=shape, name="gamma", initializer="ones", autocast=False
            )
            self.beta = self.add_weight(
                shape=shape, name="beta", initializer="zeros", autocast=False
            )
        for name, init in (
            ("moving_mean", "zeros"),
            ("moving_variance", "ones"),
        ):
            variable = self.add_weight(
                shape=shape,
                name=name,
                initializer=init,
                trainable=False,
                autocast=False,
                aggregation="mean",
            )
            setattr(self, name, variable)

    def call(self, inputs, training=None):
        output_dtype = self.compute_dtype
        # Mixed precision (compute dtype narrower than the variables'): the
        # statistics and the normalisation run in the variable dtype
        # (float32), as Keras' BatchNormalization does, and only the output
        # is cast back. In float16 the sum of squares overflows above
        # 65504 and its mean loses all but 11 bits.
        dtype = (
            self.dtype_policy.variable_dtype
            if output_dtype in LOW_PRECISION_DTYPES
            else output_dtype
        )
        x = tf.cast(inputs, dtype)
        axes = graph_constant(_NHW, tf.int32)
        if training:
            replica = sync_replica_context(self.synchronized)
            count = None
            if replica is None and not self.affine:
                # The search's batch norms: hand-written derivatives.
                normed, mean, variance = normalize_batch(
                    x, axes, self.epsilon
                )
                if not statistics_frozen():
                    self._update_moving_statistics(x, mean, variance)
                return tf.cast(normed, output_dtype)
            if replica is None:
                mean = tf.reduce_mean(x, axes)
                centred = x - mean
                variance = tf.reduce_mean(tf.square(centred), axes)
            else:
                mean, variance, count = self._global_moments(x, axes, replica)
                centred = x - mean
            if not statistics_frozen():
                self._update_moving_statistics(x, mean, variance, count)
        else:
            centred = x - tf.cast(self.moving_mean, dtype)
            variance = tf.cast(self.moving_variance, dtype)
        scale = tf.math.rsqrt(variance + graph_constant(self.epsilon, dtype))
        if not self.affine:
            return tf.cast(centred * scale, output_dtype)
        scale = scale * tf.cast(self.gamma, dtype)
        outputs = centred * scale + tf.cast(self.beta, dtype)
        return tf.cast(outputs, output_dtype)

    def _global_moments(self, x, axes, replica):
        """Mean, biased variance and count (per channel) of the global batch.

        One all-reduce of the stacked per-channel ``[sum(d), sum(d^2),
        count]``, ``d = x - c`` with ``c`` the moving mean.
        """
        dtype = x.dtype
        channels = x.shape[-1]
        shift = tf.stop_gradient(tf.cast(self.moving_mean, dtype))
        d = x - shift
        n = 1
        for size in x.shape[:3]:
            n = None if size is None or n is None else n * size
        if n is not None:
            count = graph_constant((float(n),) * channels, dtype)
        else:
            size = tf.cast(tf.size(x, out_type=tf.int64), dtype)
            count = tf.fill([channels], size / float(channels))
        local = tf.stack(
            [tf.reduce_sum(d, axes), tf.reduce_sum(tf.square(d), axes), count]
        )
        sum_d, sum_d2, count = tf.unstack(cross_replica_sum(replica, local))
        count = tf.stop_gradient(count)  # no derivative graph for it
        inverse = tf.math.reciprocal(count)
        mean_d = sum_d * inverse
        variance = sum_d2 * inverse - tf.square(mean_d)
        return shift + mean_d, variance, count

    def _update_moving_statistics(self, x, mean, variance, count=None):
        # moving <- momentum * moving + (1 - momentum) * batch statistic,
        # PyTorch storing the unbiased variance (n / (n - 1), n == 1 guarded).
        # No stop_gradient needed: nothing differentiable reads the result.
        # `count`: the (global) number of values per channel, a tensor, for
        # cross-replica statistics; None: this batch's.
        momentum = self.momentum
        n = 1
        for size in x.shape[:3]:
            n = None if size is None or n is None else n * size
        if count is not None:
            n = None
        for var, value, unbias in (
            (self.moving_mean, mean, False),
            (self.moving_variance, variance, True),
        ):
            dtype = tf.as_dtype(var.dtype)
            value = tf.cast(value, dtype)
            rate = 1.0 - momentum
            if unbias and n is not None:
                rate *= n / max(n - 1, 1)
            elif unbias and count is not None:
                count = tf.cast(count, dtype)
                value = value * (count / tf.maximum(count - 1, 1))
            elif unbias:
                size = tf.cast(tf.size(x, out_type=tf.int64), dtype)
                channels = graph_constant(float(x.shape[-1]), dtype)
                value = value * (size / tf.maximum(size - channels, channels))
            old = tf.cast(var.value, dtype)
            var.assign(
                old * graph_constant(momentum, dtype)
                + value * graph_constant(rate, dtype)
            )

    def compute_output_shape(self, input_shape):
        return input_shape
