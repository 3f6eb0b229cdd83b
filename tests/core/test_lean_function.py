"""Tests of `core.lean_function`: same results as `tf.function`, and the
traced graph freed once the step is registered with the runtime."""

import gc
import weakref

import keras
import numpy as np
import pytest
import tensorflow as tf

from tf_amended_darts.core import lean_function
from tf_amended_darts.core.lean_function import LeanFunction


def _model_and_step(seed=0):
    keras.utils.set_random_seed(seed)
    model = keras.Sequential(
        [keras.layers.Dense(4, activation="relu"), keras.layers.Dense(2)]
    )
    model.build((None, 3))
    optimizer = keras.optimizers.SGD(0.1, momentum=0.9)
    optimizer.build(model.trainable_variables)
    graphs = []

    def step(x, y):
        graphs.append(weakref.ref(tf.compat.v1.get_default_graph()))
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean((model(x) - y) ** 2)
        grads = tape.gradient(loss, model.trainable_variables)
        # Keras' apply all-reduces through a graph-mode tf.custom_gradient,
        # whose registry entry holds the graph (the leak LeanFunction ends).
        optimizer.apply(grads, model.trainable_variables)
        return {"loss": loss, "rows": tf.shape(x)[0]}

    return model, step, graphs


def _inputs(rows=5):
    rng = np.random.default_rng(1)
    x = tf.constant(rng.normal(size=(rows, 3)), tf.float32)
    y = tf.constant(rng.normal(size=(rows, 2)), tf.float32)
    return x, y


def test_lean_steps_match_tf_function_bit_for_bit():
    x, y = _inputs()
    model, step, _ = _model_and_step()
    plain = tf.function(step)
    expected = [float(plain(x, y)["loss"]) for _ in range(3)]
    expected_weights = [v.numpy() for v in model.weights]

    model, step, _ = _model_and_step()
    lean = LeanFunction(step)
    got = [float(lean(x, y)["loss"]) for _ in range(3)]
    assert got == expected
    for a, b in zip(model.weights, expected_weights, strict=True):
        np.testing.assert_array_equal(a.numpy(), b)
    assert lean.lean and lean.trace_count == 1


def test_the_traced_graph_is_freed_before_the_first_call():
    x, y = _inputs()
    _, step, graphs = _model_and_step()
    lean = LeanFunction(step)
    before = lean_function._custom_gradient_names()
    record = lean.trace(x, y)
    gc.collect()
    assert len(graphs) == 1 and graphs[0]() is None
    assert record["custom_gradients_freed"] >= 1
    assert lean_function._custom_gradient_names() == before
    assert record["graph_nodes"] > 10
    assert float(lean(x, y)["loss"]) > 0  # still runs, no retrace
    assert len(graphs) == 1


def test_tf_function_keeps_the_graph_it_traced():
    # The oracle for the test above: without LeanFunction the graph lives
    # on (the function's cache and TF's gradient registry hold it).
    x, y = _inputs()
    _, step, graphs = _model_and_step()
    plain = tf.function(step)
    plain(x, y)
    gc.collect()
    assert graphs[0]() is not None


def test_a_new_signature_traces_again_and_reuses_old_traces():
    x, y = _inputs()
    _, step, graphs = _model_and_step()
    lean = LeanFunction(step)
    assert int(lean(x, y)["rows"]) == 5
    assert int(lean(x[:2], y[:2])["rows"]) == 2
    assert int(lean(x, y)["rows"]) == 5
    assert lean.trace_count == 2 and len(graphs) == 2


def test_each_trace_is_announced_with_its_size():
    x, y = _inputs()
    _, step, _ = _model_and_step()
    lines = []
    lean = LeanFunction(step, announce=lines.append, name="the toy step")
    lean(x, y)
    lean(x, y)  # the same signature: no trace, nothing said
    assert len(lines) == 2
    nodes = lean.last_trace["graph_nodes"]
    assert lines[0] == "Tracing the toy step (trace 1)..."
    assert lines[1].startswith(f"Traced the toy step: {nodes:,} graph nodes")
    lean(x[:2], y[:2])
    assert len(lines) == 4 and lines[2].endswith("(trace 2)...")


def test_nested_functions_run_without_their_graphs():
    # A step calling another tf.function (Keras' layout: an iterator loop
    # around a step) and a while loop: the runtime functions they need
    # (the lean handle's children) stay registered.
    held = {"inner": tf.function(lambda v: v * 2.0)}

    def step(v):
        return tf.while_loop(
            lambda i, s: i < 3,
            lambda i, s: (i + 1, held["inner"](s)),
            (0, v),
        )[1]

    lean = LeanFunction(step)
    lean.trace(tf.constant(1.0))
    held.clear()  # the inner tf.function and its graph go
    gc.collect()
    assert float(lean(tf.constant(1.0))) == 8.0


def test_nodes_of_called_functions_are_counted_apart():
    inner = tf.function(lambda v: tf.sin(v) * 2.0 + 1.0)
    inner_nodes = len(inner.get_concrete_function(
        tf.TensorSpec([], tf.float32)).graph.get_operations())

    def plain(v):
        return v * 3.0

    def calling(v):
        return inner(v) * 3.0

    lean = LeanFunction(plain)
    assert lean.trace(tf.constant(1.0))["function_nodes"] == 0
    lean = LeanFunction(calling)
    record = lean.trace(tf.constant(1.0))
    assert record["function_nodes"] == inner_nodes
    assert float(lean(tf.constant(0.0))) == 3.0


def test_structured_inputs_and_python_values_key_the_traces():
    lean = LeanFunction(lambda pair, scale: pair["a"] * scale + pair["b"])
    pair = {"a": tf.constant(2.0), "b": tf.constant(1.0)}
    assert float(lean(pair, 3)) == 7.0
    assert float(lean(pair, 4)) == 9.0
    assert lean.trace_count == 2


def test_a_non_callable_is_refused():
    with pytest.raises(TypeError, match="python_function must be callable"):
        LeanFunction(3)
