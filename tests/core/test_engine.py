"""The bi-level engine: optimiser semantics by hand, eta = 0, errors, BN."""

import gc
import weakref

import keras
import numpy as np
import pytest
import tensorflow as tf

from tests.helpers import downstream, waits_for
from tf_amended_darts.core import engine
from tf_amended_darts.core.optimizers import (
    EpochCosineDecay,
    TorchAdam,
    TorchSGD,
)


class TinyNet(keras.Model):
    """logits = (x @ K1) * softmax(alpha)[0] + (x @ K2) * softmax(alpha)[1]."""

    def __init__(self, use_bn=False, with_arch=True, **kwargs):
        super().__init__(**kwargs)
        self.use_bn = use_bn
        self.with_arch = with_arch
        self.bn = keras.layers.BatchNormalization(momentum=0.9)

    def build(self, input_shape):
        rng = np.random.default_rng(0)
        d = input_shape[-1]
        self.k1 = self.add_weight(
            shape=(d, 3), name="k1",
            initializer=keras.initializers.Constant(rng.normal(size=(d, 3))))
        self.k2 = self.add_weight(
            shape=(d, 3), name="k2",
            initializer=keras.initializers.Constant(rng.normal(size=(d, 3))))
        if self.with_arch:
            self.alpha = self.add_weight(
                shape=(2,), name="alpha",
                initializer=keras.initializers.Constant([0.1, -0.2]))
        if self.use_bn:
            self.bn.build((None, 3))
        self.built = True

    @property
    def weight_variables(self):
        out = [self.k1, self.k2]
        if self.use_bn:
            out += self.bn.trainable_variables
        return out

    @property
    def arch_variables(self):
        return [self.alpha] if self.with_arch else []

    def call(self, x, training=False):
        p = keras.ops.softmax(self.alpha) if self.with_arch else [0.5, 0.5]
        out = p[0] * (x @ self.k1) + p[1] * keras.ops.tanh(x @ self.k2)
        if self.use_bn:
            out = self.bn(out, training=training)
        return out


def _pairs(n_steps, scale=1.0, seed=0):
    rng = np.random.default_rng(seed)
    xt = rng.normal(size=(n_steps, 8, 4)).astype("float32") * scale
    xv = rng.normal(size=(n_steps, 8, 4)).astype("float32") * scale
    yt = rng.integers(0, 3, size=(n_steps, 8)).astype("int32")
    yv = rng.integers(0, 3, size=(n_steps, 8)).astype("int32")
    return tf.data.Dataset.from_tensor_slices(((xt, yt), (xv, yv)))


def _search(arch_grad="first_order", eta=0.1, hvp="exact", use_bn=False,
            **opt):
    net = TinyNet(use_bn=use_bn)
    net.build((None, 4))
    search = engine.BilevelSearch(net, arch_grad=arch_grad, eta=eta,
                                  hvp=hvp)
    search.compile(**opt)
    return net, search


def _loss(net, x, y):
    return keras.losses.sparse_categorical_crossentropy(
        y, net(x, training=True), from_logits=True).numpy().mean()


