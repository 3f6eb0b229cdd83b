"""The search network: structure, architecture variables, exact products."""

import contextlib

import keras
import numpy as np
import pytest
import tensorflow as tf

from tf_amended_darts.core import bilevel, engine
from tf_amended_darts.vision import search_space as S
from tf_amended_darts.vision.supernet import SearchNetwork


def _net(**kwargs):
    args = dict(num_classes=10, layers=3, init_channels=4)
    args.update(kwargs)
    net = SearchNetwork(**args)
    net.build((None, 8, 8, 3))
    return net


@pytest.mark.parametrize("edges,shared,ops,shapes", [
    ("pruned", True, S.DARTS_PRIMITIVES, [(14, 8), (14, 8)]),
    ("fixed", False, ("skip_connect", "sep_conv_3x3"), [(8, 2)] * 3),
    ("searched", True, ("sep_conv_3x3", "skip_connect", "none"),
     [(14, 3), (14, 3), (20,), (20,)]),  # 1 + 3 + 6 + 10 pairs
])
def test_architecture_variables(edges, shared, ops, shapes):
    net = _net(edges=edges, shared=shared, operators=ops)
    assert [tuple(v.shape) for v in net.arch_variables] == shapes
    arch = {id(v) for v in net.arch_variables}
    assert not arch & {id(v) for v in net.weight_variables}
    assert len(net.arch_variables) + len(net.weight_variables) == len(
        net.trainable_variables)
    logits = net(tf.zeros((2, 8, 8, 3)), training=True)
    assert logits.shape == (2, 10)


def test_reduction_cells_and_channels():
    net = _net(layers=5, init_channels=4)
    assert [c.reduction for c in net.cells] == [False, True, False, True,
                                                False]
    assert [c.channels for c in net.cells] == [4, 8, 8, 16, 16]
    # search BN is non-affine: the only BN parameters are the stem's
    bn_params = [v for v in net.weight_variables
                 if v.path.endswith(("gamma", "beta"))]
    assert len(bn_params) == 2


def test_classifier_is_initialised_as_torch_linear():
    # DARTS model_search.py: nn.Linear(C_prev, num_classes), uniform in
    # +-1/sqrt(fan_in) for kernel and bias (issue 13: it was Keras' Dense
    # with Glorot kernel and zero bias, unlike every other layer).
    keras.utils.set_random_seed(0)
    net = _net(layers=3, init_channels=16)
    kernel, bias = net.classifier.kernel.numpy(), net.classifier.bias.numpy()
    fan_in = kernel.shape[0]
    bound = 1.0 / np.sqrt(fan_in)
    assert fan_in == 4 * 64  # 4 nodes x C = 64 after two reductions
    for w in (kernel, bias):
        assert np.abs(w).max() <= bound
        # spread over the whole interval (a uniform sample, not zeros)
        assert np.abs(w).max() > 0.8 * bound
        assert abs(w.std() - bound / np.sqrt(3)) < 0.25 * bound / np.sqrt(3)


def test_genotype_follows_the_weights():
    net = _net()
    w = np.full((14, 8), -5.0)
    # node j: make edges (0, j+1) strongest, with sep_conv_3x3 (index 4)
    offset = 0
    for j in range(4):
        w[offset + 0, 4] = 3.0
        w[offset + j + 1, 6] = 2.0  # dil_conv_3x3
        if j >= 1:
            w[offset + 1, 0] = 12.0  # `none` strongest there: ignored
        offset += j + 2
    net.alphas["normal"].assign(w)
    g = net.genotype()
    assert g.normal[:2] == (("sep_conv_3x3", 0), ("dil_conv_3x3", 1))
    assert g.normal[6:] == (("sep_conv_3x3", 0), ("dil_conv_3x3", 4))


def _problem(operators, dtype="float64"):
    # Seeded: an unseeded initialisation depends on which tests ran before
    # in the worker, and a rare draw puts a ReLU / max-pool kink within the
    # finite-difference step below.
    keras.utils.set_random_seed(0)
    keras.config.set_dtype_policy(dtype)
    try:
        net = SearchNetwork(10, layers=3, init_channels=4,
                            operators=operators,
                            arch_init_scale=0.5, dtype=dtype)
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
    return search, search.functional_loss(x, y), w, a


