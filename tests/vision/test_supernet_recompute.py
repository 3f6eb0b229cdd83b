"""The supernet's ``recompute_cells``: the same values and products as
without it (float64); tests/nn/test_recompute.py checks the recomputation
itself against explicit Hessians."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from tf_amended_darts.core import bilevel, engine
from tf_amended_darts.vision.supernet import SearchNetwork

DT = tf.float64


def _flat(xs):
    return tf.concat([tf.reshape(t, [-1]) for t in xs], 0)


def _supernet(recompute_cells, operators):
    keras.utils.set_random_seed(0)
    keras.config.set_dtype_policy("float64")
    try:
        net = SearchNetwork(
            10,
            layers=3,
            init_channels=4,
            operators=operators,
            arch_init_scale=0.5,
            dtype="float64",
            recompute_cells=recompute_cells,
        )
        net.build((None, 8, 8, 3))
    finally:
        keras.config.set_dtype_policy("float32")
    search = engine.BilevelSearch(net, arch_grad="amended")
    search.compile()
    rng = np.random.default_rng(0)
    x = tf.constant(rng.normal(size=(4, 8, 8, 3)), DT)
    y = tf.constant(rng.integers(0, 10, 4), tf.int32)
    w = [tf.convert_to_tensor(t.value) for t in net.weight_variables]
    a = [tf.convert_to_tensor(t.value) for t in net.arch_variables]
    return search.functional_loss(x, y), w, a


@pytest.mark.parametrize(
    "operators",
    [
        # One parametric candidate besides skip: convs and non-affine batch
        # norms in every edge, the preprocessing and the reduction cell.
        ("skip_connect", "avg_pool_3x3"),
        pytest.param(("skip_connect", "sep_conv_3x3"), marks=pytest.mark.slow),
        pytest.param(
            (
                "max_pool_3x3",
                "skip_connect",
                "sep_conv_3x3",
                "dil_conv_3x3",
                "avg_pool_3x3",
            ),
            marks=pytest.mark.slow,
        ),
    ],
)
def test_supernet_recompute_cells_gives_the_same_amended_products(operators):
    results = []
    for flag in (False, True):
        loss, w, a = _supernet(flag, operators)
        v = [
            tf.constant(np.random.default_rng(1).normal(size=t.shape), DT)
            for t in w
        ]
        results.append(
            tf.function(
                lambda loss=loss, w=w, a=a, v=v: (
                    bilevel.loss_and_grads(loss, w, a),
                    bilevel.amended_product_exact(loss, w, a, v),
                )
            )()
        )
    (plain, (hv0, dhv0)), (rec, (hv1, dhv1)) = results
    np.testing.assert_allclose(rec[0], plain[0], rtol=1e-14)
    for got, want in [
        (rec[1], plain[1]),
        (rec[2], plain[2]),
        (hv1, hv0),
        (dhv1, dhv0),
    ]:
        np.testing.assert_allclose(
            _flat(got), _flat(want), rtol=1e-10, atol=1e-12
        )


def test_recompute_cells_config_and_drop_path_error():
    net = SearchNetwork(10, layers=3, init_channels=4, recompute_cells=True)
    assert net.get_config()["recompute_cells"] is True
    assert SearchNetwork.from_config(net.get_config()).recompute_cells
    with pytest.raises(ValueError, match="recompute_cells"):
        SearchNetwork(10, layers=3, recompute_cells=True, drop_path_prob=0.2)
    with pytest.raises(ValueError, match="recompute_cells"):
        SearchNetwork(10, layers=3, recompute_cells="yes")


def test_recompute_cells_leaves_the_weight_step_unchanged():
    # Outside `frozen_statistics()` (the weight step's pass, which updates
    # the moving statistics) the cells run as without recomputation.
    x = tf.constant(
        np.random.default_rng(0).normal(size=(4, 8, 8, 3)), tf.float32
    )
    means = []
    for flag in (False, True):
        keras.utils.set_random_seed(0)
        net = SearchNetwork(10, layers=3, init_channels=4, recompute_cells=flag)
        net.build((None, 8, 8, 3))
        net(x, training=True)
        means.append([t.numpy() for t in net.non_trainable_variables])
    for p, q in zip(*means, strict=True):
        np.testing.assert_array_equal(p, q)
    assert any(np.abs(p).max() > 0 for p in means[1])