def test_two_steps_equal_hand_computed_sgd_and_adam():
    lr_w, mu, wd_w, clip = 0.1, 0.9, 3e-4, 5.0
    lr_a, b1, b2, eps, wd_a = 0.01, 0.5, 0.999, 1e-8, 1e-3
    net, search = _search(
        weight_optimizer=TorchSGD(lr_w, mu, wd_w, global_clipnorm=clip),
        arch_optimizer=TorchAdam(lr_a, b1, b2, eps, wd_a))
    data = list(_pairs(2, scale=30.0).as_numpy_iterator())  # clipping active
    # Hand computation: gradients from an eager tape, updates in numpy.
    w = [v.numpy().astype(np.float64) for v in net.weight_variables]
    a = net.alpha.numpy().astype(np.float64)
    buf = [np.zeros_like(x) for x in w]
    m, s = np.zeros_like(a), np.zeros_like(a)
    clipped = False
    for t, ((xt, yt), (xv, yv)) in enumerate(data, start=1):
        for var, val in zip(net.weight_variables, w, strict=True):
            var.assign(val)
        net.alpha.assign(a)
        with tf.GradientTape() as tape:
            lv = keras.losses.sparse_categorical_crossentropy(
                yv, net(xv, training=True), from_logits=True)
            lv = tf.reduce_mean(lv)
        ga = tape.gradient(lv, net.alpha).numpy() + wd_a * a
        m = b1 * m + (1 - b1) * ga
        s = b2 * s + (1 - b2) * ga ** 2
        a = a - lr_a / (1 - b1 ** t) * m / (
            np.sqrt(s) / np.sqrt(1 - b2 ** t) + eps)
        net.alpha.assign(a)
        with tf.GradientTape() as tape:
            lt = tf.reduce_mean(keras.losses.sparse_categorical_crossentropy(
                yt, net(xt, training=True), from_logits=True))
        gw = [g.numpy() for g in tape.gradient(lt, net.weight_variables)]
        norm = np.sqrt(sum((g ** 2).sum() for g in gw))
        if norm > clip:
            clipped = True
            gw = [g * clip / norm for g in gw]
        for i in range(len(w)):
            buf[i] = mu * buf[i] + gw[i] + wd_w * w[i]
            w[i] = w[i] - lr_w * buf[i]
    assert clipped
    # The engine, from the same start.
    net2, search2 = _search(
        weight_optimizer=TorchSGD(lr_w, mu, wd_w, global_clipnorm=clip),
        arch_optimizer=TorchAdam(lr_a, b1, b2, eps, wd_a))
    search2.fit(_pairs(2, scale=30.0), epochs=1, verbose=0)
    np.testing.assert_allclose(net2.alpha.numpy(), a, rtol=2e-5, atol=1e-7)
    for var, val in zip(net2.weight_variables, w, strict=True):
        np.testing.assert_allclose(var.numpy(), val, rtol=2e-5, atol=1e-6)
    sgd = search2.weight_optimizer
    for var, b in zip(net2.weight_variables, buf, strict=True):
        np.testing.assert_allclose(sgd.momentum_buffer(var).numpy(), b,
                                   rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("hvp", ["exact", "finite_difference", "forward"])
def test_amended_with_zero_eta_reproduces_first_order(hvp):
    net1, s1 = _search("first_order")
    net2, s2 = _search("amended", eta=0.0, hvp=hvp)
    s1.fit(_pairs(3), epochs=1, verbose=0)
    s2.fit(_pairs(3), epochs=1, verbose=0)
    for v1, v2 in zip(
        net1.trainable_variables, net2.trainable_variables, strict=True
    ):
        np.testing.assert_array_equal(v1.numpy(), v2.numpy())


@pytest.mark.parametrize("arch_grad,hvp", [
    ("first_order", "exact"), ("second_order", "exact"),
    ("amended", "exact"), ("second_order", "forward"), ("amended", "forward"),
])
def test_arch_step_leaves_batch_norm_statistics_alone(arch_grad, hvp):
    net, search = _search(arch_grad, use_bn=True, hvp=hvp)
    before = [v.numpy().copy() for v in net.non_trainable_variables]
    batch = next(iter(_pairs(1)))
    tf.function(lambda b: search.arch_gradient(*b)[0].arch_grads)(batch)
    for x, v in zip(before, net.non_trainable_variables, strict=True):
        np.testing.assert_array_equal(x, v.numpy())
    # A full step moves them once, as one training-mode pass does.
    search.fit(_pairs(1), epochs=1, verbose=0)
    moved = [v.numpy() for v in net.non_trainable_variables]
    assert not np.allclose(moved[0], before[0])


@pytest.mark.parametrize("arch_grad", ["first_order", "amended"])
def test_weight_step_waits_for_the_architecture_step(arch_grad):
    # Its first layers do not read the architecture, so without a control
    # edge the executor would start them beside the estimator's passes and
    # hold their activations through them (benchmarks/s1_cpu.md section 7).
    _, search = _search(arch_grad)
    batch = next(iter(_pairs(1)))
    graph = tf.function(search.train_step).get_concrete_function(
        batch).graph
    (gate,) = [op for op in graph.get_operations()
               if op.name.endswith("weight_step_input")]
    x_v = graph.inputs[2]  # ((x_t, y_t), (x_v, y_v)) flattened
    assert x_v.shape == batch[1][0].shape
    assert len(gate.control_inputs) == 1  # a NoOp gathers the results
    deps = waits_for(gate)
    assert deps, "the weight step does not wait for the architecture step"
    after_validation = downstream(x_v.op)
    assert deps <= after_validation, sorted(deps - after_validation)[:3]


class GraphRecordingNet(TinyNet):
    """Records (weakly) every graph its call is traced into."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.graphs = []

    def call(self, x, training=False):
        if not tf.executing_eagerly():
            graph = tf.compat.v1.get_default_graph()
            self.graphs.append(weakref.ref(graph))
        return super().call(x, training=training)


@pytest.mark.parametrize("arch_grad", ["first_order", "amended"])
def test_fit_through_the_lean_step_matches_keras_own_function(arch_grad):
    # lean_graph (the default) frees the traced graph (core/lean_function);
    # Keras' tf.function keeps it. Same FunctionDef: the same numbers.
    runs, graphs_alive = [], []
    for lean in (True, False):
        net = GraphRecordingNet(use_bn=True)
        net.build((None, 4))
        search = engine.BilevelSearch(net, arch_grad=arch_grad,
                                      lean_graph=lean)
        lines = []
        search.announce_traces = lines.append
        search.compile()
        history = search.fit(_pairs(3), epochs=2, verbose=0)
        # The lean step announces its one trace; Keras' function does not.
        assert len(lines) == (2 if lean else 0), lines
        runs.append((net, history.history, search))
        gc.collect()
        assert net.graphs  # traced
        graphs_alive.append(sum(g() is not None for g in net.graphs))
    (lean_net, lean_logs, lean_search), (net, logs, _) = runs
    assert lean_search.train_function.lean_step.trace_count == 1
    assert lean_search.train_function.lean_step.lean
    # Keras' function keeps its step's graph; the lean one freed it.
    assert graphs_alive[0] == 0 and graphs_alive[1] >= 1, graphs_alive
    assert lean_logs == logs
    for a, b in zip(lean_net.weights, net.weights, strict=True):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_metrics_and_gradient_norms_are_logged():
    _, search = _search("amended", eta=0.5)
    history = search.fit(_pairs(2), epochs=1, verbose=0)
    for key in ("loss", "val_loss", "accuracy", "val_accuracy", "g1_norm",
                "g2_norm", "arch_grad_norm", "lr"):
        assert key in history.history, key
    assert history.history["g2_norm"][0] > 0


def test_cosine_schedule_is_stepped_per_epoch():
    sched = EpochCosineDecay(0.025, 0.001, epochs=4, steps_per_epoch=10)
    lrs = [float(sched(s)) for s in (0, 9, 10, 20, 39)]
    expected = [0.001 + 0.024 * (1 + np.cos(np.pi * e / 4)) / 2
                for e in (0, 0, 1, 2, 3)]
    np.testing.assert_allclose(lrs, expected, rtol=1e-6)


def test_learning_rate_in_float64_is_exact():
    # Keras keeps a constant learning rate in a float32 variable: read in
    # float64 it is 0.02500000037, which put DARTS' virtual step 3e-9 off
    # in float64 searches (issue 13). In the compute dtype it is exact.
    opt = TorchSGD(0.025)
    assert float(tf.cast(opt.current_learning_rate(), tf.float64)) != 0.025
    lr = opt.current_learning_rate("float64")
    assert lr.dtype == tf.float64 and float(lr) == 0.025
    opt.learning_rate = 0.5  # a changed value is read from the variable
    assert float(opt.current_learning_rate("float64")) == 0.5
    sched = EpochCosineDecay(0.025, 0.001, epochs=4, steps_per_epoch=10)
    opt = TorchSGD(sched)
    opt.iterations.assign(25)  # epoch 2
    lr = opt.current_learning_rate("float64")
    expected = 0.001 + 0.024 * (1 + np.cos(np.pi * 2 / 4)) / 2
    assert lr.dtype == tf.float64
    assert abs(float(lr) - expected) <= 1e-17


def test_virtual_step_of_a_float64_search_reads_exact_xi():
    net = TinyNet(dtype="float64")
    net.build((None, 4))
    search = engine.BilevelSearch(net, arch_grad="second_order")
    search.compile(weight_optimizer=TorchSGD(0.025), arch_optimizer=TorchAdam())
    step = search.virtual_step()
    assert step.learning_rate.dtype == tf.float64
    assert float(step.learning_rate) == 0.025


def test_model_without_arch_variables_is_rejected():
    net = TinyNet(with_arch=False)
    net.build((None, 4))
    search = engine.BilevelSearch(net)
    with pytest.raises(ValueError, match="arch_variables"):
        search.compile()


def test_model_without_variable_lists_is_rejected():
    net = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    with pytest.raises(ValueError, match="weight_variables"):
        engine.BilevelSearch(net).compile()


class ExtraVariableNet(TinyNet):
    def build(self, input_shape):
        self.extra = self.add_weight(shape=(1,), name="extra")
        super().build(input_shape)


def test_unpartitioned_variables_are_rejected():
    net = ExtraVariableNet()
    net.build((None, 4))
    with pytest.raises(ValueError, match="partition"):
        engine.BilevelSearch(net).compile()


def test_dataset_without_pairs_is_rejected():
    _, search = _search()
    x = np.zeros((4, 4), "float32")
    y = np.zeros((4,), "int32")
    with pytest.raises(ValueError, match=r"\(\(x_train, y_train\), "
                                         r"\(x_val, y_val\)\)"):
        search.fit(tf.data.Dataset.from_tensor_slices((x, y)).batch(2),
                   verbose=0)


@pytest.mark.parametrize("kwargs,match", [
    (dict(arch_grad="zeroth"), "--arch_grad"),
    (dict(eta=-1.0), "--eta"),
    (dict(hvp="approx"), "--hvp"),
])
def test_engine_rejects_bad_settings(kwargs, match):
    net = TinyNet()
    net.build((None, 4))
    with pytest.raises(ValueError, match=match):
        engine.BilevelSearch(net, **kwargs)
