"""Re-training networks: reference parameter counts, MACs, behaviour."""

import json

import keras
import numpy as np
import pytest
import tensorflow as tf
from absl import app, flags

from tf_amended_darts.nn.conv import Conv2D, DepthwiseConv2D
from tf_amended_darts.nn.drop_path import DropPathSchedule, drop_path
from tf_amended_darts.nn.linear import Linear
from tf_amended_darts.vision import flops, network, search_space
from tf_amended_darts.vision import genotype as G
from tf_amended_darts.vision import ops as O
from tf_amended_darts.vision.discrete_cell import DiscreteCell

# "param size = 3.169414MB" printed by the DARTS reference cnn/train.py
# (quark0/darts) for DARTS_V1, C = 36, 20 cells, auxiliary head excluded.
DARTS_V1_CIFAR_PARAMS = 3_169_414
# Sizes reported in the papers (millions), CIFAR-10: C = 36, 20 cells.
REPORTED_CIFAR_M = {"DARTS_V2": 3.3, "PC_DARTS_CIFAR": 3.6, "P_DARTS": 3.4}
# DARTS paper, Table 3 (mobile setting, C = 48, 14 cells, 224x224).
DARTS_V2_IMAGENET_PARAMS_M = 4.7
DARTS_V2_IMAGENET_MACS = 574e6
# Conv + FC counting gives 529.9M, 7.7% below the paper's figure, whose
# counter was never released (quark0/darts issue #46 reports 523M with
# conv + FC counting and 544.6M with ptflops); see flops.py.
MACS_RTOL = 0.10
ROUNDING_M = 0.05  # reported sizes are rounded to 0.1M

SMALL = dict(layers=5, init_channels=8)  # behavioural tests


def _shared(name):
    return G.load_published(name)


def _cifar(name, **kwargs):
    net = network.NetworkCIFAR(_shared(name), **kwargs)
    net.build((None, 32, 32, 3))
    return net


# --------------------------------------------------------------------------
# Closed-form counts, independent of the implementation (reference
# operations.py / model.py).


def _op_macs(name, c, h):
    """Multiply-adds of an operator with output h x h and C channels."""
    if name.startswith("sep_conv"):
        k = int(name[-1])
        return 2 * (h * h * c * k * k + h * h * c * c)
    if name.startswith("dil_conv"):
        k = int(name[-1])
        return h * h * c * k * k + h * h * c * c
    return 0