def _forward_products(loss, w, a, v):
    """``(H v, D H v)`` forward-over-reverse (``--hvp=forward``)."""
    hv = bilevel.hvp_forward(loss, w, a, v)
    return hv, bilevel.mixed_forward(loss, w, a, hv)


@pytest.mark.parametrize("operators,product", [
    (("max_pool_3x3", "skip_connect", "sep_conv_3x3"),
     bilevel.amended_product_exact),
    pytest.param(S.DARTS_PRIMITIVES, bilevel.amended_product_exact,
                 marks=pytest.mark.slow),
    # Tracing a forward accumulator through the supernet takes minutes.
    pytest.param(("max_pool_3x3", "skip_connect", "sep_conv_3x3"),
                 _forward_products, marks=pytest.mark.slow),
    pytest.param(S.DARTS_PRIMITIVES, _forward_products,
                 marks=pytest.mark.slow),
])
def test_supernet_products_match_float64_central_differences(operators,
                                                              product):
    # The network is piecewise smooth (ReLU, max pool): a difference step
    # that crosses a kink is meaningless, so the step is tiny (1e-6 on a
    # unit direction, float64) and directions are normalised.
    search, loss, w, a = _problem(operators)
    rng = np.random.default_rng(1)
    v = [tf.constant(rng.normal(size=x.shape), tf.float64) for x in w]
    v = bilevel.scale(1 / bilevel.global_norm(v), v)

    @tf.function
    def products():
        return product(loss, w, a, v)

    @tf.function
    def grads(ws):
        return bilevel.loss_and_grads(loss, ws, a)[1:]

    hv, dhv = products()
    eps = 1e-6
    plus = grads(bilevel.axpy(eps, v, w))
    minus = grads(bilevel.axpy(-eps, v, w))
    hv_fd = [(p - m) / (2 * eps)
             for p, m in zip(plus[0], minus[0], strict=True)]
    rel = float(bilevel.global_norm(
        [x - y for x, y in zip(hv, hv_fd, strict=True)])
                / bilevel.global_norm(hv_fd))
    assert rel < 1e-6
    hv_norm = bilevel.global_norm(hv)
    u = bilevel.scale(1 / hv_norm, hv)
    plus = grads(bilevel.axpy(eps, u, w))
    minus = grads(bilevel.axpy(-eps, u, w))
    dhv_fd = [hv_norm * (p - m) / (2 * eps)
              for p, m in zip(plus[1], minus[1], strict=True)]
    rel = float(bilevel.global_norm(
        [x - y for x, y in zip(dhv, dhv_fd, strict=True)])
                / bilevel.global_norm(dhv_fd))
    assert rel < 1e-6


@pytest.mark.parametrize("stride", [1, 2])
def test_mixed_edge_computes_one_relu_of_its_input(stride):
    # sep_conv (x2 blocks), dil_conv and factorized reduction all start
    # with relu(x): one shared ReLU, and the same values and gradients as
    # each operator computing its own.
    from tf_amended_darts.vision import mixed_edge as cells
    from tf_amended_darts.vision.mixed_edge import MixedEdge

    keras.utils.set_random_seed(0)
    edge = MixedEdge(S.DARTS_PRIMITIVES, 4, stride)
    x = tf.constant(np.random.default_rng(0).normal(size=(2, 8, 8, 4)),
                    tf.float32)
    edge.build(x.shape)
    weights = tf.constant(np.linspace(0.1, 0.8, 8), tf.float32)

    def value_and_grad(h):
        with tf.GradientTape() as tape:
            tape.watch(h)
            y = edge(h, weights, training=True)
            loss = tf.reduce_sum(tf.sin(y))
        return y, tape.gradient(loss, h)

    def relus_of_input():
        graph = tf.function(value_and_grad).get_concrete_function(x).graph
        return sum(
            op.type == "Relu" and op.inputs[0].op.type == "Placeholder"
            for op in graph.get_operations()
        )

    assert relus_of_input() == 1
    shared = tf.function(value_and_grad)(x)
    original = cells.shared_relu
    try:  # a context that shares nothing: every operator its own ReLU
        cells.shared_relu = contextlib.nullcontext
        assert relus_of_input() == (5 if stride == 2 else 4)
        unshared = tf.function(value_and_grad)(x)
    finally:
        cells.shared_relu = original
    for a, b in zip(shared, unshared, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
