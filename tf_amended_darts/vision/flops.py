"""Multiply-add counts of re-training networks, and the mobile width search.

Convention (that of the DARTS, P-DARTS and PC-DARTS papers' "multiply-add"
counts, as thop / torchprofile-style counters compute them): only
convolutions and fully connected layers count, per image,

* convolution: ``H_out * W_out * C_out * (C_in / groups) * k * k``
  (a depthwise convolution has ``groups = C_in``: ``H_out * W_out * C * k *
  k``; dilation does not change the count);
* fully connected: ``in_features * out_features``.

Biases, batch norm, ReLU, pooling, additions, concatenations and the
drop-path mask are not counted. The auxiliary head is excluded (it only
runs in training mode).

With this convention DARTS_V2 on ImageNet (C = 48, 14 cells, 224x224)
counts 529.9M multiply-adds, 7.7% below the DARTS paper's "574M". The DARTS
authors never released their counter and the paper's figure is not
reproduced by conv + FC counting elsewhere either (quark0/darts issue #46:
523M counting conv and FC layers, 544.6M with ptflops, which also counts
BN, ReLU and pooling). The test suite checks this count against an
independent closed-form count, and against 574M within 10% only.

Counting traces the network once in inference mode inside a
``tf.function`` (graph construction only, nothing is computed) and records
the static output shape of every `layers.Conv2D`, `layers.DepthwiseConv2D`
and `Linear` called.
"""

import math

import tensorflow as tf

from tf_amended_darts.nn.conv import Conv2D, DepthwiseConv2D
from tf_amended_darts.nn.linear import Linear
from tf_amended_darts.nn.validate import check_int
from tf_amended_darts.vision import network as N

# Mobile setting (DARTS paper section 3.3; method.md section 7): at most
# 600M multiply-adds at 224x224.
MOBILE_BUDGET = 600e6
MOBILE_IMAGE_SIZE = 224
# Width step of the search: C must be even (the first ImageNet cell's
# FactorizedReduce splits C into two halves, stem0 makes C / 2 channels).
WIDTH_STEP = 2

_COUNTED = (Conv2D, DepthwiseConv2D, Linear)


def layer_macs(layer, output_shape):
    """Multiply-adds per image of one counted layer.

    Args:
        layer: A built `Conv2D`, `DepthwiseConv2D` or `Linear`.
        output_shape: Its output shape (batch first, any batch size).

    Returns:
        An int.
    """
    kernel = tuple(int(d) for d in layer.kernel.shape)
    if isinstance(layer, Linear):
        return kernel[0] * kernel[1]
    h_out, w_out = int(output_shape[1]), int(output_shape[2])
    k_h, k_w, c_in, c_mult = kernel
    if isinstance(layer, DepthwiseConv2D):  # groups = C_in, C_out = C_in
        return h_out * w_out * c_in * c_mult * k_h * k_w
    return h_out * w_out * c_mult * c_in * k_h * k_w


def _counted_layers(network):
    """The counted layers inside `network`, outside its auxiliary head."""
    head = getattr(network, "auxiliary_head", None)
    skip = set()
    if head is not None:
        skip = {id(x) for x in head._flatten_layers(include_self=True)}
    return [
        layer
        for layer in network._flatten_layers(include_self=False)
        if isinstance(layer, _COUNTED) and id(layer) not in skip
    ]


def layer_shapes(network, image_size):
    """Traces one inference call; returns ``[(layer, output_shape), ...]``.

    Args:
        network: A Keras network taking NHWC RGB images (built here at
            ``(None, image_size, image_size, 3)`` if not built yet).
        image_size: Input height and width.

    Returns:
        Each counted layer call in call order, with its static output shape.
    """
    check_int("image_size", image_size)
    if not network.built:
        network.build((None, image_size, image_size, 3))
    records = []
    patched = _counted_layers(network)

    def recorder(layer, call):
        def wrapped(*args, **kwargs):
            outputs = call(*args, **kwargs)
            records.append((layer, tuple(outputs.shape)))
            return outputs

        return wrapped

    for layer in patched:
        object.__setattr__(layer, "call", recorder(layer, layer.call))
    try:
        spec = tf.TensorSpec(
            (1, image_size, image_size, 3), network.compute_dtype
        )
        trace = tf.function(
            lambda x: network(x, training=False), autograph=False
        )
        trace.get_concrete_function(spec)
    finally:
        for layer in patched:
            object.__delattr__(layer, "call")
    return records


