"""Tests of `jobs.callbacks` (hooks called directly, no training)."""

import csv
import glob
import os

import keras
import numpy as np
import pytest
import tensorflow as tf
from tensorboard.backend.event_processing import event_accumulator as ea
from tensorboard.backend.event_processing import (
    plugin_event_accumulator as pea,
)

from tf_amended_darts.jobs import callbacks, summaries
from tf_amended_darts.vision import genotype as gt
from tf_amended_darts.vision import indicators, search_space, visualize
from tf_amended_darts.vision.supernet import SearchNetwork

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"  # PNG specification, section 5.2
S1_OPS = search_space.DARTS_PRIMITIVES
S2_OPS = ("skip_connect", "sep_conv_3x3")
LOG_NAMES = (
    "loss",
    "val_loss",
    "accuracy",
    "val_accuracy",
    "g1_norm",
    "g2_norm",
    "arch_grad_norm",
    "lr",
)


def fake_logs(epoch):
    """Distinct, exactly representable values per metric and epoch."""
    return {
        name: np.float32(0.5 * (epoch + 1) + 0.25 * i)
        for i, name in enumerate(LOG_NAMES)
    }


def read_png(path):
    with open(path, "rb") as handle:
        data = handle.read()
    assert data.startswith(PNG_SIGNATURE)
    return data


def accumulator(path):
    guidance = {
        kind: 0
        for kind in (
            ea.COMPRESSED_HISTOGRAMS,
            ea.IMAGES,
            ea.AUDIO,
            ea.SCALARS,
            ea.HISTOGRAMS,
            ea.TENSORS,
        )
    }
    acc = ea.EventAccumulator(os.fspath(path), size_guidance=guidance)
    acc.Reload()
    return acc


def tensor_values(acc, tag):
    return [(e.step, tf.make_ndarray(e.tensor_proto)) for e in acc.Tensors(tag)]


def softmax(x):
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


@pytest.fixture(scope="module")
def network():
    """A tiny S1 network (shared normal / reduce weights, pruned edges)."""
    net = SearchNetwork(num_classes=10, layers=3, init_channels=4)
    net.build((None, 8, 8, 3))
    return net


@pytest.fixture(scope="module")
def per_cell_network():
    """A tiny S2-like network: per-cell weights, searched edges, stage 1."""
    net = SearchNetwork(
        num_classes=10,
        operators=S2_OPS,
        layers=3,
        init_channels=4,
        edges="searched",
        shared=False,
    )
    net.build((None, 8, 8, 3))
    return net


def set_alpha(net, key, seed):
    value = np.random.default_rng(seed).normal(size=net.alphas[key].shape)
    net.alphas[key].assign(value.astype("float32"))
    return value


# --------------------------------------------------------------------------
# Helpers.


def test_edge_labels():
    labels = indicators.edge_labels(search_space.edge_list("pruned", 2))
    assert labels == [
        "c_{k-2}->0",
        "c_{k-1}->0",
        "c_{k-2}->1",
        "c_{k-1}->1",
        "0->1",
    ]
    fixed = indicators.edge_labels(search_space.edge_list("fixed", 4))
    assert fixed[:4] == ["c_{k-2}->0", "c_{k-1}->0", "0->1", "c_{k-2}->1"]
    assert len(fixed) == 8
    assert indicators.pair_labels(2) == [
        "c_{k-2}+c_{k-1}->0",
        "c_{k-2}+c_{k-1}->1",
        "c_{k-2}+0->1",
        "c_{k-1}+0->1",
    ]


def test_heatmap_png():
    weights = softmax(np.random.default_rng(0).normal(size=(14, 8)))
    labels = indicators.edge_labels(search_space.edge_list("pruned"))
    png = summaries.heatmap_png(weights, S1_OPS, labels, "normal")
    assert png.startswith(PNG_SIGNATURE)
    image = tf.image.decode_png(png, channels=3)
    assert image.shape[0] > 100 and image.shape[1] > 100
    with pytest.raises(ValueError, match=r"\(14, 7\)"):
        summaries.heatmap_png(weights, S1_OPS[:7], labels, "bad")


