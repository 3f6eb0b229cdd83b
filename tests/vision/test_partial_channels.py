"""PC-DARTS: partial channel connections and edge normalisation.

Oracles: hand-computed small cases (which channels bypass, the shuffle
order, the 2x2 max pool of the bypass, the per-node softmax of the betas
and the reference's derivation rule), and float64 central differences for
the products the amended estimator takes through them.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

from tf_amended_darts.core import bilevel, engine
from tf_amended_darts.vision import search_space as S
from tf_amended_darts.vision.partial_channels import (
    PartialChannelEdge,
    channel_shuffle,
)
from tf_amended_darts.vision.supernet import SearchNetwork


def test_channel_shuffle_order_by_hand():
    # 8 channels, K = 4 groups of 2: output c * 4 + g is input g * 2 + c.
    x = tf.reshape(tf.range(8, dtype=tf.float32), (1, 1, 1, 8))
    out = channel_shuffle(x, 4).numpy().ravel()
    np.testing.assert_array_equal(out, [0, 2, 4, 6, 1, 3, 5, 7])
    # K = 2 groups of 3 (PC-DARTS ImageNet's K on 6 channels)
    x = tf.reshape(tf.range(6, dtype=tf.float32), (1, 1, 1, 6))
    np.testing.assert_array_equal(
        channel_shuffle(x, 2).numpy().ravel(), [0, 3, 1, 4, 2, 5]
    )


def test_channel_shuffle_keeps_spatial_positions():
    x = np.random.default_rng(0).normal(size=(2, 3, 5, 8)).astype("float32")
    out = channel_shuffle(tf.constant(x), 4).numpy()
    for c in range(2):
        for g in range(4):
            np.testing.assert_array_equal(
                out[..., c * 4 + g], x[..., g * 2 + c]
            )


def test_stride_one_edge_processes_the_first_quarter_and_bypasses_the_rest():
    # skip_connect at stride 1 is the identity, weighted by w: the first
    # C/K channels come out scaled, the rest unchanged, then shuffled.
    x = np.random.default_rng(1).normal(size=(2, 4, 4, 8)).astype("float32")
    edge = PartialChannelEdge(("skip_connect",), 8, 1, partial_channels=4)
    out = edge(tf.constant(x), tf.constant([0.3]), training=True).numpy()
    assert out.shape == (2, 4, 4, 8)
    expected = np.concatenate([0.3 * x[..., :2], x[..., 2:]], axis=-1)
    # processed channels 0, 1 land at output channels 0 and 4 (c * K + g)
    np.testing.assert_allclose(out[..., 0], 0.3 * x[..., 0], rtol=1e-6)
    np.testing.assert_allclose(out[..., 4], 0.3 * x[..., 1], rtol=1e-6)
    for c in range(2):
        for g in range(4):
            np.testing.assert_allclose(
                out[..., c * 4 + g], expected[..., g * 2 + c], rtol=1e-6
            )


def test_stride_two_edge_max_pools_the_bypass():
    # `none` on the processed quarter: zeros there; the bypass is the 2x2
    # stride-2 max pool of channels 2..7 (PC-DARTS `nn.MaxPool2d(2, 2)`).
    x = np.random.default_rng(2).normal(size=(2, 6, 6, 8)).astype("float32")
    edge = PartialChannelEdge(
        ("none", "max_pool_3x3"), 8, 2, partial_channels=4
    )
    out = edge(tf.constant(x), tf.constant([1.0, 0.0]), training=True)
    out = out.numpy()
    assert out.shape == (2, 3, 3, 8)
    pooled = x[..., 2:].reshape(2, 3, 2, 3, 2, 6).max(axis=(2, 4))
    expected = np.concatenate([np.zeros((2, 3, 3, 2)), pooled], axis=-1)
    for c in range(2):
        for g in range(4):
            np.testing.assert_allclose(
                out[..., c * 4 + g], expected[..., g * 2 + c], rtol=1e-6
            )


def test_operators_are_built_for_a_quarter_of_the_channels():
    edge = PartialChannelEdge(S.DARTS_PRIMITIVES, 16, 2, partial_channels=4)
    edge.build((None, 8, 8, 16))
    # sep_conv_3x3 on 4 channels: 2 * (4 * 9 + 4 * 4) weights (no BN affine)
    k = S.DARTS_PRIMITIVES.index("sep_conv_3x3")
    sep = edge.mixed.candidates[edge.mixed.indices.index(k)]
    assert sum(int(np.prod(v.shape)) for v in sep.trainable_weights) == (
        2 * (4 * 9 + 4 * 4)
    )


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(channels=10, stride=1, partial_channels=4), "divisible"),
        (dict(channels=12, stride=2, partial_channels=4), "even"),
    ],
)
def test_clear_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        PartialChannelEdge(("skip_connect", "none"), **kwargs)


def test_odd_sizes_refused_on_reduction_edges():
    edge = PartialChannelEdge(("max_pool_3x3",), 8, 2, partial_channels=4)
    with pytest.raises(ValueError, match="even spatial sizes"):
        edge.build((None, 7, 7, 8))


def _net(**kwargs):
    args = dict(num_classes=10, layers=3, init_channels=8)
    args.update(kwargs)
    net = SearchNetwork(**args)
    net.build((None, 8, 8, 3))
    return net


def test_edge_normalization_weights_are_a_softmax_per_node():
    net = _net(edge_normalization=True, partial_channels=4)
    shapes = [tuple(v.shape) for v in net.arch_variables]
    assert shapes == [(14, 8), (14, 8), (14,), (14,)]
    betas = np.linspace(-1.0, 2.0, 14)
    net.edge_betas["normal"].assign(betas)
    w = net.arch_weights()["edge_norm_normal"]
    for lo, hi in ((0, 2), (2, 5), (5, 9), (9, 14)):
        e = np.exp(betas[lo:hi])
        np.testing.assert_allclose(w[lo:hi], e / e.sum(), rtol=1e-6)
    out = net(tf.zeros((2, 8, 8, 3)), training=True)
    assert out.shape == (2, 10)


def test_edge_normalization_scales_each_edge_output():
    # One normal cell, edges whose only operator is skip_connect: node 0 of
    # the cell is beta_0 * s0 + beta_1 * s1 with (beta_0, beta_1) the
    # softmax of the node's two logits.
    from tf_amended_darts.vision.cells import SearchCell

    x0, x1 = (
        tf.constant(np.random.default_rng(s).normal(size=(2, 4, 4, 4)),
                    tf.float32)
        for s in (3, 4)
    )
    cell = SearchCell(S.edge_list("pruned", 1), ("skip_connect",), 4, False,
                      False, multiplier=1)
    scales = tf.constant([0.25, 0.75])
    out = cell((x0, x1), tf.ones((2, 1)), edge_scales=scales, training=True)
    s0 = cell.preprocess0(x0, training=True)
    s1 = cell.preprocess1(x1, training=True)
    np.testing.assert_allclose(out, 0.25 * s0 + 0.75 * s1, rtol=1e-5,
                               atol=1e-6)


def test_derivation_uses_alpha_times_beta_for_edges_not_operators():
    net = _net(edge_normalization=True)
    alpha = np.zeros((14, 8))
    alpha[:, 4] = 2.0  # sep_conv_3x3 the strongest operator everywhere
    alpha[3, 6] = 3.0  # edge 3 (c_{k-1} -> node 1): dil_conv_3x3
    net.alphas["normal"].assign(alpha)
    net.edge_betas["normal"].assign(np.zeros(14))
    g = net.genotype()
    # equal betas: node 1 keeps edge 3 (strongest), then edge 2 (tied with
    # edge 4: the earlier one)
    assert g.normal[2:4] == (("dil_conv_3x3", 1), ("sep_conv_3x3", 0))
    betas = np.zeros(14)
    betas[4] = 5.0  # node 1's edge from node 0 weighs most
    betas[2] = -5.0
    net.edge_betas["normal"].assign(betas)
    g = net.genotype()
    # reference rule on W = softmax(alpha) * node_softmax(beta)
    w = net.arch_weights()
    weights = w["normal"] * w["edge_norm_normal"][:, None]
    rows = weights[2:5]
    strength = [max(r[k] for k in range(1, 8)) for r in rows]
    top = sorted(range(3), key=lambda i: strength[i], reverse=True)[:2]
    assert [i for _, i in g.normal[2:4]] == top == [2, 1]
    # the operator on each kept edge is the alpha argmax, beta or not
    assert g.normal[2:4] == (("sep_conv_3x3", 2), ("dil_conv_3x3", 1))


def _network_problem(dtype="float64"):
    """The amended problem of a PC-DARTS supernet (betas included)."""
    keras.utils.set_random_seed(0)
    keras.config.set_dtype_policy(dtype)
    try:
        net = SearchNetwork(
            10,
            layers=3,
            init_channels=4,
            operators=("max_pool_3x3", "skip_connect", "sep_conv_3x3"),
            arch_init_scale=0.5,
            partial_channels=2,
            edge_normalization=True,
            dtype=dtype,
        )
        net.build((None, 8, 8, 3))
    finally:
        keras.config.set_dtype_policy("float32")
    search = engine.BilevelSearch(net, arch_grad="amended")
    search.compile()
    rng = np.random.default_rng(0)
    x = tf.constant(rng.normal(size=(6, 8, 8, 3)), dtype)
    y = tf.constant(rng.integers(0, 10, 6), tf.int32)
    w = [tf.convert_to_tensor(v.value) for v in net.weight_variables]
    a = [tf.convert_to_tensor(v.value) for v in net.arch_variables]
    return search.functional_loss(x, y), w, a


def _cell_problem():
    """A reduction cell of PC-DARTS edges with betas, as ``L(w, a)``.

    ``a`` = (alphas, betas); the loss is a smooth function of the cell
    output, evaluated functionally (``stateless_call``) in float64.
    """
    from tf_amended_darts.nn.contexts import frozen_statistics
    from tf_amended_darts.vision.cells import SearchCell

    keras.utils.set_random_seed(0)
    f64 = "float64"
    keras.config.set_dtype_policy(f64)
    try:
        inputs = S.edge_list("pruned", 2)
        cell = SearchCell(inputs, ("max_pool_3x3", "skip_connect",
                                   "sep_conv_3x3"), 4, True, False,
                          multiplier=2, partial_channels=2, dtype=f64)
        rng = np.random.default_rng(0)
        x0, x1 = (tf.constant(rng.normal(size=(4, 6, 6, 4)), f64)
                  for _ in range(2))
        cell.build((x0.shape, x1.shape))
    finally:
        keras.config.set_dtype_policy("float32")
    sizes = [len(n) for n in inputs]
    non_trainable = [v.value for v in cell.non_trainable_variables]

    def loss(w, a):
        alphas, betas = a
        weights = tf.nn.softmax(alphas, axis=-1)
        scales = tf.concat(
            [tf.nn.softmax(b) for b in tf.split(betas, sizes)], axis=0)
        with frozen_statistics():
            out, _ = cell.stateless_call(
                list(w), non_trainable, (x0, x1), weights,
                edge_scales=scales, training=True)
        return tf.reduce_sum(tf.sin(0.7 * out + 0.3))

    w = [tf.convert_to_tensor(v.value) for v in cell.trainable_variables]
    a = [tf.constant(rng.normal(size=(5, 3)), f64),
         tf.constant(rng.normal(size=(5,)), f64)]
    return loss, w, a


def _relative_error(xs, ys):
    diff = [x - y for x, y in zip(xs, ys, strict=True)]
    return float(bilevel.global_norm(diff) / bilevel.global_norm(ys))


def _check_amended_products(loss, w, a):
    """Graph-mode H v and D H v against float64 central differences.

    The functions are piecewise smooth (ReLU, max pools): a tiny step on
    unit directions keeps the differences off the kinks.
    """
    rng = np.random.default_rng(1)
    v = [tf.constant(rng.normal(size=x.shape), tf.float64) for x in w]
    v = bilevel.scale(1 / bilevel.global_norm(v), v)

    @tf.function
    def products():
        return bilevel.amended_product_exact(loss, w, a, v)

    @tf.function
    def grads(ws):
        return bilevel.loss_and_grads(loss, ws, a)[1:]

    hv, dhv = products()
    eps = 1e-6
    plus = grads(bilevel.axpy(eps, v, w))
    minus = grads(bilevel.axpy(-eps, v, w))
    hv_fd = [(p - m) / (2 * eps)
             for p, m in zip(plus[0], minus[0], strict=True)]
    assert _relative_error(hv, hv_fd) < 1e-6
    norm = bilevel.global_norm(hv)
    u = bilevel.scale(1 / norm, hv)
    plus = grads(bilevel.axpy(eps, u, w))
    minus = grads(bilevel.axpy(-eps, u, w))
    dhv_fd = [norm * (p - m) / (2 * eps)
              for p, m in zip(plus[1], minus[1], strict=True)]
    assert _relative_error(dhv, dhv_fd) < 1e-6
    # the betas' part of D H v is not zero: they are searched too
    assert float(tf.norm(dhv[-1])) > 0


def test_amended_products_through_a_partial_channel_cell_with_betas():
    _check_amended_products(*_cell_problem())


@pytest.mark.slow
def test_amended_products_through_a_partial_channel_supernet():
    _check_amended_products(*_network_problem())
