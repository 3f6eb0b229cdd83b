"""Distribution: 1 replica == 2 replicas, launchers under mirrored, errors.

The replica tests split the CPU into two logical devices, which TensorFlow
allows only before it initialises its devices: they run in a subprocess
(`_run_in_subprocess`), never in the pytest process itself.
"""

import json
import os
import subprocess
import sys
import types

import keras
import numpy as np
import pytest
import tensorflow as tf
from absl import flags

from tests.helpers import (
    REPO_ROOT,
    RETRAIN_TINY,
    SEARCH_TINY,
    flags_with,
    run_retrain_launcher,
    search_flag_values,
)
from tf_amended_darts.core import custom_loop, distribute, engine, replicas
from tf_amended_darts.core.optimizers import TorchAdam, TorchSGD
from tf_amended_darts.jobs import search_config
from tf_amended_darts.nn.batch_norm import BatchNorm
from tf_amended_darts.nn.contexts import synchronized_statistics

ROOT = REPO_ROOT
RESULT = "RESULT "
ESTIMATORS = (
    ("first_order", "exact"),
    ("second_order", "exact"),
    ("second_order", "finite_difference"),
    ("amended", "exact"),
    ("amended", "finite_difference"),
)
STEPS = 3
GLOBAL_BATCH = 8
# float32 states of 1 and 2 replicas differ by summation order only
# (measured: <= 3e-7, see `_max_diff`, after three steps).
TOLERANCE = 1e-5
TWO_CPUS = """
import os
os.environ["CUDA_VISIBLE_DEVICES"] = ""
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(
    cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
"""


def _run_in_subprocess(code, timeout=600):
    """Runs ``TWO_CPUS + code`` in a fresh Python; returns its RESULT."""
    env = dict(os.environ, PYTHONPATH=ROOT, CUDA_VISIBLE_DEVICES="")
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    proc = subprocess.run(
        [sys.executable, "-c", TWO_CPUS + code],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, proc.stderr[-6000:]
    lines = [x for x in proc.stdout.splitlines() if x.startswith(RESULT)]
    assert lines, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads(lines[-1][len(RESULT) :])


# --------------------------------------------------------------------------
# The tiny model of the replica tests (used inside the subprocess).


class TinyBNNet(keras.Model):
    """``BN(p0 * x K1 + p1 * tanh(x K2))``, ``p = softmax(alpha)``.

    `BatchNorm` (affine) on the mixed output: its batch statistics
    couple the examples of a batch, as in the supernet.
    """

    def __init__(self, use_bn=True, **kwargs):
        super().__init__(**kwargs)
        self.use_bn = use_bn
        self.bn = BatchNorm(affine=True, dtype=self.dtype_policy)

    def build(self, input_shape):
        rng = np.random.default_rng(0)
        d = input_shape[-1]
        const = keras.initializers.Constant
        self.k1 = self.add_weight(
            shape=(d, 3), name="k1", initializer=const(rng.normal(size=(d, 3)))
        )
        self.k2 = self.add_weight(
            shape=(d, 3), name="k2", initializer=const(rng.normal(size=(d, 3)))
        )
        self.alpha = self.add_weight(
            shape=(2,), name="alpha", initializer=const([0.1, -0.2])
        )
        self.bn.build((None, 1, 1, 3))
        self.built = True

    @property
    def weight_variables(self):
        return [self.k1, self.k2] + list(self.bn.trainable_variables)

    @property
    def arch_variables(self):
        return [self.alpha]

    def call(self, x, training=False):
        p = keras.ops.softmax(self.alpha)
        out = p[0] * (x @ self.k1) + p[1] * keras.ops.tanh(x @ self.k2)
        if not self.use_bn:
            return out
        out = self.bn(keras.ops.reshape(out, (-1, 1, 1, 3)), training=training)
        return keras.ops.reshape(out, (-1, 3))


def _pairs(dtype="float32", scale=30.0):
    """``STEPS`` global batches of (train, val) pairs; large inputs, so the
    weight optimiser's global-norm clipping is active."""
    rng = np.random.default_rng(1)
    n = STEPS * GLOBAL_BATCH

    def half():
        x = (rng.normal(size=(n, 4)) * scale).astype(dtype)
        y = rng.integers(0, 3, size=(n,)).astype("int32")
        return tf.data.Dataset.from_tensor_slices((x, y)).batch(GLOBAL_BATCH)

    return tf.data.Dataset.zip((half(), half()))


def _search(strategy, arch_grad, hvp, use_bn=True, sync=True, dtype=None):
    with strategy.scope():
        net = TinyBNNet(use_bn=use_bn, dtype=dtype)
        net.build((None, 4))
        search = engine.BilevelSearch(
            net, arch_grad=arch_grad, eta=0.5, hvp=hvp, sync_batch_norm=sync
        )
        search.compile(
            weight_optimizer=TorchSGD(0.1, 0.9, 3e-4, global_clipnorm=5.0),
            arch_optimizer=TorchAdam(0.01),
        )
    return search


def _state(search):
    """Weights, architecture, BN statistics and optimiser slots."""
    values = [v.numpy() for v in search.network.variables]
    for opt in (search.weight_optimizer, search.arch_optimizer):
        values += [v.numpy() for v in opt.variables]
    return values


def _max_diff(a, b):
    """Largest ``|x - y| / (1 + |x|)`` over all entries (absolute for small
    values, relative for large ones: BN variances, Adam moments)."""
    return float(
        max(
            np.max(np.abs(x - y) / (1.0 + np.abs(x)))
            for x, y in zip(a, b, strict=True)
        )
    )


def _two_replicas():
    return tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])


