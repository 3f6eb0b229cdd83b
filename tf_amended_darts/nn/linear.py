"""A fully connected layer initialised as `torch.nn.Linear`."""

import math

import keras
import tensorflow as tf

from tf_amended_darts.nn.base import ConfigLayer
from tf_amended_darts.nn.conv import pytorch_conv_initializer
from tf_amended_darts.nn.validate import check_int


@keras.saving.register_keras_serializable(package="tf_amended_darts")
class Linear(ConfigLayer):
    """Fully connected layer initialised as `torch.nn.Linear`.

    Kernel and bias uniform in +-1 / sqrt(fan_in) (`torch.nn.Linear`'s
    kaiming_uniform(a=sqrt(5)) and bias init). Input: (batch, features).

    Args:
        units: Output features.
        **kwargs: Base layer keyword arguments (`name`, `dtype`, ...).
    """

    _config_keys = ("units",)

    def __init__(self, units, **kwargs):
        super().__init__(**kwargs)
        check_int("units", units)
        self.units = units

    def build(self, input_shape):
        fan_in = input_shape[-1]
        if fan_in is None:
            raise ValueError(
                f"Expected a known feature count. Received: {input_shape}"
            )
        self.kernel = self.add_weight(
            shape=(fan_in, self.units),
            name="kernel",
            initializer=pytorch_conv_initializer(),
        )
        bound = 1.0 / math.sqrt(fan_in)
        self.bias = self.add_weight(
            shape=(self.units,),
            name="bias",
            initializer=keras.initializers.RandomUniform(-bound, bound),
        )

    def call(self, inputs):
        x = tf.cast(inputs, self.compute_dtype)
        kernel = tf.cast(self.kernel, self.compute_dtype)
        return tf.matmul(x, kernel) + tf.cast(self.bias, self.compute_dtype)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (self.units,)
