"""Mixed-precision re-training: policies, loss scaling, resume and export.

``--dtype_policy`` in {float32, mixed_float16, mixed_bfloat16}: variables
stay float32, batch norm keeps float32 statistics, logits are float32,
mixed_float16 trains through a `LossScaleOptimizer` that clips after
unscaling, and checkpoints / the SavedModel work under each policy. Tiny
networks (3 cells, C = 4, 16x16 digits, 2 steps per epoch); float32 is
covered by tests/jobs/test_retrain.py and tests/jobs/test_export.py, and
bfloat16 differs from float16 only by its missing loss scaling, so only the
mixed_float16 launcher run is in the default suite (~15-30 s).
"""

import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from tests.helpers import (
    REPO_ROOT,
    RETRAIN_TINY,
    flags_with,
    h5_datasets,
    retrain_flag_values,
    run_retrain_launcher,
)
from tf_amended_darts.core import replicas
from tf_amended_darts.core.optimizers import TorchSGD
from tf_amended_darts.jobs import export, retrain, retrain_config, retrainer
from tf_amended_darts.nn.batch_norm import BatchNorm
from tf_amended_darts.vision import network

MIXED = ("mixed_float16", "mixed_bfloat16")
LOW = {"mixed_float16": "float16", "mixed_bfloat16": "bfloat16"}
STEPS = 2  # training steps per epoch
TINY = flags_with(
    RETRAIN_TINY,
    batch_size=8,
    steps_per_epoch=STEPS,
    deterministic=True,
    tensorboard=False,
)


pytestmark = pytest.mark.usefixtures("restore_global_tf_state")


_flag_values = retrain_flag_values
_run = run_retrain_launcher


# --------------------------------------------------------------------------
# Pieces.


def test_bad_dtype_policy_names_the_flag_and_the_accepted_values():
    for bad in ("float16", "mixed_float32", ""):
        with pytest.raises(ValueError) as err:
            retrain_config.from_flags(
                _flag_values(
                    TINY + [f"--dtype_policy={bad}", "--model_dir=unused"]
                )
            )
        message = str(err.value)
        assert "--dtype_policy" in message
        for accepted in retrain_config.DTYPE_POLICIES:
            assert accepted in message


@pytest.mark.parametrize("policy", MIXED)
def test_batch_norm_statistics_are_float32_under_mixed_policies(policy):
    # Activations of ~300: their squares (9e4) overflow float16 (max 65504);
    # the statistics must still be those of float32.
    rng = np.random.default_rng(0)
    x = (300.0 + 5.0 * rng.normal(size=(4, 6, 6, 3))).astype(np.float32)
    x = tf.cast(tf.cast(x, LOW[policy]), "float32")  # representable values
    mixed = BatchNorm(affine=True, dtype=policy)
    full = BatchNorm(affine=True, dtype="float32")
    out = mixed(x, training=True)
    expected = full(x, training=True)
    assert out.dtype == LOW[policy]
    assert {v.dtype for v in mixed.weights} == {"float32"}
    # Output rounding only: one unit in the last place of values ~1.
    tol = {"mixed_float16": 2e-3, "mixed_bfloat16": 2e-2}[policy]
    np.testing.assert_allclose(
        tf.cast(out, "float32").numpy(), expected.numpy(), atol=tol
    )
    for name in ("moving_mean", "moving_variance"):
        np.testing.assert_allclose(
            getattr(mixed, name).numpy(),
            getattr(full, name).numpy(),
            rtol=1e-6,
            err_msg=name,
        )
    inference = mixed(x, training=False)
    assert np.all(np.isfinite(tf.cast(inference, "float32").numpy()))


@pytest.mark.parametrize("policy", MIXED)
def test_network_has_float32_variables_and_logits(policy):
    def build(dtype):
        net = network.NetworkCIFAR(
            "DARTS_V2",
            layers=3,
            init_channels=4,
            auxiliary=True,
            seed=0,
            dtype=dtype,
        )
        net.build((None, 32, 32, 3))  # the auxiliary head needs 8x8
        return net

    net, reference = build(policy), build("float32")
    assert {v.dtype for v in net.weights} == {"float32"}
    assert network.count_params(net) == network.count_params(reference)
    assert network.count_params(net, include_aux=True) == (
        network.count_params(reference, include_aux=True)
    )
    assert net.genotype == reference.genotype
    assert net.stem_conv.compute_dtype == LOW[policy]
    x = tf.zeros((2, 32, 32, 3))
    logits, aux = net(x, training=True)
    assert logits.dtype == aux.dtype == "float32"
    assert net(x, training=False).dtype == "float32"