def _estimates(strategy, search, batch):
    """The replica-mean of ``(arch_grads, g1, g2)`` on one global batch."""

    def fn(data):
        with synchronized_statistics():
            result, _ = search.arch_gradient(*engine.unpack_pairs(data))
        parts = result.arch_grads + result.g1 + result.g2
        return replicas.cross_replica_mean(parts)

    @tf.function
    def run(data):
        out = strategy.run(fn, args=(data,))
        return [strategy.experimental_local_results(x)[0] for x in out]

    data = next(iter(strategy.experimental_distribute_dataset(batch)))
    return [x.numpy() for x in run(data)]


def replica_worker(estimators=ESTIMATORS):
    """Measures 1 vs 2 replicas; prints ``RESULT {json}`` (subprocess).

    ``estimators`` (``(arch_grad, hvp)`` pairs) must include amended
    exact, the reference of the custom loop and per-replica statistics.
    """
    estimators = [tuple(e) for e in estimators]
    one, two = tf.distribute.get_strategy(), _two_replicas()
    out = {"updates": {}}
    one_replica = {}
    for arch_grad, hvp in estimators:
        states = []
        for strategy in (one, two):
            search = _search(strategy, arch_grad, hvp)
            search.fit(_pairs(), epochs=1, verbose=0)
            states.append(_state(search))
        out["updates"][f"{arch_grad}/{hvp}"] = _max_diff(*states)
        one_replica[(arch_grad, hvp)] = states[0]
    reference = one_replica[("amended", "exact")]
    # The custom loop (multi-worker's) under mirrored equals fit.
    search = _search(two, "amended", "exact")
    custom_loop.custom_fit(search, _pairs(), steps_per_epoch=STEPS)
    out["custom_fit"] = _max_diff(reference, _state(search))
    # Per-replica statistics change the loss: the test can see BN.
    search = _search(two, "amended", "exact", sync=False)
    search.fit(_pairs(), epochs=1, verbose=0)
    out["per_replica_bn"] = _max_diff(reference, _state(search))
    # Second derivatives through synchronized BN, float64, one step.
    batch = _pairs("float64", scale=1.0).take(1)
    out["estimates_float64"] = {}
    for arch_grad, hvp in estimators:
        if arch_grad == "first_order":
            continue
        got = [
            _estimates(s, _search(s, arch_grad, hvp, dtype="float64"), batch)
            for s in (one, two)
        ]
        scale = max(float(np.max(np.abs(x))) for x in got[0])
        out["estimates_float64"][f"{arch_grad}/{hvp}"] = _max_diff(*got) / scale
    print(RESULT + json.dumps(out), flush=True)


