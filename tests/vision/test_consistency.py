"""Hyper-parameter consistency in search (paper 2.4, B.1).

The search network can train with the re-training network's regularisers:
the auxiliary head after cell ``2 * layers // 3`` and drop-path on every
candidate operator except identity, with masks that repeat across the bi-level
engine's functional passes of one step.
"""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from tf_amended_darts.core import engine
from tf_amended_darts.core.checkpoint import (
    CheckpointMismatchError,
    EpochCheckpointer,
)
from tf_amended_darts.nn.drop_path import DropPathSchedule
from tf_amended_darts.vision import auxiliary
from tf_amended_darts.vision import network as N
from tf_amended_darts.vision.cells import MixedEdge
from tf_amended_darts.vision.supernet import SearchNetwork

OPS = ("skip_connect", "sep_conv_3x3", "max_pool_3x3")
# The auxiliary head needs 8x8 at cell 2 * layers // 3, i.e. 32x32 inputs.
AUX_SIZE = 32
NUM_CLASSES = 10


def _net(auxiliary=False, drop_path_prob=0.0, size=AUX_SIZE, **kwargs):
    args = dict(operators=OPS, layers=3, init_channels=4)
    args.update(kwargs)
    net = SearchNetwork(
        NUM_CLASSES, auxiliary=auxiliary, drop_path_prob=drop_path_prob, **args
    )
    net.build((None, size, size, 3))
    return net


def _images(n=2, size=AUX_SIZE, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, size, size, 3)).astype("float32")


def _values(net):
    return (
        [v.value for v in net.trainable_variables],
        [v.value for v in net.non_trainable_variables],
    )


def _seed_state(net):
    return net.drop_path_seed.state


# -- auxiliary head ------------------------------------------------------------


def test_aux_logits_in_training_only():
    net = _net(auxiliary=True)
    x = _images()
    out = net(x, training=True)
    assert isinstance(out, tuple) and len(out) == 2
    assert tuple(out[0].shape) == (2, NUM_CLASSES)
    assert tuple(out[1].shape) == (2, NUM_CLASSES)
    logits = net(x, training=False)
    assert tuple(logits.shape) == (2, NUM_CLASSES)
    assert net.aux_index == 2


def _closed_form_aux_params(c_in, num_classes):
    # 1x1 conv (no bias), affine BN, 2x2 conv (no bias), affine BN, linear.
    c1, c2 = auxiliary.AUX_CHANNELS_1, auxiliary.AUX_CHANNELS_2
    return (
        c_in * c1
        + 2 * c1
        + c1 * c2 * 4
        + 2 * c2
        + c2 * num_classes
        + num_classes
    )


def test_aux_head_weights_are_search_weights():
    net = _net(auxiliary=True)
    plain = _net()
    head = net.auxiliary_head
    weight_ids = {id(v) for v in net.weight_variables}
    assert head.trainable_weights
    assert all(id(v) in weight_ids for v in head.trainable_weights)
    assert not {id(v) for v in net.arch_variables} & {
        id(v) for v in head.trainable_weights
    }
    count = sum(math.prod(v.shape) for v in head.trainable_weights)

    def size(variables):
        return sum(math.prod(v.shape) for v in variables)

    assert size(net.weight_variables) == size(plain.weight_variables) + count
    # The re-training network of the same width has the same head there.
    reference = N.NetworkCIFAR(
        "DARTS_V2", NUM_CLASSES, layers=3, init_channels=4, auxiliary=True
    )
    reference.build((None, AUX_SIZE, AUX_SIZE, 3))
    assert count == N.aux_params(reference)
    c_in = net.multiplier * 4 * 4  # two reductions double C twice
    assert count == _closed_form_aux_params(c_in, NUM_CLASSES)


def test_defaults_add_nothing():
    net = _net(size=16)
    assert not net.auxiliary and net.auxiliary_head is None
    assert not net.drop_path and net.drop_path_seed is None
    assert net.drop_path_prob == 0.0
    net.drop_path_prob = 0.0  # a schedule's epoch 0: accepted
    with pytest.raises(ValueError, match="without drop-path"):
        net.drop_path_prob = 0.2
    assert all("drop_path" not in v.path for v in net.variables)
    out = net(_images(size=16), training=True)
    assert not isinstance(out, tuple)


