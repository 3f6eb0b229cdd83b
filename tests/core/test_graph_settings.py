"""core/graph_settings.py: the process-wide graph settings of a job."""

import pytest
import tensorflow as tf

from tf_amended_darts.core import graph_settings


@pytest.fixture
def restore_tracebacks():
    before = graph_settings.op_tracebacks_enabled()
    yield
    graph_settings.set_op_tracebacks(before)


def _traced_op_tracebacks():
    """The stack-trace lengths of the ops of a freshly traced function."""

    @tf.function
    def f(x):
        return tf.nn.relu(x * 2.0 + 1.0)

    graph = f.get_concrete_function(tf.TensorSpec([3], tf.float32)).graph
    ops = [op for op in graph.get_operations() if op.type != "Placeholder"]
    assert ops
    return [0 if op.traceback is None else len(op.traceback) for op in ops]


def test_op_tracebacks_switch_off_and_back_on(restore_tracebacks):
    assert graph_settings.set_op_tracebacks(False)
    assert not graph_settings.op_tracebacks_enabled()
    assert set(_traced_op_tracebacks()) == {0}
    assert graph_settings.set_op_tracebacks(True)
    assert graph_settings.op_tracebacks_enabled()
    assert min(_traced_op_tracebacks()) > 0


def test_values_and_gradients_do_not_depend_on_tracebacks(restore_tracebacks):
    x = tf.constant([[-1.0, 0.5], [2.0, -3.0]])

    def grad_twice():
        @tf.function
        def g(x):
            with tf.GradientTape() as outer:
                outer.watch(x)
                with tf.GradientTape() as inner:
                    inner.watch(x)
                    y = tf.reduce_sum(tf.nn.softplus(x) ** 3)
                dx = inner.gradient(y, x)
            return y, dx, outer.gradient(dx, x)

        return [t.numpy() for t in g(x)]

    graph_settings.set_op_tracebacks(True)
    with_traces = grad_twice()
    graph_settings.set_op_tracebacks(False)
    without = grad_twice()
    for a, b in zip(with_traces, without, strict=True):
        assert (a == b).all()


def test_configure_sets_grappler_and_tracebacks(restore_tracebacks):
    before = tf.config.optimizer.get_experimental_options()
    try:
        graph_settings.configure(grappler=False, op_tracebacks=False)
        assert tf.config.optimizer.get_experimental_options()[
            "disable_meta_optimizer"]
        assert not graph_settings.op_tracebacks_enabled()
        graph_settings.configure(grappler=True, op_tracebacks=True)
        assert not tf.config.optimizer.get_experimental_options()[
            "disable_meta_optimizer"]
        assert graph_settings.op_tracebacks_enabled()
    finally:
        tf.config.optimizer.set_experimental_options(before)


def test_a_tensorflow_without_the_switch_gets_a_warning(monkeypatch):
    # (no restore_tracebacks: its teardown would install the fake below)
    def create(graph, node_def, inputs, control_inputs, op_def=None):
        raise AssertionError("not called")

    monkeypatch.setattr(graph_settings, "_CREATE_C_OP", create)
    before = graph_settings.tf_ops._create_c_op
    with pytest.warns(UserWarning, match="--op_tracebacks=False has no"):
        assert not graph_settings.set_op_tracebacks(False)
    assert graph_settings.tf_ops._create_c_op is before  # left as it was


@pytest.mark.parametrize("job", ["search", "language_search", "retrain"])
@pytest.mark.parametrize("op_tracebacks", [False, True])
def test_every_job_applies_its_op_tracebacks_flag(
        job, op_tracebacks, restore_tracebacks, tmp_path):
    from tf_amended_darts.jobs import (
        language_config,
        language_search,
        retrain,
        retrain_config,
        search,
        search_config,
    )

    make, set_up = {
        "search": (search_config.SearchConfig, search.set_up),
        "language_search": (language_config.LanguageSearchConfig,
                            language_search.set_up),
        "retrain": (lambda **kw: retrain_config.RetrainConfig(
            genotype="DARTS_V2", **kw), retrain.set_up),
    }[job]
    before = tf.config.optimizer.get_experimental_options()
    graph_settings.set_op_tracebacks(not op_tracebacks)
    try:
        set_up(make(model_dir=str(tmp_path), op_tracebacks=op_tracebacks))
        assert graph_settings.op_tracebacks_enabled() == op_tracebacks
    finally:
        tf.config.optimizer.set_experimental_options(before)


def test_jobs_build_graphs_without_op_tracebacks_by_default():
    # The default is what keeps ~11 KB per graph node out of every search
    # (benchmarks/s1_cpu.md, section 7): a changed default must be seen.
    from absl import flags

    from tf_amended_darts.jobs import (
        language_config,
        retrain_config,
        search_config,
    )

    assert search_config.SearchConfig(model_dir="m").op_tracebacks is False
    assert language_config.LanguageSearchConfig(
        model_dir="m").op_tracebacks is False
    assert retrain_config.RetrainConfig(
        model_dir="m", genotype="DARTS_V2").op_tracebacks is False
    for define in (search_config.define_flags, retrain_config.define_flags):
        fv = flags.FlagValues()
        define(fv)
        assert fv["op_tracebacks"].default is False