def test_loss_scale_optimizer_clips_after_unscaling():
    scale = 2.0**10
    variable = keras.Variable(np.zeros(3, np.float32))
    optimizer = keras.optimizers.LossScaleOptimizer(
        TorchSGD(1.0, 0.0, 0.0, global_clipnorm=1.0), initial_scale=scale
    )
    optimizer.build([variable])
    # The true gradient (3, 4, 0) has norm 5: clipped to norm 1. Clipping
    # the scaled gradient instead would leave a step 1 / scale long.
    replicas.apply_mean_gradients(
        optimizer, [tf.constant([3.0, 4.0, 0.0]) * scale], [variable]
    )
    np.testing.assert_allclose(variable.numpy(), [-0.6, -0.8, 0.0], rtol=1e-6)
    # A non-finite gradient skips the step and halves the scale.
    replicas.apply_mean_gradients(
        optimizer, [tf.constant([np.inf, 0.0, 0.0])], [variable]
    )
    np.testing.assert_allclose(variable.numpy(), [-0.6, -0.8, 0.0], rtol=1e-6)
    assert float(optimizer.dynamic_scale) == scale / 2
    assert retrainer.base_optimizer(optimizer) is optimizer.inner_optimizer


def test_only_mixed_float16_scales_the_loss():
    for policy in retrain_config.DTYPE_POLICIES:
        config = retrain_config.RetrainConfig(
            genotype="DARTS_V2",
            model_dir="unused",
            dataset="digits",
            image_size=16,
            layers=3,
            init_channels=4,
            auxiliary=False,
            dtype_policy=policy,
        )
        net = retrainer.build_network(config)
        model = retrainer.build_retrainer(config, net, 1)
        scaled = isinstance(
            model.optimizer, keras.optimizers.LossScaleOptimizer
        )
        assert scaled == (policy == "mixed_float16"), policy
        assert isinstance(retrainer.base_optimizer(model.optimizer), TorchSGD)
        inner = retrainer.base_optimizer(model.optimizer)
        assert inner.global_clipnorm == config.grad_clip


# --------------------------------------------------------------------------
# The launcher: interrupted, resumed, exported.


@pytest.mark.parametrize(
    "policy",
    [
        pytest.param("float32", marks=pytest.mark.slow),
        "mixed_float16",  # loss scaling: the path float32 does not take
        pytest.param("mixed_bfloat16", marks=pytest.mark.slow),
    ],
)
def test_retrain_resume_and_export_under_each_policy(
    policy, tmp_path, monkeypatch
):
    d = str(tmp_path / "run")
    args = TINY + [f"--dtype_policy={policy}", f"--model_dir={d}"]
    real = retrain.train_data

    def dies_in_epoch_2(config, epoch):
        if epoch == 1:
            raise KeyboardInterrupt("simulated kill")
        return real(config, epoch)

    monkeypatch.setattr(retrain, "train_data", dies_in_epoch_2)
    with pytest.raises(KeyboardInterrupt):
        _run(args)
    assert os.listdir(os.path.join(d, "checkpoints")) == [
        "ckpt-0001.weights.h5"
    ]
    monkeypatch.setattr(retrain, "train_data", real)
    result = _run(args)  # resumes after epoch 1

    config = retrain.load_config(d)
    assert config.dtype_policy == policy
    float32 = retrainer.build_network(
        retrain_config.RetrainConfig(
            **{**config.to_dict(), "dtype_policy": "float32"}
        )
    )
    assert result["params"] == network.count_params(float32)
    assert all(np.isfinite(result[k]) for k in ("test_top1_error",))

    # The checkpoint restores the optimiser of the policy, state included.
    net = retrainer.build_network(config)
    model = retrainer.build_retrainer(config, net, STEPS)
    model.load_weights(export.latest_checkpoint(d))
    assert {v.dtype for v in net.weights} == {"float32"}
    optimizer = model.optimizer
    assert int(optimizer.iterations) == 2 * STEPS
    if policy == "mixed_float16":
        assert isinstance(optimizer, keras.optimizers.LossScaleOptimizer)
        scale = float(optimizer.dynamic_scale)
        assert 0 < scale <= retrainer.INITIAL_LOSS_SCALE
    x = np.random.default_rng(0).normal(size=(3, 16, 16, 3)).astype("f4")
    logits = net(x, training=False)
    assert logits.dtype == "float32"

    e = str(tmp_path / "exported")
    export.export_saved_model(d, e)
    signature = tf.saved_model.load(e).signatures["serving_default"]
    spec = signature.structured_input_signature[1]["images"]
    assert spec.dtype == tf.float32
    outputs = signature.structured_outputs
    for name in ("logits", "probabilities"):
        assert outputs[name].dtype == tf.float32, name
    served = signature(images=tf.constant(x))
    _, final, _ = export.load_run(d)
    np.testing.assert_allclose(
        served["logits"].numpy(),
        final(x, training=False).numpy(),
        rtol=1e-5,
        atol=1e-5,
    )