def _closed_form_macs(genotype, c, layers, size, classes, imagenet):
    def conv_out(s):  # 3x3, stride 2, padding 1
        return (s - 1) // 2 + 1

    total = 0
    if imagenet:
        h = conv_out(size)
        total += h * h * (c // 2) * 3 * 9
        h = conv_out(h)
        total += h * h * c * (c // 2) * 9
        h = conv_out(h)
        total += h * h * c * c * 9
        c_pp = c_p = c
    else:
        h = size
        total += h * h * 3 * c * 3 * 9
        c_pp = c_p = 3 * c
    c_curr = c
    reductions = (layers // 3, 2 * layers // 3)
    for i in range(layers):
        reduction = i in reductions
        c_curr *= 2 if reduction else 1
        # preprocess0 (1x1 conv, or FactorizedReduce: two 1x1 convs to
        # C / 2 at the output size) and preprocess1.
        total += h * h * c_curr * (c_pp + c_p)
        edges = genotype.reduce if reduction else genotype.normal
        h_out = h // 2 if reduction else h
        for name, index in edges:
            if name == "skip_connect" and reduction and index < 2:
                total += h_out * h_out * c_curr * c_curr
            total += _op_macs(name, c_curr, h_out)
        c_pp, c_p = c_p, 4 * c_curr
        h = h_out
    return total + c_p * classes


# --------------------------------------------------------------------------
# (1), (2) parameter counts of the published genotypes.


def test_darts_v1_cifar_params_exact():
    net = _cifar("DARTS_V1")
    assert network.count_params(net) == DARTS_V1_CIFAR_PARAMS
    # CIFAR head: 576 -> 128 (1x1) + BN, 128 -> 768 (2x2) + BN, 768 -> 10.
    aux = 576 * 128 + 2 * 128 + 128 * 768 * 4 + 2 * 768 + 768 * 10 + 10
    assert network.aux_params(net) == aux
    assert network.count_params(net, include_aux=True) == (
        DARTS_V1_CIFAR_PARAMS + aux
    )
    # Moving statistics are weights, but not trainable ones.
    assert network.count_params(net, include_aux=True) < net.count_params()


@pytest.mark.parametrize("name", sorted(REPORTED_CIFAR_M))
def test_published_cifar_params_match_reported(name):
    params = network.count_params(_cifar(name))
    assert abs(params / 1e6 - REPORTED_CIFAR_M[name]) <= ROUNDING_M


@pytest.fixture(scope="module")
def darts_v2_imagenet():
    net = network.NetworkImageNet(_shared("DARTS_V2"))
    net.build((None, 224, 224, 3))
    return net


def test_darts_v2_imagenet_params(darts_v2_imagenet):
    params = network.count_params(darts_v2_imagenet)
    assert abs(params / 1e6 - DARTS_V2_IMAGENET_PARAMS_M) <= ROUNDING_M
    # ImageNet head: no BN after the 2x2 conv (reference comment).
    aux = 768 * 128 + 2 * 128 + 128 * 768 * 4 + 768 * 1000 + 1000
    assert network.aux_params(darts_v2_imagenet) == aux


# --------------------------------------------------------------------------
# (3) multiply-adds.


def test_darts_v2_imagenet_macs(darts_v2_imagenet):
    macs = flops.count_macs(darts_v2_imagenet, 224)
    expected = _closed_form_macs(
        _shared("DARTS_V2"), 48, 14, 224, 1000, imagenet=True
    )
    assert macs == expected
    assert macs == pytest.approx(DARTS_V2_IMAGENET_MACS, rel=MACS_RTOL)
    assert macs <= flops.MOBILE_BUDGET


def test_cifar_macs_closed_form():
    genotype = _shared("PC_DARTS_CIFAR")  # dil, sep 5x5, pools, FR skip
    net = network.NetworkCIFAR(genotype, **SMALL)
    expected = _closed_form_macs(genotype, 8, 5, 32, 10, imagenet=False)
    assert flops.count_macs(net, 32) == expected


def test_layer_macs_formulas():
    c2d = Conv2D(6, 3, 2, 1)
    c2d.build((None, 8, 8, 4))
    assert flops.layer_macs(c2d, (1, 4, 4, 6)) == 4 * 4 * 6 * 4 * 9
    dw = DepthwiseConv2D(5, 1, 4, 2)
    dw.build((None, 8, 8, 4))
    assert flops.layer_macs(dw, (1, 8, 8, 4)) == 8 * 8 * 4 * 25
    fc = Linear(7)
    fc.build((None, 3))
    assert flops.layer_macs(fc, (1, 7)) == 21


# --------------------------------------------------------------------------
# (4) behaviour on small networks.


@pytest.fixture(scope="module")
def small_net():
    keras.utils.set_random_seed(0)
    return network.NetworkCIFAR(_shared("DARTS_V2"), seed=3, **SMALL)


def test_cifar_shapes_train_and_eval(small_net):
    x = tf.random.normal((3, 32, 32, 3))
    logits, aux = small_net(x, training=True)
    assert logits.shape == (3, 10) and aux.shape == (3, 10)
    assert small_net(x, training=False).shape == (3, 10)
    plain = network.NetworkCIFAR(
        _shared("DARTS_V2"), auxiliary=False, num_classes=4, **SMALL
    )
    assert plain(x, training=True).shape == (3, 4)
    assert network.aux_params(plain) == 0


def test_imagenet_shapes_and_aux_input():
    net = network.NetworkImageNet(
        _shared("DARTS_V2"), num_classes=6, layers=3, init_channels=8
    )
    x = tf.random.normal((2, 224, 224, 3))
    logits, aux = net(x, training=True)
    assert logits.shape == (2, 6) and aux.shape == (2, 6)
    # The head sees 7x7 at 224 (after the second reduction): 768 features.
    assert net.auxiliary_head.classifier.kernel.shape == (768, 6)
    assert net(x, training=False).shape == (2, 6)
    with pytest.raises(ValueError, match="init_channels=9"):
        network.NetworkImageNet(_shared("DARTS_V2"), init_channels=9)


def test_inference_ignores_drop_path(small_net):
    x = tf.random.normal((2, 32, 32, 3))
    small_net.drop_path_prob = 0.0
    y0 = small_net(x, training=False)
    small_net.drop_path_prob = 0.5
    y1 = small_net(x, training=False)
    small_net.drop_path_prob = 0.0
    np.testing.assert_array_equal(y0.numpy(), y1.numpy())


def _cell(edges, concat=(2,), channels=4, **kwargs):
    return DiscreteCell(
        edges, concat, False, False, channels, seed=5, **kwargs
    )


def test_drop_path_leaves_identity_untouched():
    cell = _cell([("skip_connect", 0), ("skip_connect", 1)])
    assert all(isinstance(op, O.Identity) for op in cell.cell_ops)
    s = [tf.random.normal((64, 4, 4, 4)) for _ in range(2)]
    y0 = cell(s, training=True, drop_prob=0.0)
    y1 = cell(s, training=True, drop_prob=0.9)
    np.testing.assert_allclose(y0.numpy(), y1.numpy(), rtol=1e-6)


def test_drop_path_rate_and_scaling_on_other_ops():
    p, n = 0.4, 600
    cell = _cell([("none", 0), ("max_pool_3x3", 1)])
    s = [tf.random.normal((n, 4, 4, 4)) for _ in range(2)]
    y0 = cell(s, training=True, drop_prob=0.0).numpy()
    y1 = cell(s, training=True, drop_prob=p).numpy()
    dropped = np.all(y1 == 0.0, axis=(1, 2, 3))
    assert abs(dropped.mean() - p) < 4 * np.sqrt(p * (1 - p) / n)
    kept = ~dropped
    np.testing.assert_allclose(
        y1[kept], y0[kept] / (1 - p), rtol=1e-5, atol=1e-6
    )
    # Per-sample: masks are whole samples, rescaled by 1 / keep.
    x = tf.ones((20000, 2, 2, 3))
    z = drop_path(x, 0.3, seed=1).numpy()
    assert set(np.unique(z)) <= {0.0, np.float32(1 / 0.7)}
    assert np.all(z.min(axis=(1, 2, 3)) == z.max(axis=(1, 2, 3)))
    assert abs((z[:, 0, 0, 0] == 0).mean() - 0.3) < 0.015


def test_drop_path_schedule_ramps_variable(small_net):
    schedule = DropPathSchedule(0.2, epochs=10)
    schedule.set_model(small_net)
    for epoch, expected in ((0, 0.0), (5, 0.1), (9, 0.18)):
        schedule.on_epoch_begin(epoch)
        assert small_net.drop_path_prob == pytest.approx(expected)
    # The compiled step reads the variable: no retrace needed.
    step = tf.function(lambda x: small_net(x, training=True)[0])
    x = tf.random.normal((64, 32, 32, 3))
    small_net.drop_path_prob = 0.0
    step(x)
    small_net.drop_path_prob = 0.99
    y = step(x).numpy()
    small_net.drop_path_prob = 0.0
    assert step.experimental_get_tracing_count() == 1
    assert np.isfinite(y).all()
    with pytest.raises(ValueError, match="max_prob=1.5"):
        DropPathSchedule(1.5, 10)
    with pytest.raises(ValueError, match="drop_path_prob=1.0"):
        small_net.drop_path_prob = 1.0


def _per_cell_genotype(layers):
    normal = _shared("DARTS_V2")
    other = _shared("P_DARTS")
    reductions = search_space.reduction_indices(layers)
    cells = []
    for i in range(layers):
        source = normal if i % 2 else other
        reduction = i in reductions
        edges = source.reduce if reduction else source.normal
        concat = source.reduce_concat if reduction else source.normal_concat
        cells.append(G.CellGenotype(edges, concat, reduction))
    return G.Genotype(cells=tuple(cells))


def test_per_cell_genotype():
    genotype = _per_cell_genotype(5)
    net = network.NetworkCIFAR(genotype, **SMALL)
    logits, aux = net(tf.random.normal((2, 32, 32, 3)), training=True)
    assert logits.shape == (2, 10) and aux.shape == (2, 10)
    for cell, spec in zip(net.cells, genotype.cells, strict=True):
        assert [tuple(e) for e in cell.cell_edges] == list(spec.edges)
        assert cell.reduction == spec.reduction
    with pytest.raises(ValueError, match="layers"):
        network.NetworkCIFAR(genotype, layers=6, init_channels=8)


def test_get_config_round_trip(small_net):
    x = tf.random.normal((2, 32, 32, 3))
    config = small_net.get_config()
    config = json.loads(json.dumps(config))  # plain JSON data
    assert G.from_dict(config["genotype"]) == _shared("DARTS_V2")
    clone = network.NetworkCIFAR.from_config(config)
    clone.build((None, 32, 32, 3))
    clone.set_weights(small_net.get_weights())
    np.testing.assert_allclose(
        clone(x, training=False).numpy(),
        small_net(x, training=False).numpy(),
        rtol=1e-5,
        atol=1e-6,
    )
    restored = keras.saving.deserialize_keras_object(
        keras.saving.serialize_keras_object(small_net)
    )
    assert isinstance(restored, network.NetworkCIFAR)
    cell = small_net.cells[1]
    twin = DiscreteCell.from_config(cell.get_config())
    assert twin.get_config() == cell.get_config()
    for layer in (small_net.auxiliary_head, small_net.classifier):
        again = type(layer).from_config(layer.get_config())
        assert again.get_config() == layer.get_config()


def test_argument_validation_echoes_value():
    genotype = _shared("DARTS_V2")
    with pytest.raises(ValueError, match="layers=0"):
        network.NetworkCIFAR(genotype, layers=0)
    with pytest.raises(ValueError, match="drop_path_prob=-0.1"):
        network.NetworkCIFAR(genotype, drop_path_prob=-0.1)
    with pytest.raises(ValueError, match="conv_9x9"):
        _cell([("conv_9x9", 0), ("skip_connect", 1)])
    with pytest.raises(ValueError, match="genotype=3"):
        network.NetworkCIFAR(3)
    with pytest.raises(ValueError, match="Build the network"):
        network.count_params(network.NetworkCIFAR(genotype, **SMALL))


# --------------------------------------------------------------------------
# (5) width search.


def test_largest_width_within_budget():
    kwargs = dict(layers=3, image_size=64, num_classes=10)
    genotype = _shared("DARTS_V2")

    def macs(c):
        return flops.imagenet_macs(genotype, c, **kwargs)

    budget = (macs(20) + macs(22)) / 2
    width, width_macs = flops.largest_width_within(
        genotype, budget=budget, **kwargs
    )
    assert width == 20 and width % flops.WIDTH_STEP == 0
    assert width_macs == macs(width) <= budget < macs(width + 2)
    with pytest.raises(ValueError, match="step=3"):
        flops.largest_width_within(genotype, step=3)


# --------------------------------------------------------------------------
# (6) launchers/info.py.


def _info(*args):
    from launchers import info

    fv = flags.FlagValues()
    info.define_flags(fv)
    fv(["info", *args])
    return info, fv


def test_info_prints_json(capsys, tmp_path):
    path = tmp_path / "g.json"
    G.save(_shared("PC_DARTS_CIFAR"), path)
    info, fv = _info(
        f"--genotype={path}",
        "--dataset=cifar10",
        "--layers=5",
        "--init_channels=8",
    )
    returned = info.info(fv)
    printed = json.loads(capsys.readouterr().out)
    assert printed == returned
    net = network.NetworkCIFAR(_shared("PC_DARTS_CIFAR"), **SMALL)
    net.build((None, 32, 32, 3))
    assert printed["params"] == network.count_params(net)
    assert printed["params_aux"] == network.aux_params(net) > 0
    assert printed["macs"] == flops.count_macs(net, 32)


def test_info_errors():
    info, fv = _info("--genotype=NOPE")
    with pytest.raises(app.UsageError, match="DARTS_V2"):
        info.info(fv)
    with pytest.raises(flags.IllegalFlagValueError, match="mnist"):
        _info("--dataset=mnist")
