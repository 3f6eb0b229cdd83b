"""The base class of the project's configurable layers."""

import keras


class ConfigLayer(keras.layers.Layer):
    """A layer whose `get_config` adds the attributes named in `_config_keys`.

    Each name is both a constructor argument and a public attribute; the
    base layer's config (name, dtype, trainable) is chained first.

    Args:
        **kwargs: Base layer keyword arguments (`name`, `dtype`, ...).
    """

    _config_keys = ()

    def get_config(self):
        config = super().get_config()
        config.update({key: getattr(self, key) for key in self._config_keys})
        return config


def build_chain(layers, input_shape):
    """Builds unbuilt `layers` in sequence; returns the output shape."""
    shape = tuple(input_shape)
    for layer in layers:
        if not layer.built:
            layer.build(shape)
        shape = tuple(layer.compute_output_shape(shape))
    return shape


def chain_shape(layers, input_shape):
    """The output shape of `layers` applied in sequence."""
    shape = tuple(input_shape)
    for layer in layers:
        shape = tuple(layer.compute_output_shape(shape))
    return shape


def output_dtype_policy(policy):
    """The dtype policy of a network's classifiers: float32 logits.

    Under a mixed-precision policy (compute dtype narrower than the
    variables', e.g. ``mixed_float16``) the final linear layers compute in
    the variable dtype (float32), so the logits, the softmax and the loss
    are float32 (the Keras mixed-precision guide's advice; a float16
    softmax over-/underflows). Other policies are returned unchanged, so a
    float32 or float64 network is untouched.

    Args:
        policy: a `keras.DTypePolicy` or its name.

    Returns:
        A `keras.DTypePolicy`.
    """
    policy = keras.dtype_policies.get(policy)
    if policy.compute_dtype != policy.variable_dtype:
        return keras.dtype_policies.DTypePolicy(policy.variable_dtype)
    return policy