def test_figure1_stats_shared():
    weights = np.full((14, 8), 0.5 / 7)
    weights[:7, 0] = 0.5
    weights[7:, 0] = 0.25
    normal = (
        ("skip_connect", 0), ("sep_conv_3x3", 1),
        ("skip_connect", 0), ("max_pool_3x3", 2),
        ("dil_conv_5x5", 1), ("avg_pool_3x3", 3),
        ("sep_conv_5x5", 4), ("max_pool_3x3", 0),
    )  # fmt: skip
    reduce = tuple(("sep_conv_3x3", i % 2) for i in range(8))
    genotype = gt.Genotype(normal, (2, 3, 4, 5), reduce, (2, 3, 4, 5))
    stats = indicators.figure1_stats(
        {"normal": weights, "reduce": weights[::-1]}, genotype, S1_OPS
    )
    assert stats == {
        "none_weight_avg": 0.375,
        "skip_share": 0.25,
        "parametric_ops_normal": 3.0,
    }
    # The reduction cell plays no part; `none` at another column.
    ops = ("sep_conv_3x3", "skip_connect", "none")
    s3 = np.tile([0.25, 0.25, 0.5], (14, 1))
    s3[0] = [0.0, 0.0, 1.0]
    genotype = gt.Genotype(
        tuple(("sep_conv_3x3", i % 2) for i in range(8)), (2, 3, 4, 5),
        tuple(("skip_connect", i % 2) for i in range(8)), (2, 3, 4, 5),
    )  # fmt: skip
    stats = indicators.figure1_stats(
        {"normal": s3, "reduce": s3}, genotype, ops
    )
    assert stats == {
        "none_weight_avg": pytest.approx(7.5 / 14, abs=1e-15),
        "skip_share": 0.0,
        "parametric_ops_normal": 8.0,
    }
    with pytest.raises(ValueError, match="one column per operator"):
        indicators.figure1_stats({"normal": s3[:, :2]}, genotype, ops)


def test_figure1_stats_per_cell():
    # 4 cells: reductions at 1 and 2, normal cells 0 and 3; no `none`.
    cell0 = [("skip_connect", 0)] * 6 + [("sep_conv_3x3", 1)] * 2
    cell3 = [("skip_connect", 0)] * 4 + [("sep_conv_3x3", 0)] * 4
    red = [("sep_conv_3x3", 0)] * 8
    cells = tuple(
        gt.CellGenotype(tuple(e), (2, 3, 4, 5), r)
        for e, r in [(cell0, False), (red, True), (red, True), (cell3, False)]
    )
    genotype = gt.Genotype(cells=cells)
    weights = {f"cell_{i}": np.full((8, 2), 0.5) for i in range(4)}
    stats = indicators.figure1_stats(weights, genotype, S2_OPS)
    assert stats == {"skip_share": 0.625, "parametric_ops_normal": 3.0}


# --------------------------------------------------------------------------
# SearchArtifacts.


def run_epochs(callback, epochs, net=None, seed=0):
    for epoch in epochs:
        if net is not None:
            set_alpha(net, "normal", seed + epoch)
        callback.on_epoch_end(epoch, fake_logs(epoch))