# The default suite runs first_order and amended exact; the slow case
# every estimator (each a fit on one and on two replicas, in one process).
@pytest.mark.parametrize(
    "estimators",
    [
        (("first_order", "exact"), ("amended", "exact")),
        pytest.param(ESTIMATORS, marks=pytest.mark.slow),
    ],
    ids=["first_order_and_amended_exact", "every_estimator"],
)
def test_one_and_two_replicas_give_the_same_search(estimators):
    out = _run_in_subprocess(
        "from tests.core import test_distribute as T\n"
        f"T.replica_worker({list(estimators)!r})\n"
    )
    print(json.dumps(out, indent=1))
    bad = {k: v for k, v in out["updates"].items() if not v < TOLERANCE}
    assert not bad, f"1 vs 2 replicas differ: {bad}"
    assert set(out["updates"]) == {f"{a}/{h}" for a, h in estimators}
    assert out["custom_fit"] < TOLERANCE
    # Per-replica batch statistics: another loss, other updates.
    assert out["per_replica_bn"] > 1e-3
    assert set(out["estimates_float64"]) == {
        f"{a}/{h}" for a, h in estimators if a != "first_order"
    }
    bad = {k: v for k, v in out["estimates_float64"].items() if not v < 1e-10}
    assert not bad, f"float64 estimates differ (relative): {bad}"


# --------------------------------------------------------------------------
# Recomputed cells (--recompute_cells) under two replicas.


def recompute_worker(model_dir):
    """Recomputed cells on two replicas: the engine and the search's set-up
    refuse them (a synchronized batch norm inside a recomputed cell's
    function is a `merge_call` in a nested function, which TensorFlow
    does not support: measured, RuntimeError). Prints ``RESULT {json}``."""
    from tf_amended_darts.jobs import precision
    from tf_amended_darts.jobs import search as search_job

    out = {}
    with _two_replicas().scope():
        net = precision.search_network(
            "float64", 10, 8, layers=3, init_channels=4, steps=2,
            multiplier=2, operators=("none", "sep_conv_3x3"),
            recompute_cells=True,
        )
        try:
            engine.BilevelSearch(net, arch_grad="amended")
        except ValueError as error:
            out["engine"] = str(error)
    fv = flags.FlagValues()
    search_config.define_flags(fv)
    fv(["search", f"--model_dir={model_dir}", "--strategy=mirrored",
        "--recompute_cells"])
    try:
        search_job.set_up(search_config.from_flags(fv))
    except ValueError as error:
        out["set_up"] = str(error)
    print(RESULT + json.dumps(out), flush=True)


def test_recomputed_cells_are_refused_on_two_replicas(tmp_path):
    out = _run_in_subprocess(
        "from tests.core import test_distribute as T\n"
        f"T.recompute_worker({str(tmp_path)!r})\n"
    )
    assert set(out) == {"engine", "set_up"}
    for message in out.values():
        assert "--recompute_cells does not combine with 2 replicas" in message


# --------------------------------------------------------------------------
# Launchers under --strategy=mirrored (two logical CPUs).

SEARCH_MIRRORED = flags_with(
    SEARCH_TINY, arch_grad="first_order", strategy="mirrored"
)
RETRAIN_MIRRORED = flags_with(RETRAIN_TINY, epochs=1, strategy="mirrored")


def launcher_worker(search_dir, retrain_dir):
    """Runs both launchers with --strategy=mirrored (subprocess)."""
    from launchers import search as search_launcher

    fv = search_flag_values(SEARCH_MIRRORED + [f"--model_dir={search_dir}"])
    genotype = search_launcher.run_search(fv)
    result = run_retrain_launcher(
        RETRAIN_MIRRORED + [f"--model_dir={retrain_dir}"]
    )
    replicas = distribute.make_strategy("mirrored").num_replicas_in_sync
    out = {"normal": len(genotype.normal), "result": result, "r": replicas}
    print(RESULT + json.dumps(out), flush=True)


# Slow: the default suite checks the mirrored strategy's numerics
# (`test_one_and_two_replicas_give_the_same_search`) and the launchers'
# distributed plumbing with two workers (tests/jobs/test_multi_worker.py).
@pytest.mark.slow
def test_launchers_run_with_the_mirrored_strategy(tmp_path):
    search_dir, retrain_dir = tmp_path / "search", tmp_path / "retrain"
    out = _run_in_subprocess(
        "from tests.core import test_distribute as T\n"
        f"T.launcher_worker({str(search_dir)!r}, {str(retrain_dir)!r})\n"
    )
    assert out["r"] == 2 and out["normal"] == 8
    for name in ("genotype.json", "config.json", "metrics.csv"):
        assert (search_dir / name).exists(), name
    assert os.listdir(search_dir / "checkpoints") == ["ckpt-0001.weights.h5"]
    config = json.loads((search_dir / "config.json").read_text())
    assert config["strategy"] == "mirrored"
    result = out["result"]
    assert 0.0 <= result["test_top1_error"] <= 100.0
    for name in ("result.json", "final.weights.h5", "metrics.csv"):
        assert (retrain_dir / name).exists(), name


