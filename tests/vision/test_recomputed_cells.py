"""Recomputed search cells (`SearchNetwork(recompute_cells=True)`): the
same architecture gradients as the plain network in float64, the weight
step untouched, and the options it refuses."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from tf_amended_darts.core import engine
from tf_amended_darts.jobs import precision
from tf_amended_darts.nn.recompute import Recomputed
from tf_amended_darts.vision.recomputed_cells import RecomputedCell, body_key
from tf_amended_darts.vision.search_space import DARTS_PRIMITIVES
from tf_amended_darts.vision.supernet import SearchNetwork

SIZE = 8
BATCH = 4
# A small float64 supernet: a pool, identity, a separable and a dilated
# convolution, two nodes per cell (five edges), so that the default suite
# traces its second-order steps in seconds; the slow case below runs every
# DARTS operator on four nodes.
SMALL_OPS = ("none", "max_pool_3x3", "skip_connect", "sep_conv_3x3",
             "dil_conv_3x3")
SHAPE = {"layers": 3, "init_channels": 4, "steps": 2, "multiplier": 2,
         "operators": SMALL_OPS}
FULL = {"steps": 4, "multiplier": 4,
        "operators": DARTS_PRIMITIVES}
# Every source of random draws in a search cell: drop-path, P-DARTS' skip
# dropout and R-DARTS' noise operator (recomputations must draw alike).
RANDOM = {"drop_path_prob": 0.3, "skip_dropout_prob": 0.2,
          "operators": SMALL_OPS + ("noise",)}
# Six cells (reductions at cells 2 and 4): cells 0 and 1 are normal cells
# of one resolution, whose recomputed nodes share one body; the other
# cells differ in channels or reduction. One node per cell (two edges)
# keeps the six cells' traces short.
SHARED = {"layers": 6, "steps": 1, "multiplier": 1}
SHARED_BODIES = 5


def _edges_per_cell(shape):
    steps = shape.get("steps", SHAPE["steps"])
    return sum(2 + j for j in range(steps))


def _seed_states(net, values=None):
    """Every seed generator's state in ``net``: its variables' values, or
    its entries of ``values`` (of ``net.non_trainable_variables``)."""
    weights = {id(v) for v in net.weights}
    if values is None:
        values = [v.numpy() for v in net.non_trainable_variables]
    return [
        np.asarray(x)
        for v, x in zip(net.non_trainable_variables, values, strict=True)
        if id(v) not in weights
    ]


def _search(recompute, arch_grad, hvp="exact", **shape):
    keras.utils.set_random_seed(0)
    net = precision.search_network(
        "float64", 10, SIZE, recompute_cells=recompute, **{**SHAPE, **shape}
    )
    search = engine.BilevelSearch(net, arch_grad=arch_grad, hvp=hvp)
    search.compile()
    return search


def _batches():
    rng = np.random.default_rng(1)
    return [
        (
            tf.constant(rng.normal(size=(BATCH, SIZE, SIZE, 3))),
            tf.constant(rng.integers(0, 10, BATCH), tf.int32),
        )
        for _ in range(2)
    ]


def _flat(xs):
    return np.concatenate([np.ravel(x) for x in xs])


def _arch_gradient(search, train, val):
    """The estimator's result, and the seed states after its validation
    pass (the passes run ``stateless_call`` and discard them after)."""

    def step():
        record = {}
        result = search.arch_gradient(train, val, record)[0]
        return result, record["non_trainable"]

    result, states = tf.function(step)()
    return result, _seed_states(search.network, states)


@pytest.mark.parametrize(
    "arch_grad,shape",
    [
        ("amended", {**RANDOM, **SHARED}),
        pytest.param("amended", RANDOM, marks=pytest.mark.slow),
        pytest.param("amended", {}, marks=pytest.mark.slow),
        pytest.param("second_order", {}, marks=pytest.mark.slow),
        pytest.param("first_order", {}, marks=pytest.mark.slow),
        # PC-DARTS: partial channels and edge-normalisation betas
        pytest.param(
            "amended", {"partial_channels": 2, "edge_normalization": True},
            marks=pytest.mark.slow,
        ),
        # searched edges, stage 1: pair logits
        pytest.param("amended", {"edges": "searched"}, marks=pytest.mark.slow),
        pytest.param("amended", FULL, marks=pytest.mark.slow),
    ],
)
def test_recomputed_cells_give_the_plain_gradients(arch_grad, shape):
    train, val = _batches()
    plain = _search(False, arch_grad, **shape)
    recomputed = _search(True, arch_grad, **shape)
    pairs = zip(plain.network.weights, recomputed.network.weights, strict=True)
    for a, b in pairs:
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    before = _seed_states(plain.network)
    expected, after = _arch_gradient(plain, train, val)
    result, states = _arch_gradient(recomputed, train, val)
    for name in ("arch_grads", "g1", "g2"):
        want, got = _flat(getattr(expected, name)), _flat(getattr(result, name))
        scale = max(np.linalg.norm(want), 1e-30)
        assert np.linalg.norm(got - want) <= 1e-12 * scale, name
    np.testing.assert_allclose(
        result.val_loss, expected.val_loss, rtol=1e-14
    )
    # The validation pass drew from every generator, and the recomputed
    # cells left them where the plain ones did (same draws, same order).
    if "noise" in shape.get("operators", ()):
        # drop-path, skip dropout, one noise layer per edge
        layers = shape.get("layers", SHAPE["layers"])
        assert len(before) == 2 + _edges_per_cell(shape) * layers
        assert all(np.any(a != b) for a, b in zip(after, before, strict=True))
    for a, b in zip(after, states, strict=True):
        np.testing.assert_array_equal(a, b)


def test_the_weight_step_and_statistics_are_those_of_the_plain_network():
    # One whole search step (weight step included, which updates the
    # batch-norm statistics and runs the cells as usual), with random draws
    # in both steps.
    train, val = _batches()
    searches = [_search(r, "amended", **RANDOM) for r in (False, True)]
    for search in searches:
        search.train_step((train, val))
    plain, recomputed = (s.network for s in searches)
    for a, b in zip(plain.weights, recomputed.weights, strict=True):
        np.testing.assert_allclose(
            b.numpy(), a.numpy(), rtol=1e-10, atol=1e-13, err_msg=a.path
        )
    states = [_seed_states(net) for net in (plain, recomputed)]
    for a, b in zip(*states, strict=True):
        np.testing.assert_array_equal(a, b)


def test_recomputed_cells_shrink_the_traced_step():
    # The cells' interiors of the estimator's passes live in three reused
    # functions per body, not in the step's graph; alike cells share a
    # body.
    train, val = _batches()

    def count(recompute):
        search = _search(recompute, "amended", **SHARED)
        fn = tf.function(lambda: search.arch_gradient(train, val)[0])
        graph = fn.get_concrete_function().graph.as_graph_def()
        noinline = [
            f for f in graph.library.function if f.attr["_noinline"].b
        ]
        return len(graph.node), len(noinline)

    (plain_nodes, plain_functions) = count(False)
    (nodes, functions) = count(True)
    assert plain_functions == 0
    assert functions == 3 * SHARED_BODIES
    assert nodes < plain_nodes / 2


def test_only_cells_with_alike_nodes_share_a_body():
    keras.utils.set_random_seed(0)
    net = precision.search_network(
        "float64", 10, SIZE, recompute_cells=True, **{**SHAPE, **SHARED}
    )
    keys = [body_key(cell) for cell in net.cells]
    # normal, normal, reduction, normal, reduction, normal: only the first
    # two have the same channels and kind (their preprocessing differs)
    assert keys[0] == keys[1]
    assert len(set(keys)) == SHARED_BODIES
    assert net.cells[0].preprocess1.weights[0].shape != (
        net.cells[1].preprocess1.weights[0].shape
    )
    first = RecomputedCell(net.cells[0])
    shared = RecomputedCell(net.cells[1], body=first)
    assert shared.block is first.block
    with pytest.raises(ValueError, match="cannot share the recomputed body"):
        RecomputedCell(net.cells[3], body=first)
    with pytest.raises(ValueError, match="cannot share the recomputed body"):
        RecomputedCell(net.cells[1], num_pairs=2, body=first)


def test_config_round_trip():
    net = SearchNetwork(10, recompute_cells=True, **SHAPE)
    assert net.get_config()["recompute_cells"] is True
    again = SearchNetwork.from_config(net.get_config())
    assert again.recompute_cells is True


def test_forward_products_are_refused():
    net = SearchNetwork(10, recompute_cells=True, **SHAPE)
    with pytest.raises(ValueError, match="--hvp=forward.*--recompute_cells"):
        engine.BilevelSearch(net, arch_grad="amended", hvp="forward")


def test_recompute_cells_must_be_a_bool():
    with pytest.raises(ValueError, match="recompute_cells"):
        SearchNetwork(10, layers=3, init_channels=4, recompute_cells="yes")


def test_a_block_that_captures_a_tensor_is_refused():
    outside = tf.constant(2.0, tf.float64)

    def block(xs):
        return xs[0] * outside

    x = tf.constant([1.0, 3.0], tf.float64)

    @tf.function
    def grad():
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = tf.reduce_sum(Recomputed(block, name="capturing")([x]))
        return tape.gradient(y, x)

    with pytest.raises(ValueError, match="capturing.*not among its inputs"):
        grad()