def count_macs(network, image_size):
    """Multiply-adds of one image through `network` (auxiliary excluded).

    Args:
        network: A `NetworkCIFAR` / `NetworkImageNet` (or any Keras model
            built from the counted layers), built or not.
        image_size: Input height and width.

    Returns:
        An int (see the module docstring for what counts).
    """
    return sum(
        layer_macs(layer, shape)
        for layer, shape in layer_shapes(network, image_size)
    )


def imagenet_macs(
    genotype,
    init_channels,
    layers=N.IMAGENET_LAYERS,
    image_size=MOBILE_IMAGE_SIZE,
    num_classes=N.IMAGENET_NUM_CLASSES,
):
    """Multiply-adds of `NetworkImageNet(genotype, ...)` at `image_size`."""
    net = N.NetworkImageNet(
        genotype,
        num_classes=num_classes,
        layers=layers,
        init_channels=init_channels,
        auxiliary=False,
    )
    return count_macs(net, image_size)


def largest_width_within(
    genotype,
    budget=MOBILE_BUDGET,
    image_size=MOBILE_IMAGE_SIZE,
    layers=N.IMAGENET_LAYERS,
    num_classes=N.IMAGENET_NUM_CLASSES,
    step=WIDTH_STEP,
):
    """Largest ImageNet width C (a multiple of `step`) within a MAC budget.

    For even C every counted layer's MACs are ``a * C**2``, ``b * C`` or
    constant (spatial sizes do not depend on C), so ``macs(C)`` is an exact
    quadratic: it is fitted on three small widths, solved for the budget,
    and the answer is then checked by exact counts at C and ``C + step``
    (walking by `step` should a check disagree).

    Args:
        genotype: A `Genotype`, its JSON dict, a published name or a path.
        budget: Maximum multiply-adds per image (600M: mobile setting).
        image_size: Input height and width.
        layers: Number of cells.
        num_classes: Classifier outputs.
        step: Width granularity; an even integer (2 by default).

    Returns:
        ``(C, macs(C))`` with ``macs(C) <= budget < macs(C + step)``.

    Raises:
        ValueError: For an odd or non-positive `step`, a non-positive
            budget, or when even ``C = step`` exceeds the budget.
    """
    check_int("step", step)
    if step % 2:
        raise ValueError(f"Expected an even `step`. Received: step={step}")
    if not budget > 0:
        raise ValueError(f"Expected `budget` > 0. Received: budget={budget}")
    genotype = N.as_genotype(genotype)
    cache = {}

    def macs(c):
        if c not in cache:
            cache[c] = imagenet_macs(
                genotype, c, layers, image_size, num_classes
            )
        return cache[c]

    if macs(step) > budget:
        raise ValueError(
            f"Even init_channels={step} needs {macs(step)} multiply-adds. "
            f"Received: budget={budget}"
        )
    # Exact quadratic through (step, 2 step, 3 step), in units u = C / step.
    m1, m2, m3 = macs(step), macs(2 * step), macs(3 * step)
    a = (m3 - 2 * m2 + m1) / 2.0
    b = m2 - m1 - 3.0 * a
    c0 = m1 - a - b
    if a > 0:
        u = (-b + math.sqrt(b * b - 4 * a * (c0 - budget))) / (2 * a)
    elif b > 0:
        u = (budget - c0) / b
    else:
        u = 1.0
    width = max(step, int(math.floor(u)) * step)
    while macs(width) > budget and width > step:
        width -= step
    while macs(width + step) <= budget:
        width += step
    return width, macs(width)