# --------------------------------------------------------------------------
# Factory, flags and helpers (in process: they build no multi-replica
# strategy).


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(name="tpu"), r"--strategy='tpu'.*default, mirrored, multi_"),
        (dict(name="mirrored", num_gpus=-1), r"--num_gpus=-1.*>= 0"),
        (dict(name="mirrored", num_gpus=1.5), r"--num_gpus=1.5"),
        (dict(name="default", num_gpus=2), r"--num_gpus=2.*--strategy=mir"),
        (dict(name="multi_worker", num_gpus=1), r"--num_gpus=1.*multi_w"),
        (dict(name="mirrored", num_gpus=64), r"--num_gpus=64: 0 GPU"),
    ],
)
def test_make_strategy_rejects_bad_settings(kwargs, match):
    with pytest.raises(ValueError, match=match):
        distribute.make_strategy(**kwargs)


@pytest.mark.parametrize(
    "tf_config,match",
    [
        (None, "needs the TF_CONFIG environment variable"),
        ("{not json", "not JSON"),
        ('{"task": {"type": "worker", "index": 0}}', "no `cluster`"),
        ('{"cluster": {"worker": ["a:1"]}}', "no `task`"),
        (
            '{"cluster": {"worker": ["a:1"]}, '
            '"task": {"type": "worker", "index": 3}}',
            "index 3 is not in the cluster",
        ),
    ],
)
def test_multi_worker_needs_a_valid_tf_config(monkeypatch, tf_config, match):
    if tf_config is None:
        monkeypatch.delenv("TF_CONFIG", raising=False)
    else:
        monkeypatch.setenv("TF_CONFIG", tf_config)
    with pytest.raises(ValueError, match=match):
        distribute.make_strategy("multi_worker")


def test_default_strategy_is_tensorflows_default():
    strategy = distribute.make_strategy("default")
    assert strategy is tf.distribute.get_strategy()
    assert distribute.is_chief(strategy)
    assert not distribute.is_multi_worker(strategy)
    assert distribute.per_replica_batch_size(96, strategy) == 96


def test_per_replica_batch_size_names_the_flag():
    two = types.SimpleNamespace(num_replicas_in_sync=2)
    assert distribute.per_replica_batch_size(96, two) == 48
    with pytest.raises(ValueError, match=r"--batch_size=7.*2 replicas"):
        distribute.per_replica_batch_size(7, two)


def test_the_chief_is_worker_0_or_the_chief_task():
    workers = {"worker": ["a:1", "b:1"]}
    assert distribute.chief_task("worker", 0, workers)
    assert not distribute.chief_task("worker", 1, workers)
    with_chief = dict(workers, chief=["c:1"])
    assert distribute.chief_task("chief", 0, with_chief)
    assert not distribute.chief_task("worker", 0, with_chief)
    assert distribute.chief_task(None, None, {})


@pytest.mark.parametrize(
    "args,match",
    [
        (["--strategy=tpu"], "--strategy.*default, mirrored, multi_worker"),
        (["--num_gpus=-2"], "--num_gpus"),
        (["--strategy=multi_worker", "--num_gpus=2"], "--num_gpus"),
    ],
)
def test_launcher_flags_are_validated(tmp_path, args, match):
    from tf_amended_darts.jobs import retrain_config

    fv = flags.FlagValues()
    search_config.define_flags(fv)
    fv(["search", f"--model_dir={tmp_path}"] + args)
    with pytest.raises(ValueError, match=match):
        search_config.from_flags(fv)
    fv = flags.FlagValues()
    retrain_config.define_flags(fv)
    fv(["retrain", "--genotype=DARTS_V2", f"--model_dir={tmp_path}"] + args)
    with pytest.raises(ValueError, match=match):
        retrain_config.from_flags(fv)


def test_batch_norm_synchronization_is_off_outside_replicas():
    bn = BatchNorm(affine=False, synchronized=True)
    x = np.random.default_rng(0).normal(size=(4, 2, 2, 3)).astype("float32")
    plain = BatchNorm(affine=False)
    with synchronized_statistics():
        np.testing.assert_allclose(
            bn(x, training=True), plain(x, training=True), atol=1e-6
        )
    assert bn.get_config()["synchronized"] is True
    with pytest.raises(ValueError, match="synchronized='yes'"):
        BatchNorm(synchronized="yes")