def test_config_round_trip():
    net = _net(auxiliary=True, drop_path_prob=0.3)
    net.drop_path_prob = 0.1  # the schedule moves the variable, not config
    config = net.get_config()
    assert config["auxiliary"] is True
    assert config["drop_path_prob"] == 0.3
    clone = SearchNetwork.from_config(config)
    assert clone.auxiliary and clone.drop_path
    assert clone.drop_path_prob == 0.3
    with pytest.raises(ValueError, match="drop_path_prob"):
        SearchNetwork(NUM_CLASSES, drop_path_prob=1.0)


# -- drop-path -----------------------------------------------------------------


def _edge_output(operators, weights, drop_prob, x, stride=1, seed=0):
    edge = MixedEdge(operators, x.shape[-1], stride)
    edge.build(x.shape)
    generator = keras.random.SeedGenerator(seed)
    w = tf.constant(weights, "float32")
    plain = edge(x, w, training=True).numpy()
    dropped = edge(
        x, w, training=True, drop_prob=drop_prob, seed=generator
    ).numpy()
    return plain, dropped


@pytest.mark.parametrize(
    "name,stride",
    [("max_pool_3x3", 1), ("sep_conv_3x3", 1), ("skip_connect", 2)],
)
def test_drop_path_zeroes_samples_of_non_identity_ops(name, stride):
    p = 0.3
    x = tf.constant(_images(n=2000, size=4)[..., :2] + 3.0)
    plain, dropped = _edge_output((name,), [1.0], p, x, stride=stride)
    flat = dropped.reshape(len(dropped), -1)
    zero = np.all(flat == 0.0, axis=1)
    assert abs(zero.mean() - p) < 0.04
    # Kept samples are rescaled by 1 / (1 - p).
    np.testing.assert_allclose(
        dropped[~zero], plain[~zero] / (1 - p), rtol=1e-5, atol=1e-5
    )


def test_drop_path_leaves_identity_untouched():
    x = tf.constant(_images(n=64, size=4))
    plain, dropped = _edge_output(("skip_connect",), [1.0], 0.5, x)
    np.testing.assert_array_equal(plain, x.numpy())
    np.testing.assert_array_equal(dropped, x.numpy())
    # Mixed with a pooling op: only the pooling term is dropped.
    ops = ("none", "skip_connect", "max_pool_3x3")
    w = [0.2, 0.5, 0.3]
    _, dropped = _edge_output(ops, w, 0.5, x)
    residual = (dropped - 0.5 * x.numpy()).reshape(64, -1)
    zero = np.all(np.abs(residual) < 1e-6, axis=1)
    assert 0 < zero.sum() < 64


def test_an_edges_masks_are_independent_per_candidate():
    # One draw per edge (`path_factors`), one column per candidate: per
    # sample, each pooling term is kept (x 1 / keep) or dropped on its own.
    p, n = 0.5, 4000
    x = tf.constant(_images(n=n, size=4)[..., :2] + 3.0)
    ops = ("max_pool_3x3", "avg_pool_3x3")
    w = [0.25, 0.75]
    terms = [_edge_output((op,), [1.0], 0.0, x)[0] for op in ops]
    _, dropped = _edge_output(ops, w, p, x)
    kept = {}
    for f0 in (0.0, 1.0 / (1 - p)):
        for f1 in (0.0, 1.0 / (1 - p)):
            guess = w[0] * f0 * terms[0] + w[1] * f1 * terms[1]
            close = np.all(np.abs(guess - dropped) < 1e-4, axis=(1, 2, 3))
            kept[(f0 > 0, f1 > 0)] = close
    assert np.all(sum(kept.values()) == 1)  # one combination per sample
    for both in kept.values():  # each of the four with probability 1/4
        assert abs(both.mean() - 0.25) < 0.03


# Graph nodes drop-path adds to one stride-1 DARTS edge's forward and
# gradient: 99 with one draw per edge (b61ae7c), 257 with one draw per
# candidate before it (a38d192); measured with the test below.
EDGE_DROP_PATH_NODES = 130


