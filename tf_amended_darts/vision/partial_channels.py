"""PC-DARTS partial channel connections: a mixed edge on 1/K of the channels.

Xu et al., "PC-DARTS: Partial Channel Connections for Memory-Efficient
Architecture Search", ICLR 2020; reference ``model_search.py``
(yuhuixu1993/PC-DARTS, ``MixedOp.forward`` and ``channel_shuffle``), as
../shared/baselines.md section 1 records it:

* the first ``C // K`` channels (a fixed slice, not a random one) go through
  the candidate operators, each built for ``C // K`` channels (pooling ones
  with their non-affine batch norm, as every mixed edge);
* the other ``C - C // K`` channels bypass them: unchanged where the edge
  keeps the spatial size (stride 1), through a 2x2 max pool of stride 2 (no
  padding) where it halves it (reduction edges from the cell inputs);
* ``[processed, bypass]`` are concatenated on the channel axis and shuffled
  with ``K`` groups: in NHWC, output channel ``c * K + g`` is input channel
  ``g * (C / K) + c``, so the processed channels land at ``0, K, 2K, ...``.

Slicing, concatenation, the shuffle (a reshape and a transpose) and the
max pool (`nn.pooling.MaxPool2D`, a gather at the arg-max positions) are
linear or piecewise linear with exact derivatives of every order, so the
second-order estimators run through the edge unchanged
(tests/vision/test_partial_channels.py checks ``H v`` and ``D H v``
against float64 central differences).
"""

import keras
import tensorflow as tf

from tf_amended_darts.nn.pooling import MaxPool2D
from tf_amended_darts.nn.validate import check_int
from tf_amended_darts.vision.mixed_edge import MixedEdge

# PC-DARTS model_search.py: `self.k = 4` on CIFAR (model_search_imagenet.py
# uses 2).
PARTIAL_CHANNELS_CIFAR = 4
# PC-DARTS model_search.py: `self.mp = nn.MaxPool2d(2, 2)` on the bypass.
BYPASS_POOL_SIZE = 2


def channel_shuffle(x, groups):
    """PC-DARTS ``channel_shuffle`` on NHWC tensors.

    Output channel ``c * groups + g`` is input channel
    ``g * (C / groups) + c``.

    Args:
        x: a rank-4 NHWC tensor whose channel count is a multiple of
            ``groups``.
        groups: the number of groups (PC-DARTS' K).

    Returns:
        The shuffled tensor, same shape as ``x``.
    """
    check_int("groups", groups)
    channels = x.shape[-1]
    if channels is None or channels % groups:
        raise ValueError(
            f"Expected a channel count divisible by groups={groups}. "
            f"Received: channels={channels}"
        )
    if groups == 1:
        return x
    shape = tf.shape(x)
    per_group = channels // groups
    grouped = tf.reshape(
        x, tf.stack([shape[0], shape[1], shape[2], groups, per_group])
    )
    swapped = tf.transpose(grouped, [0, 1, 2, 4, 3])
    return tf.reshape(swapped, shape)


@keras.saving.register_keras_serializable(package="tf_amended_darts")
class PartialChannelEdge(keras.layers.Layer):
    """A mixed edge on the first ``C // K`` channels, the rest bypassing it.

    Reference: PC-DARTS ``MixedOp`` (see the module docstring).

    Args:
        operators: candidate operator names of this edge.
        channels: C (a multiple of ``partial_channels``; ``C // K`` must be
            even when ``skip_connect`` reduces, for its FactorizedReduce).
        stride: 1 or 2.
        partial_channels: K, the share ``1 / K`` of channels processed.
        affine: batch-norm affinity of the operators (False in search).
        **kwargs: base layer arguments.
    """

    def __init__(
        self,
        operators,
        channels,
        stride,
        partial_channels=PARTIAL_CHANNELS_CIFAR,
        affine=False,
        **kwargs,
    ):
        super().__init__(**kwargs)
        check_int("partial_channels", partial_channels)
        check_int("channels", channels)
        if channels % partial_channels:
            raise ValueError(
                "Expected `channels` divisible by partial_channels="
                f"{partial_channels}. Received: channels={channels}"
            )
        processed = channels // partial_channels
        if stride == 2 and "skip_connect" in operators and processed % 2:
            raise ValueError(
                "Expected an even channels // partial_channels for a "
                "reducing skip_connect (FactorizedReduce halves it). "
                f"Received: channels={channels}, "
                f"partial_channels={partial_channels}"
            )
        self.operators = tuple(operators)
        self.channels = channels
        self.stride = stride
        self.partial_channels = partial_channels
        self.affine = affine
        self.processed_channels = processed
        self.mixed = MixedEdge(
            self.operators, processed, stride, affine=affine, name="mixed"
        )
        self.bypass_pool = (
            MaxPool2D(BYPASS_POOL_SIZE, BYPASS_POOL_SIZE, 0, name="bypass")
            if stride == 2
            else None
        )

    def build(self, input_shape):
        shape = tuple(input_shape)
        if shape[-1] != self.channels:
            raise ValueError(
                f"Expected inputs with channels={self.channels}. Received "
                f"shape {shape}"
            )
        if self.stride == 2 and any(
            s is not None and s % 2 for s in shape[1:3]
        ):
            # The reference concatenates the operators' ceil(n / 2) outputs
            # with the bypass pool's floor(n / 2): equal sizes only.
            raise ValueError(
                "A partial-channel reduction edge needs even spatial sizes "
                f"(its bypass is a 2x2 max pool). Received shape {shape}"
            )
        self.mixed.build(shape[:-1] + (self.processed_channels,))
        self.built = True

    def call(self, x, weights, training=False, **kwargs):
        """Runs the edge.

        Args:
            x: the edge's input state (C channels).
            weights: (num_operators,) operator weights.
            training: training mode.
            **kwargs: passed to `MixedEdge.call` (drop-path, skip dropout).

        Returns:
            The shuffled ``[mixed(x[:C/K]), bypass(x[C/K:])]``.
        """
        rest = self.channels - self.processed_channels
        processed, bypass = tf.split(
            x, [self.processed_channels, rest], axis=-1
        )
        y = self.mixed(processed, weights, training=training, **kwargs)
        if self.bypass_pool is not None:
            bypass = self.bypass_pool(bypass)
        out = tf.concat([y, tf.cast(bypass, y.dtype)], axis=-1)
        return channel_shuffle(out, self.partial_channels)

    def get_config(self):
        config = super().get_config()
        config.update(
            operators=list(self.operators),
            channels=self.channels,
            stride=self.stride,
            partial_channels=self.partial_channels,
            affine=self.affine,
        )
        return config
