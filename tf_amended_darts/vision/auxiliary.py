"""The auxiliary classifier heads of the DARTS networks (``cnn/model.py``,
``AuxiliaryHeadCIFAR`` / ``AuxiliaryHeadImageNet``)."""

import math

import keras
import tensorflow as tf

from tf_amended_darts.nn.base import (
    ConfigLayer,
    build_chain,
    output_dtype_policy,
)
from tf_amended_darts.nn.batch_norm import BatchNorm
from tf_amended_darts.nn.conv import Conv2D
from tf_amended_darts.nn.linear import Linear
from tf_amended_darts.nn.pooling import AvgPool2D
from tf_amended_darts.nn.validate import check_int

_PACKAGE = "tf_amended_darts"

# quark0/darts cnn/model.py, AuxiliaryHead*: 1x1 conv to 128 channels, 2x2
# conv to 768 channels, average pool 5x5 (stride 3 CIFAR, 2 ImageNet).
AUX_CHANNELS_1 = 128
AUX_CHANNELS_2 = 768
AUX_POOL_SIZE = 5
AUX_POOL_STRIDE_CIFAR = 3
AUX_POOL_STRIDE_IMAGENET = 2


class _AuxiliaryHead(ConfigLayer):
    """ReLU, avg pool 5, 1x1 conv 128, BN, ReLU, 2x2 conv 768, [BN], ReLU,
    flatten, linear (DARTS ``model.py``, ``AuxiliaryHead*``)."""

    _config_keys = ("num_classes",)
    _pool_stride = AUX_POOL_STRIDE_CIFAR
    _second_bn = True

    def __init__(self, num_classes, **kwargs):
        super().__init__(**kwargs)
        check_int("num_classes", num_classes)
        self.num_classes = num_classes
        dtype = self.dtype_policy
        self.pool = AvgPool2D(
            AUX_POOL_SIZE,
            self._pool_stride,
            0,
            count_include_pad=False,
            name="pool",
            dtype=dtype,
        )
        self.conv_1 = Conv2D(AUX_CHANNELS_1, 1, name="conv_1", dtype=dtype)
        self.bn_1 = BatchNorm(affine=True, name="bn_1", dtype=dtype)
        self.conv_2 = Conv2D(AUX_CHANNELS_2, 2, name="conv_2", dtype=dtype)
        self.bn_2 = (
            BatchNorm(affine=True, name="bn_2", dtype=dtype)
            if self._second_bn
            else None
        )
        self.classifier = Linear(
            num_classes, name="classifier", dtype=output_dtype_policy(dtype)
        )

    def _features(self):
        layers = [self.pool, self.conv_1, self.bn_1, self.conv_2]
        return layers + ([self.bn_2] if self.bn_2 is not None else [])

    def _check_size(self, input_shape):
        for size in input_shape[1:3]:
            if size is not None and size < AUX_POOL_SIZE:
                raise ValueError(
                    f"{type(self).__name__} needs at least "
                    f"{AUX_POOL_SIZE}x{AUX_POOL_SIZE} inputs. Received: "
                    f"input_shape={tuple(input_shape)}"
                )

    def build(self, input_shape):
        self._check_size(input_shape)
        shape = build_chain(self._features(), input_shape)
        build_chain([self.classifier], (shape[0], math.prod(shape[1:])))

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.num_classes)

    def call(self, inputs, training=None):
        x = self.pool(tf.nn.relu(inputs))
        x = tf.nn.relu(self.bn_1(self.conv_1(x), training=training))
        x = self.conv_2(x)
        if self.bn_2 is not None:
            x = self.bn_2(x, training=training)
        x = tf.nn.relu(x)
        x = tf.reshape(x, [tf.shape(x)[0], math.prod(x.shape[1:])])
        return self.classifier(x)


@keras.saving.register_keras_serializable(package=_PACKAGE)
class AuxiliaryHeadCIFAR(_AuxiliaryHead):
    """Auxiliary classifier for 8x8 inputs (DARTS ``AuxiliaryHeadCIFAR``).

    ReLU, average pool 5x5 stride 3 (no padding; 8x8 -> 2x2), 1x1 conv to
    128, BN, ReLU, 2x2 conv to 768 (-> 1x1), BN, ReLU, linear.

    Args:
        num_classes: Output logits.
        **kwargs: Base layer keyword arguments (`name`, `dtype`, ...).
    """


@keras.saving.register_keras_serializable(package=_PACKAGE)
class AuxiliaryHeadImageNet(_AuxiliaryHead):
    """Auxiliary classifier of the ImageNet network.

    ReLU, average pool 5x5 stride 2, 1x1 conv to 128, BN, ReLU, 2x2 conv to
    768, ReLU, linear. The reference has no BN after the 2x2 conv ("This
    batchnorm was omitted in my earlier implementation due to a typo.
    Commenting it out for consistency with the experiments in the paper.").

    The reference docstring says "assuming input size 14x14", but the head
    sits after cell ``2 * layers // 3``, the second reduction cell, whose
    output at 224x224 is 7x7: 7x7 -> pool 2x2 -> conv 1x1x768, matching the
    reference's ``nn.Linear(768, num_classes)`` (a 14x14 input would give
    4x4x768 features and fail there). Here the linear layer takes the
    flattened features, which are 768 at that size.

    Args:
        num_classes: Output logits.
        **kwargs: Base layer keyword arguments (`name`, `dtype`, ...).
    """

    _pool_stride = AUX_POOL_STRIDE_IMAGENET
    _second_bn = False