def test_drop_path_adds_few_graph_nodes_to_an_edge():
    # One draw per edge, not per candidate (benchmarks/s1_cpu.md section
    # 12): fails if the per-candidate draws come back.
    from tf_amended_darts.vision.search_space import DARTS_PRIMITIVES

    x = tf.zeros((4, 8, 8, 4))
    w = tf.ones((len(DARTS_PRIMITIVES),)) / len(DARTS_PRIMITIVES)

    def nodes(drop_prob):
        edge = MixedEdge(DARTS_PRIMITIVES, 4, 1)
        edge.build(x.shape)
        seed = keras.random.SeedGenerator(0) if drop_prob else None

        def step():
            with tf.GradientTape() as tape:
                tape.watch(w)
                y = edge(x, w, training=True, drop_prob=drop_prob, seed=seed)
                loss = tf.reduce_sum(y)
            return tape.gradient(loss, w)

        graph = tf.function(step).get_concrete_function().graph
        return len(graph.get_operations())

    extra = nodes(0.2) - nodes(None)
    assert 0 < extra <= EDGE_DROP_PATH_NODES, extra


def test_masks_repeat_across_stateless_calls_with_same_values():
    net = _net(auxiliary=True, drop_path_prob=0.5, size=AUX_SIZE)
    x = _images(n=8)
    trainable, non_trainable = _values(net)
    a, new_a = net.stateless_call(trainable, non_trainable, x, training=True)
    b, new_b = net.stateless_call(trainable, non_trainable, x, training=True)
    for u, v in zip(a, b, strict=True):
        np.testing.assert_array_equal(u.numpy(), v.numpy())
    # The returned seed state has advanced, identically in both passes ...
    index = next(
        i
        for i, v in enumerate(net.non_trainable_variables)
        if v is _seed_state(net)
    )
    np.testing.assert_array_equal(new_a[index], new_b[index])
    assert not np.array_equal(new_a[index], non_trainable[index])
    # ... and another state draws other masks.
    other = list(non_trainable)
    other[index] = new_a[index]
    c, _ = net.stateless_call(trainable, other, x, training=True)
    assert not np.allclose(a[0], c[0])
    # The variable itself is untouched by stateless calls.
    np.testing.assert_array_equal(
        _seed_state(net).numpy(), non_trainable[index]
    )


def test_engine_functional_passes_share_masks():
    net = _net(drop_path_prob=0.5, size=16)
    search = engine.BilevelSearch(net, arch_grad="first_order")
    search.compile()
    x = _images(n=8, size=16)
    y = np.arange(8) % NUM_CLASSES
    w = [v.value for v in search.weight_variables]
    a = [v.value for v in search.arch_variables]
    loss_fn = search.functional_loss(x, y)
    first, second = float(loss_fn(w, a)), float(loss_fn(w, a))
    assert first == second
    # A stateful training call advances the state: the next step's masks
    # (and loss) differ.
    state = _seed_state(net).numpy().copy()
    net(x, training=True)
    assert not np.array_equal(_seed_state(net).numpy(), state)
    assert float(search.functional_loss(x, y)(w, a)) != first


def test_inference_and_zero_probability_are_unaffected():
    dropped = _net(auxiliary=True, drop_path_prob=0.5)
    plain = _net(auxiliary=True)
    extra = {id(dropped._drop_path_prob), id(_seed_state(dropped))}
    values = [v for v in dropped.variables if id(v) not in extra]
    assert len(values) == len(plain.variables)
    for u, v in zip(values, plain.variables, strict=True):
        v.assign(u)
    x = _images(n=4)
    np.testing.assert_array_equal(
        dropped(x, training=False).numpy(), plain(x, training=False).numpy()
    )
    state = _seed_state(dropped).numpy().copy()
    dropped(x, training=False)
    np.testing.assert_array_equal(_seed_state(dropped).numpy(), state)
    # Probability 0 (a schedule's first epoch): training output unchanged.
    dropped.drop_path_prob = 0.0
    for u, v in zip(
        dropped(x, training=True), plain(x, training=True), strict=True
    ):
        np.testing.assert_allclose(u.numpy(), v.numpy(), rtol=1e-6, atol=1e-6)