def test_artifacts_two_epochs(network, tmp_path):
    cb = callbacks.SearchArtifacts(network, tmp_path)
    alphas = []
    for epoch in range(2):
        alphas.append(set_alpha(network, "normal", epoch))
        cb.on_epoch_end(epoch, fake_logs(epoch))
    cb.close()

    for n in (1, 2):
        prefix = tmp_path / "genotypes" / f"epoch_{n:03d}"
        geno = gt.load(f"{prefix}.json")
        assert geno.metadata == {"epoch": n}
        for cell in ("normal", "reduce"):
            read_png(f"{prefix}_{cell}.png")
    latest = gt.load(tmp_path / "genotype.json")
    assert latest == network.genotype(metadata={"epoch": 2})
    for cell in ("normal", "reduce"):
        assert read_png(tmp_path / f"genotype_{cell}.png") == read_png(
            tmp_path / "genotypes" / f"epoch_002_{cell}.png"
        )
    assert not glob.glob(str(tmp_path / "**" / "*.tmp"), recursive=True)

    with np.load(tmp_path / "arch_history.npz") as data:
        assert sorted(data.files) == ["epoch", "normal", "reduce"]
        np.testing.assert_array_equal(data["epoch"], [1, 2])
        assert data["normal"].shape == (2, 14, 8)
        assert data["reduce"].shape == (2, 14, 8)
        for n in range(2):
            np.testing.assert_allclose(
                data["normal"][n], softmax(alphas[n]), rtol=1e-5
            )

    with open(tmp_path / "metrics.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    for epoch, row in enumerate(rows):
        for name, value in fake_logs(epoch).items():
            assert float(row[name]) == float(value)
        for name in indicators.FIGURE1_KEYS:
            assert name in row and np.isfinite(float(row[name]))
    stats = indicators.figure1_stats(
        network.arch_weights(), network.genotype(), network.operators
    )
    for name, value in stats.items():
        assert float(rows[1][name]) == value


def test_tensorboard_summaries(network, tmp_path):
    cb = callbacks.SearchArtifacts(network, tmp_path)
    run_epochs(cb, range(2), network)
    cb.close()
    acc = accumulator(tmp_path / "tensorboard" / "search")
    tags = set(acc.Tags()["tensors"])
    expected = set(LOG_NAMES) | {
        f"figure1/{k}" for k in indicators.FIGURE1_KEYS
    }
    expected |= {
        "arch/normal",
        "arch/reduce",
        "arch_hist/normal",
        "arch_hist/reduce",
        "genotype",
    }
    assert expected <= tags, expected - tags
    for epoch in range(2):
        for name, value in fake_logs(epoch).items():
            step, got = tensor_values(acc, name)[epoch]
            assert step == epoch + 1 and got == value
    steps = [s for s, _ in tensor_values(acc, "figure1/skip_share")]
    assert steps == [1, 2]
    stats = indicators.figure1_stats(
        network.arch_weights(), network.genotype(), network.operators
    )
    got = tensor_values(acc, "figure1/none_weight_avg")[-1][1]
    assert got == pytest.approx(stats["none_weight_avg"], rel=1e-6)
    # Images: [width, height, png bytes...].
    _, image = tensor_values(acc, "arch/normal")[-1]
    assert image[2].startswith(PNG_SIGNATURE)
    assert tf.image.decode_png(image[2]).shape[:2] == (
        int(image[1]),
        int(image[0]),
    )
    _, text = tensor_values(acc, "genotype")[-1]
    text = text.item().decode() if text.ndim == 0 else text[0].decode()
    for line in visualize.genotype_to_text(network.genotype()).splitlines():
        assert line in text
    assert len(tensor_values(acc, "arch_hist/reduce")) == 2


def test_resume_truncates(network, tmp_path):
    cb = callbacks.SearchArtifacts(network, tmp_path)
    run_epochs(cb, range(2), network)
    cb.close()

    # Resumed from the checkpoint of epoch 1: rows of epoch 2 dropped.
    cb = callbacks.SearchArtifacts(network, tmp_path, initial_epoch=1)
    with np.load(tmp_path / "arch_history.npz") as data:
        np.testing.assert_array_equal(data["epoch"], [1])
        assert data["normal"].shape == (1, 14, 8)
    with open(tmp_path / "metrics.csv", newline="") as handle:
        assert [r["epoch"] for r in csv.DictReader(handle)] == ["1"]
    cb.on_epoch_end(1, {"loss": 9.0})
    cb.close()
    with np.load(tmp_path / "arch_history.npz") as data:
        np.testing.assert_array_equal(data["epoch"], [1, 2])
        assert data["normal"].shape == (2, 14, 8)
    with open(tmp_path / "metrics.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["epoch"] for r in rows] == ["1", "2"]
    assert float(rows[1]["loss"]) == 9.0

    # Through fit's hooks: the first epoch begun sets the resume point.
    cb = callbacks.SearchArtifacts(network, tmp_path)
    cb.on_train_begin()
    cb.on_epoch_begin(0)
    assert not os.path.exists(tmp_path / "arch_history.npz")
    cb.on_epoch_end(0, {"loss": 7.0})
    cb.on_epoch_end(0, {"loss": 8.0})  # Redone: replaced, not duplicated.
    cb.on_train_end()
    with np.load(tmp_path / "arch_history.npz") as data:
        np.testing.assert_array_equal(data["epoch"], [1])
    with open(tmp_path / "metrics.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [(r["epoch"], r["loss"]) for r in rows] == [("1", "8.0")]

    # TensorBoard (its plugin accumulator) keeps the rerun's values only.
    acc = pea.EventAccumulator(
        str(tmp_path / "tensorboard" / "search"), size_guidance={"tensors": 0}
    )
    acc.Reload()
    loss = [
        (e.step, float(tf.make_ndarray(e.tensor_proto)))
        for e in acc.Tensors("loss")
    ]
    assert loss == [(1, 7.0), (1, 8.0)]


def test_history_from_another_search(network, tmp_path):
    np.savez(tmp_path / "arch_history.npz", epoch=[1], normal=np.ones((1, 3)))
    cb = callbacks.SearchArtifacts(network, tmp_path, tensorboard=False)
    cb.on_train_begin()
    with pytest.raises(ValueError, match="another search"):
        cb.on_epoch_begin(1)  # Resuming after epoch 1 would mix searches.
    cb.on_train_begin()
    cb.on_epoch_begin(0)  # Starting afresh drops the old rows.
    assert not os.path.exists(tmp_path / "arch_history.npz")


def test_per_cell_searched_layout(per_cell_network, tmp_path):
    net = per_cell_network
    cb = callbacks.SearchArtifacts(net, tmp_path)
    cb.on_epoch_end(0, fake_logs(0))
    cb.close()
    for i in range(3):
        read_png(tmp_path / "genotypes" / f"epoch_001_cell{i:02d}.png")
        read_png(tmp_path / f"genotype_cell{i:02d}.png")
    assert gt.load(tmp_path / "genotype.json", S2_OPS).is_per_cell
    keys = ["cell_0", "cell_1", "cell_2"]
    with np.load(tmp_path / "arch_history.npz") as data:
        assert sorted(data.files) == sorted(
            ["epoch"] + keys + [f"beta_{k}" for k in keys]
        )
        assert data["cell_0"].shape == (1, 14, 2)
        assert data["beta_cell_0"].shape == (1, search_space.num_pairs(4))
    with open(tmp_path / "metrics.csv", newline="") as handle:
        row = next(csv.DictReader(handle))
    assert "none_weight_avg" not in row  # No `none` operator in S2.
    assert (
        float(row["parametric_ops_normal"]) + 8 * float(row["skip_share"])
        == 8.0
    )
    acc = accumulator(tmp_path / "tensorboard" / "search")
    tags = set(acc.Tags()["tensors"])
    for key in keys:
        assert {f"arch/{key}", f"arch/beta_{key}"} <= tags
    assert "figure1/none_weight_avg" not in tags


# --------------------------------------------------------------------------
# NonFiniteGuard.


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize(
    "metric", ["loss", "val_loss", "g1_norm", "g2_norm", "arch_grad_norm"]
)
def test_guard_raises(metric, bad, tmp_path):
    guard = callbacks.NonFiniteGuard(model_dir=tmp_path)
    guard.on_epoch_begin(4)
    logs = {name: 1.0 for name in LOG_NAMES}
    guard.on_train_batch_end(6, logs)  # Finite: passes.
    logs[metric] = tf.constant(bad, tf.float32)
    with pytest.raises(callbacks.NonFiniteError) as info:
        guard.on_train_batch_end(6, logs)
    message = str(info.value)
    assert f"{metric}=" in message
    assert "epoch 5" in message and "step 7" in message
    assert str(tmp_path) in message and "--eta" in message
    assert isinstance(info.value, RuntimeError)


def test_guard_passes_finite_and_monitor():
    guard = callbacks.NonFiniteGuard(monitor=["loss"])
    guard.on_epoch_begin(0)
    guard.on_train_batch_end(0, {"loss": np.float32(2.0), "other": np.nan})
    guard.on_train_batch_end(1, None)
    guard.on_epoch_end(0, {"loss": 1.0})
    with pytest.raises(callbacks.NonFiniteError, match="end of the epoch"):
        guard.on_epoch_end(0, {"loss": float("nan")})


def test_guard_stops_fit(tmp_path):
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile(optimizer="sgd", loss="mse")
    x = np.ones((8, 2), "float32")
    x[4:] = np.nan
    y = np.zeros((8, 1), "float32")
    guard = callbacks.NonFiniteGuard(model_dir=tmp_path)
    with pytest.raises(callbacks.NonFiniteError, match="loss=nan"):
        model.fit(x, y, batch_size=4, epochs=2, verbose=0, callbacks=[guard])
