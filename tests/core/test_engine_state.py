"""Engine hooks for recurrent networks: the carried validation state and
the clipped virtual step of DARTS' recurrent `second_order`."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from tf_amended_darts.core import bilevel, engine
from tf_amended_darts.core.optimizers import TorchAdam, TorchSGD

DT = tf.float64


class StatefulNet(keras.Model):
    """y = (x + s) w * sigmoid(a); the stream's state s <- mean(x) + s.

    ``x[:, 0]`` is the stream id (0 train, 1 validation); a batch-norm-like
    statistic ``stat`` is also written by every call (it must be discarded
    by the architecture step).
    """

    def __init__(self, carry=True, **kwargs):
        super().__init__(**kwargs)
        self.carry = carry

    def build(self, input_shape=None):
        self.w = self.add_weight(shape=(2, 1), initializer="ones", name="w")
        self.a = self.add_weight(shape=(1,), initializer="zeros", name="a")
        self.train_state = self.add_weight(
            shape=(2,), initializer="zeros", trainable=False, name="ts")
        self.valid_state = self.add_weight(
            shape=(2,), initializer="zeros", trainable=False, name="vs")
        self.stat = self.add_weight(
            shape=(), initializer="zeros", trainable=False, name="stat")
        self.built = True

    @property
    def weight_variables(self):
        return [self.w]

    @property
    def arch_variables(self):
        return [self.a]

    @property
    def validation_state_variables(self):
        return [self.valid_state] if self.carry else []

    def call(self, x, training=False):
        stream, x = x[0, 0], x[:, 1:]
        on_train = tf.equal(stream, 0.0)
        state = tf.where(on_train, self.train_state, self.valid_state)
        y = tf.matmul(x + state, self.w) * tf.sigmoid(self.a)
        new = state + tf.reduce_mean(x, 0)
        if training:
            self.train_state.assign(tf.where(on_train, new, self.train_state))
            self.valid_state.assign(tf.where(on_train, self.valid_state, new))
            self.stat.assign_add(1.0)
        return y


def _data(stream, seed, n=4):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 2)).astype("float32")
    x = np.concatenate([np.full((n, 1), stream, "float32"), x], 1)
    return x, rng.normal(size=(n, 1)).astype("float32")


def _search(arch_grad, carry=True):
    net = StatefulNet(carry=carry)
    net.build()
    search = engine.BilevelSearch(
        net, arch_grad=arch_grad, loss=engine.mean_squared_error,
        classification=False)
    search.compile(weight_optimizer=TorchSGD(0.1, 0.0, 0.0),
                   arch_optimizer=TorchAdam(0.01))
    return search, net


@pytest.mark.parametrize("arch_grad", ["first_order", "amended",
                                       "second_order"])
def test_validation_pass_advances_the_validation_state_once(arch_grad):
    search, net = _search(arch_grad)
    (xt, yt), (xv, yv) = _data(0, 1), _data(1, 2)
    ds = tf.data.Dataset.from_tensors(((xt, yt), (xv, yv))).repeat(2)
    search.fit(ds, epochs=1, verbose=0)
    # Two steps: each stream advanced by the mean of its batch, twice.
    np.testing.assert_allclose(net.valid_state.numpy(),
                               2 * xv[:, 1:].mean(0), rtol=1e-6)
    np.testing.assert_allclose(net.train_state.numpy(),
                               2 * xt[:, 1:].mean(0), rtol=1e-6)
    # Only the weight step's real call writes other non-trainable values.
    assert float(net.stat.numpy()) == 2.0


def test_without_the_attribute_the_validation_state_is_discarded():
    search, net = _search("amended", carry=False)
    (xt, yt), (xv, yv) = _data(0, 1), _data(1, 2)
    ds = tf.data.Dataset.from_tensors(((xt, yt), (xv, yv)))
    search.fit(ds, epochs=1, verbose=0)
    np.testing.assert_array_equal(net.valid_state.numpy(), [0.0, 0.0])


def test_a_carried_variable_must_belong_to_the_network():
    search, net = _search("first_order")
    stranger = keras.Variable(np.zeros(2, "float32"), trainable=False)
    type(net).validation_state_variables = property(lambda self: [stranger])
    try:
        (xt, yt), (xv, yv) = _data(0, 1), _data(1, 2)
        ds = tf.data.Dataset.from_tensors(((xt, yt), (xv, yv)))
        with pytest.raises(ValueError, match="validation_state_variables"):
            search.fit(ds, epochs=1, verbose=0)
    finally:
        type(net).validation_state_variables = (
            StatefulNet.validation_state_variables)


# --- the clipped virtual step ---------------------------------------------


def _problem(seed=3):
    rng = np.random.default_rng(seed)
    xt, xv = (tf.constant(rng.normal(size=(6, 3)), DT) for _ in range(2))
    yt, yv = (tf.constant(rng.normal(size=(6, 2)), DT) for _ in range(2))
    w = [tf.constant(rng.normal(size=(3, 4)), DT),
         tf.constant(rng.normal(size=(4, 2)), DT)]
    a = [tf.constant(rng.normal(size=(3,)), DT)]

    def loss(x, y):
        def f(w, a):
            p = tf.nn.softmax(a[0])
            h = tf.matmul(x, w[0])
            h = p[0] * tf.tanh(h) + p[1] * tf.nn.softplus(h) + p[2] * h
            return tf.reduce_mean(tf.square(tf.matmul(h, w[1]) - y))
        return f

    return loss(xt, yt), loss(xv, yv), w, a


def _unrolled(train_loss, val_loss, w, a, step, clip):
    """d/da L_val(w'(a), a), w' from the clipped gradient, c constant."""
    with tf.GradientTape() as outer:
        outer.watch(a)
        with tf.GradientTape() as inner:
            inner.watch(w)
            loss = train_loss(w, a)
        gw = inner.gradient(loss, w)
        norm = tf.stop_gradient(bilevel.global_norm(gw))
        c = tf.minimum(tf.constant(1.0, DT), clip / (norm + 1e-6))
        w_virtual = [x - step.learning_rate * (c * g + step.weight_decay * x)
                     for x, g in zip(w, gw, strict=True)]
        loss_v = val_loss(w_virtual, a)
    return outer.gradient(loss_v, a)


@pytest.mark.parametrize("hvp,rtol", [("exact", 1e-10),
                                      ("finite_difference", 1e-4)])
@pytest.mark.parametrize("clip", [0.05, 1e6])
def test_clipped_second_order_equals_autodiff_through_unroll(hvp, rtol, clip):
    train_loss, val_loss, w, a = _problem()
    step = bilevel.VirtualStep(tf.constant(0.3, DT), 0.0, None, 1e-3,
                               grad_clip_norm=clip)
    res = tf.function(lambda: bilevel.estimate(
        "second_order", train_loss, val_loss, w, a, hvp=hvp,
        virtual_step=step))()
    oracle = tf.function(lambda: _unrolled(
        train_loss, val_loss, w, a, step, tf.constant(clip, DT)))()
    got, want = res.arch_grads[0], oracle[0]
    assert float(tf.norm(got - want) / tf.norm(want)) < rtol
    # The clip is active at 0.05 (the gradient's norm is larger).
    with tf.GradientTape() as tape:
        tape.watch(w)
        norm = bilevel.global_norm(tape.gradient(train_loss(w, a), w))
    assert (float(norm) > clip) == (clip < 1)


def test_engine_passes_the_clip_to_the_virtual_step():
    search, _ = _search("second_order")
    assert search.virtual_step().grad_clip_norm is None
    net = StatefulNet()
    net.build()
    clipped = engine.BilevelSearch(net, arch_grad="second_order",
                                   virtual_step_clip_norm=0.25)
    clipped.compile()
    assert clipped.virtual_step().grad_clip_norm == 0.25
    assert clipped.get_config()["virtual_step_clip_norm"] == 0.25
    with pytest.raises(ValueError, match="virtual_step_clip_norm"):
        engine.BilevelSearch(net, virtual_step_clip_norm=-1.0)