@pytest.mark.slow
def test_mixed_float16_resume_equals_an_uninterrupted_run(
    tmp_path, monkeypatch
):
    weights = h5_datasets

    args = TINY + ["--dtype_policy=mixed_float16"]
    straight = str(tmp_path / "straight")
    _run(args + [f"--model_dir={straight}"])
    d = str(tmp_path / "resumed")
    real = retrain.train_data

    def dies_in_epoch_2(config, epoch):
        if epoch == 1:
            raise KeyboardInterrupt("simulated kill")
        return real(config, epoch)

    monkeypatch.setattr(retrain, "train_data", dies_in_epoch_2)
    with pytest.raises(KeyboardInterrupt):
        _run(args + [f"--model_dir={d}"])
    monkeypatch.setattr(retrain, "train_data", real)
    _run(args + [f"--model_dir={d}"])
    for name in ("final.weights.h5", "checkpoints/ckpt-0002.weights.h5"):
        expected = weights(os.path.join(straight, name))
        got = weights(os.path.join(d, name))
        assert got.keys() == expected.keys()
        for key in expected:
            np.testing.assert_array_equal(got[key], expected[key], key)


TWO_REPLICAS = """
import os, sys
os.environ["CUDA_VISIBLE_DEVICES"] = ""
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"
sys.path.insert(0, {root!r})
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(
    cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
import json
import keras
import numpy as np
from tf_amended_darts.core import distribute, replicas
from tf_amended_darts.core.optimizers import TorchSGD
strategy = distribute.make_strategy("mirrored")
S = 2.0**10
with strategy.scope():
    w = keras.Variable(np.zeros(3, np.float32))
    opt = keras.optimizers.LossScaleOptimizer(
        TorchSGD(1.0, 0.0, 0.0, global_clipnorm=1.0), initial_scale=S)
    opt.build([w])

@tf.function
def step(bad):
    def fn():
        i = tf.cast(
            tf.distribute.get_replica_context().replica_id_in_sync_group,
            tf.float32)
        # Replica 0: 2 * (3, 4, 0), replica 1: 0 (or inf): mean (3, 4, 0).
        g = (1.0 - i) * tf.constant([6.0, 8.0, 0.0]) * S
        g = tf.where(bad & (i > 0), tf.constant([np.inf, 0, 0]), g)
        replicas.apply_mean_gradients(opt, [g], [w])
    strategy.run(fn)

out = []
for bad in (False, True):
    step(tf.constant(bad))
    out.append([w.value.numpy().tolist(),
                float(opt.dynamic_scale.value.numpy())])
print("RESULT " + json.dumps(out))
"""


@pytest.mark.slow
def test_loss_scaling_under_two_replicas_clips_the_unscaled_mean():
    import json
    import subprocess
    import sys

    root = REPO_ROOT
    proc = subprocess.run(
        [sys.executable, "-c", TWO_REPLICAS.format(root=root)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
    (finite, skipped) = json.loads(line[-1][len("RESULT ") :])
    # The mean (3, 4, 0) clipped to norm 1, once; the scale kept.
    np.testing.assert_allclose(finite[0], [-0.6, -0.8, 0.0], rtol=1e-6)
    assert finite[1] == 2.0**10
    # inf on one replica: every replica skips, the scale halves.
    np.testing.assert_allclose(skipped[0], [-0.6, -0.8, 0.0], rtol=1e-6)
    assert skipped[1] == 2.0**9
