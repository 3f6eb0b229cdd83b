"""R-DARTS' S4: the ``noise`` operator and the ``rdarts_s4`` space.

Oracles: the reference's definition (N(0, 1) samples shaped like the
strided input, whatever its values: automl/RobustDARTS src/operations.py
``NoiseOp``), sample moments, its saved generator state, and float64
central differences for the products the amended estimator takes through
a cell holding it.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

from tests.vision.test_partial_channels import _check_amended_products
from tf_amended_darts.vision import genotype as G
from tf_amended_darts.vision import ops as O
from tf_amended_darts.vision import search_space as S
from tf_amended_darts.vision.mixed_edge import MixedEdge
from tf_amended_darts.vision.supernet import SearchNetwork


def test_noise_ignores_the_input_values_and_keeps_the_strided_shape():
    op = O.make_op("noise", 4, 2)
    x = tf.random.normal((2, 5, 5, 4))
    state = op.seed_generator.state.numpy()
    a = op(x)
    assert tuple(a.shape) == (2, 3, 3, 4)
    assert op.compute_output_shape((2, 5, 5, 4)) == (2, 3, 3, 4)
    op.seed_generator.state.assign(state)
    b = op(3.0 * x + 5.0)  # other values, same generator state
    np.testing.assert_array_equal(a.numpy(), b.numpy())
    c = op(x)  # the generator moved on: fresh noise
    assert np.abs(a.numpy() - c.numpy()).max() > 0.1
    assert O.is_parametric("noise", 2) is False
    assert O.expected_param_count("noise", 4, 1) == 0


def test_noise_is_standard_normal():
    op = O.Noise(1, seed=3)
    sample = op(tf.zeros((16, 16, 16, 16))).numpy().ravel()  # 65536 draws
    # N(0, 1): the mean of n draws has sd 1/sqrt(n) = 0.004
    assert abs(sample.mean()) < 0.02
    assert abs(sample.std() - 1.0) < 0.02
    assert O.Noise(1, mean=2.0, std=0.5, seed=3)(
        tf.zeros((16, 16, 16, 16))).numpy().std() == pytest.approx(
        0.5, abs=0.01)


def test_noise_has_zero_derivatives_with_respect_to_its_input():
    edge = MixedEdge(("noise", "sep_conv_3x3"), 4, 1)
    x = tf.random.normal((2, 6, 6, 4))
    edge.build(x.shape)
    w = tf.constant([0.3, 0.7])
    state = edge.candidates[0].seed_generator.state.numpy()
    with tf.GradientTape() as tape:
        tape.watch([x, w])
        out = edge(x, w, training=True)
        loss = tf.reduce_sum(tf.sin(out))
    gx, gw = tape.gradient(loss, [x, w])
    # only the convolution carries the input's gradient ...
    edge.candidates[0].seed_generator.state.assign(state)
    with tf.GradientTape() as tape:
        tape.watch(x)
        noise = edge.candidates[0](x)
        conv = edge.candidates[1](x, training=True)
        loss2 = tf.reduce_sum(tf.sin(0.3 * noise + 0.7 * conv))
    np.testing.assert_allclose(gx, tape.gradient(loss2, x), rtol=1e-5,
                               atol=1e-6)
    # ... and the noise's weight gets sum(cos(out) * noise)
    np.testing.assert_allclose(
        gw[0], tf.reduce_sum(tf.cos(out) * noise), rtol=1e-4)
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = O.Noise(2)(x)
    assert tape.gradient(y, x) is None


def test_noise_config_and_saved_state(tmp_path):
    op = O.Noise(2, mean=0.5, std=2.0, seed=7)
    clone = O.Noise.from_config(op.get_config())
    assert (clone.stride, clone.mean, clone.std, clone.seed) == (
        2, 0.5, 2.0, 7)
    x = tf.zeros((1, 4, 4, 2))
    np.testing.assert_array_equal(op(x), clone(x))  # same seed, same draws
    model = keras.Sequential([keras.Input((4, 4, 2)), O.Noise(1)])
    model(x)
    path = str(tmp_path / "noise.weights.h5")
    model.save_weights(path)
    expected = model(x).numpy()  # the draw after the save
    model(x)
    model.load_weights(path)  # a resumed run draws the same noise
    np.testing.assert_array_equal(model(x), expected)


@pytest.mark.parametrize("kwargs,message", [
    ({"stride": 0}, "stride"),
    ({"std": -1.0}, "std"),
    ({"mean": "0"}, "mean"),
    ({"seed": -1}, "seed"),
])
def test_noise_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        O.Noise(**kwargs)


def test_rdarts_s4_matches_the_reference_list():
    # automl/RobustDARTS src/spaces.py: s4 = noise, sep_conv_3x3 on all 14
    space = S.get_space("rdarts_s4")
    assert space.operators == ("noise", "sep_conv_3x3")
    assert (space.layers, space.init_channels) == (8, 16)
    assert space.edge_operators is None


def test_supernet_on_rdarts_s4_can_keep_noise(tmp_path):
    space = S.get_space("rdarts_s4")
    net = SearchNetwork(10, operators=space.operators, layers=3,
                        init_channels=4)
    net.build((None, 8, 8, 3))
    x = tf.random.normal((2, 8, 8, 3))
    assert tuple(net(x, training=True).shape) == (2, 10)
    # unlike `none`, the derivation keeps noise where it is strongest
    # (R-DARTS model_search.py genotype._parse excludes `none` only)
    alpha = np.zeros((14, 2))
    alpha[:, 0] = 2.0
    net.alphas["normal"].assign(alpha)
    genotype = net.genotype()
    assert {op for op, _ in genotype.normal} == {"noise"}
    assert {op for op, _ in genotype.reduce} <= {"noise", "sep_conv_3x3"}
    path = str(tmp_path / "genotype.json")
    G.save(genotype, path)
    assert G.load(path) == genotype
    # the noise generators' states go with the weights: a resumed search
    # draws what an uninterrupted one draws
    weights = str(tmp_path / "net.weights.h5")
    net.save_weights(weights)
    expected = net(x, training=True).numpy()
    net(x, training=True)
    net.load_weights(weights)
    np.testing.assert_array_equal(net(x, training=True), expected)


def _noise_cell_problem():
    """A reduction cell mixing noise and sep_conv_3x3, as ``L(w, a)``.

    Evaluated functionally (``stateless_call``) in float64, as the
    estimator evaluates the supernet: the generator states are values
    passed in, so every evaluation draws the same noise.
    """
    from tf_amended_darts.nn.contexts import frozen_statistics
    from tf_amended_darts.vision.cells import SearchCell

    keras.utils.set_random_seed(0)
    f64 = "float64"
    keras.config.set_dtype_policy(f64)
    try:
        cell = SearchCell(S.edge_list("pruned", 2), ("noise", "sep_conv_3x3"),
                          4, True, False, multiplier=2, dtype=f64)
        rng = np.random.default_rng(0)
        x0, x1 = (tf.constant(rng.normal(size=(4, 6, 6, 4)), f64)
                  for _ in range(2))
        cell.build((x0.shape, x1.shape))
    finally:
        keras.config.set_dtype_policy("float32")
    non_trainable = [v.value for v in cell.non_trainable_variables]
    assert len(non_trainable) >= 5  # the five edges' noise generators

    def loss(w, a):
        weights = tf.nn.softmax(a[0], axis=-1)
        with frozen_statistics():
            out, _ = cell.stateless_call(list(w), non_trainable, (x0, x1),
                                         weights, training=True)
        return tf.reduce_sum(tf.sin(0.7 * out + 0.3))

    w = [tf.convert_to_tensor(v.value) for v in cell.trainable_variables]
    a = [tf.constant(rng.normal(size=(5, 2)), f64)]
    return loss, w, a


def test_amended_products_through_a_noise_cell():
    _check_amended_products(*_noise_cell_problem())


def test_a_genotype_naming_noise_builds_a_retraining_network(tmp_path):
    from tf_amended_darts.vision.network import NetworkCIFAR

    genotype = G.Genotype(
        normal=[("noise", 0), ("sep_conv_3x3", 1)] * 4,
        normal_concat=[2, 3, 4, 5],
        reduce=[("sep_conv_3x3", 0), ("noise", 1)] * 4,
        reduce_concat=[2, 3, 4, 5],
    )
    path = str(tmp_path / "genotype.json")
    G.save(genotype, path)
    net = NetworkCIFAR(G.load(path), 10, layers=3, init_channels=4,
                       auxiliary=False)
    x = tf.random.normal((2, 8, 8, 3))
    assert tuple(net(x, training=True).shape) == (2, 10)
    assert any(isinstance(layer, O.Noise) for layer in net._flatten_layers())
    weights = str(tmp_path / "net.weights.h5")
    net.save_weights(weights)
    expected = net(x, training=False).numpy()  # noise in inference too
    net.load_weights(weights)
    np.testing.assert_array_equal(net(x, training=False), expected)