def test_drop_path_schedule_ramps_the_variable():
    net = _net(drop_path_prob=0.2, size=16)
    schedule = DropPathSchedule(0.2, epochs=4)
    schedule.set_model(net)
    schedule.on_epoch_begin(2)
    assert net.drop_path_prob == pytest.approx(0.1)
    assert float(net._drop_path_prob.numpy()) == pytest.approx(0.1)


def test_checkpoint_restores_seed_state_and_probability(tmp_path):
    def search():
        net = _net(drop_path_prob=0.3, size=16, operators=OPS[::2])
        wrapper = engine.BilevelSearch(net, arch_grad="first_order")
        wrapper.compile()
        return net, wrapper

    net, wrapper = search()
    net(_images(size=16), training=True)  # advances the seed state
    net.drop_path_prob = 0.1
    checkpointer = EpochCheckpointer(wrapper, str(tmp_path))
    checkpointer.save(1)
    fresh, fresh_wrapper = search()
    assert not np.array_equal(_seed_state(fresh), _seed_state(net))
    assert EpochCheckpointer(fresh_wrapper, str(tmp_path)).restore() == 1
    np.testing.assert_array_equal(_seed_state(fresh), _seed_state(net))
    assert fresh.drop_path_prob == 0.1
    # A network without drop-path cannot load it (and vice versa).
    plain = _net(size=16, operators=OPS[::2])
    plain_wrapper = engine.BilevelSearch(plain, arch_grad="first_order")
    plain_wrapper.compile()
    with pytest.raises(CheckpointMismatchError, match="does not fit"):
        EpochCheckpointer(plain_wrapper, str(tmp_path)).restore()


# -- bi-level search -----------------------------------------------------------


def _pairs(n_steps, batch=2, size=AUX_SIZE):
    rng = np.random.default_rng(0)
    shape = (n_steps * batch, size, size, 3)
    xt = rng.normal(size=shape).astype("float32")
    xv = rng.normal(size=shape).astype("float32")
    yt = rng.integers(0, NUM_CLASSES, n_steps * batch).astype("int32")
    yv = rng.integers(0, NUM_CLASSES, n_steps * batch).astype("int32")
    return tf.data.Dataset.from_tensor_slices(((xt, yt), (xv, yv))).batch(batch)


@pytest.mark.parametrize("arch_grad", ["first_order", "amended"])
def test_search_fit_with_aux_and_drop_path(arch_grad):
    # Two cells (reductions at 0 and 1, the head after cell 1) of one
    # intermediate node keep the double-backward graph small.
    net = _net(
        auxiliary=True, drop_path_prob=0.2, layers=2, steps=1, multiplier=1
    )
    assert net.aux_index == 1
    search = engine.BilevelSearch(
        net, arch_grad=arch_grad, hvp="exact", aux_weight=0.4
    )
    search.compile()
    alphas = [v.numpy().copy() for v in net.arch_variables]
    history = search.fit(_pairs(2), epochs=1, verbose=0)
    for key in ("loss", "val_loss", "g1_norm", "arch_grad_norm"):
        assert np.all(np.isfinite(history.history[key])), key
    if arch_grad == "amended":
        assert np.isfinite(history.history["g2_norm"]).all()
    assert any(
        not np.array_equal(a, v.numpy())
        for a, v in zip(alphas, net.arch_variables, strict=True)
    )


def test_weight_step_uses_the_architecture_step_masks():
    # The seed state is only advanced by the stateful weight-step call, so
    # it draws the masks the functional passes of the step drew.
    net = _net(drop_path_prob=0.5, size=16)
    search = engine.BilevelSearch(net, arch_grad="first_order")
    search.compile()
    x = _images(n=8, size=16)
    y = np.arange(8) % NUM_CLASSES
    w = [v.value for v in search.weight_variables]
    a = [v.value for v in search.arch_variables]
    functional = float(search.functional_loss(x, y)(w, a))
    stateful = float(search.compute_search_loss(y, net(x, training=True)))
    assert stateful == pytest.approx(functional, rel=1e-6)
    # ... and the next step draws new ones.
    assert float(search.functional_loss(x, y)(w, a)) != functional
    search.drop_path_prob = 0.25  # the engine forwards schedules' values
    assert net.drop_path_prob == 0.25
