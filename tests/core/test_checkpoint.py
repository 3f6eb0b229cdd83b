"""Checkpoints: positions, retention, damaged files, failing saves."""

import errno
import io
import os

import h5py
import numpy as np
import pytest

from tests.helpers import tiny_batches, tiny_classifier
from tf_amended_darts.core import checkpoint
from tf_amended_darts.core.checkpoint import Checkpointer, Position


def _values(model):
    return [np.array(v.numpy()) for v in model.variables] + [
        np.array(v.numpy()) for v in model.optimizer.variables
    ]


def _assert_same(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)


def _train(model, epoch=0, steps=2):
    model.fit(tiny_batches(epoch), steps_per_epoch=steps, verbose=0)


def test_names_round_trip_and_order():
    positions = [Position(0, 3), Position(1, 0), Position(1, 7),
                 Position(2, 0), Position(12, 123)]
    names = [checkpoint.file_name(p) for p in positions]
    assert names[:3] == ["ckpt-0001-step-000003.weights.h5",
                         "ckpt-0001.weights.h5",
                         "ckpt-0002-step-000007.weights.h5"]
    assert [checkpoint.parse_name(n) for n in names] == positions
    assert sorted(positions) == positions
    assert checkpoint.parse_name("ckpt-0001.weights.h5.damaged") is None
    assert checkpoint.parse_name(".tmp-ckpt-0001.weights.h5") is None
    assert Position(1, 7).describe() == "epoch 2, step 7"
    assert Position(2, 0).describe() == "the end of epoch 2"


def test_save_restore_weights_optimizer_metrics_and_position(tmp_path):
    model = tiny_classifier()
    _train(model)
    saved = _values(model)
    metrics = [[v.numpy() for v in m.variables] for m in model.metrics]
    Checkpointer(model, tmp_path).save(Position(1, 2))

    fresh = tiny_classifier(seed=1)
    assert fresh.optimizer.iterations.numpy() == 0
    ckpt = Checkpointer(fresh, tmp_path)
    assert ckpt.restore() == Position(1, 2)
    _assert_same(_values(fresh), saved)
    assert fresh.optimizer.iterations.numpy() == 2  # the schedule position
    fresh.reset_metrics()
    ckpt.restore_metrics()
    for metric, values in zip(fresh.metrics, metrics, strict=True):
        _assert_same([v.numpy() for v in metric.variables], values)
        assert float(metric.result()) != 0.0


def test_keeps_the_newest_epoch_and_step_checkpoints(tmp_path):
    model = tiny_classifier()
    ckpt = Checkpointer(model, tmp_path, keep=2)
    for position in [(0, 2), (0, 4), (1, 0), (1, 3), (1, 6), (1, 9)]:
        ckpt.save(position)
    assert ckpt.positions() == [(1, 0), (1, 6), (1, 9)]
    for position in [(2, 0), (3, 0)]:
        ckpt.save(position)
    # An epoch checkpoint makes the older step checkpoints obsolete.
    assert ckpt.positions() == [(2, 0), (3, 0)]
    assert sorted(os.listdir(tmp_path)) == [
        "ckpt-0002.weights.h5", "ckpt-0003.weights.h5"]


def test_truncated_newest_is_set_aside_and_the_previous_restored(tmp_path):
    model = tiny_classifier()
    _train(model)
    ckpt = Checkpointer(model, tmp_path)
    ckpt.save((1, 0))
    older = _values(model)
    _train(model, epoch=1)
    newest = ckpt.save((1, 2))
    size = os.path.getsize(newest)
    os.truncate(newest, size // 2)  # a full disk, a copy cut short

    log = io.StringIO()
    fresh = tiny_classifier(seed=1)
    restored = Checkpointer(fresh, tmp_path, log=log).restore()
    assert restored == Position(1, 0)
    _assert_same(_values(fresh), older)
    lines = log.getvalue().splitlines()
    assert len(lines) == 1 and lines[0].startswith("warning: checkpoint ")
    assert newest in lines[0] and ".damaged" in lines[0]
    assert "truncated" in lines[0]
    # Renamed, not deleted: its bytes are still there.
    assert os.path.getsize(newest + ".damaged") == size // 2
    assert not os.path.exists(newest)


def test_a_flipped_value_fails_the_digest(tmp_path):
    model = tiny_classifier()
    ckpt = Checkpointer(model, tmp_path)
    ckpt.save((1, 0))
    path = ckpt.save((2, 0))
    assert checkpoint.verify(path) is None
    with h5py.File(path, "r+") as handle:
        name, dataset = checkpoint._datasets(handle)[0]
        value = np.array(dataset[()])
        dataset[...] = value + 1  # a silent corruption: readable, wrong
    assert "digest" in checkpoint.verify(path)
    log = io.StringIO()
    assert Checkpointer(model, tmp_path, log=log).restore() == (1, 0)
    assert "digest" in log.getvalue()
    assert os.path.exists(path + ".damaged")


def test_nothing_readable_keeps_the_initial_values(tmp_path):
    model = tiny_classifier()
    ckpt = Checkpointer(model, tmp_path)
    for position in [(1, 0), (2, 0)]:
        path = ckpt.save(position)
        with open(path, "r+b") as f:
            f.write(b"not an HDF5 file")
    fresh = tiny_classifier(seed=1)
    initial = _values(fresh)
    log = io.StringIO()
    assert Checkpointer(fresh, tmp_path, log=log).restore() == (0, 0)
    _assert_same(_values(fresh), initial)
    assert len(log.getvalue().splitlines()) == 2
    assert sorted(os.listdir(tmp_path)) == [
        "ckpt-0001.weights.h5.damaged", "ckpt-0002.weights.h5.damaged"]


def test_a_readable_checkpoint_of_another_model_is_an_error(tmp_path):
    Checkpointer(tiny_classifier(), tmp_path).save((1, 0))
    other = tiny_classifier(features=5)
    with pytest.raises(checkpoint.CheckpointMismatchError,
                       match="another configuration"):
        Checkpointer(other, tmp_path).restore()
    # Not damage: the file keeps its name.
    assert os.listdir(tmp_path) == ["ckpt-0001.weights.h5"]


def test_read_only_restore_renames_nothing(tmp_path):
    model = tiny_classifier()
    ckpt = Checkpointer(model, tmp_path)
    ckpt.save((1, 0))
    path = ckpt.save((2, 0))
    os.truncate(path, 100)
    reader = Checkpointer(model, tmp_path, read_only=True, log=io.StringIO())
    assert reader.restore() == (1, 0)
    assert os.path.exists(path)
    with pytest.raises(RuntimeError):
        reader.save((3, 0))


def test_a_failing_save_leaves_the_previous_checkpoint_intact(
        tmp_path, monkeypatch):
    model = tiny_classifier()
    ckpt = Checkpointer(model, tmp_path)
    previous = ckpt.save((1, 0))
    with open(previous, "rb") as f:
        before = f.read()

    def disk_full(model, path):
        with open(path, "wb") as f:
            f.write(b"\x89HDF partial")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)

    monkeypatch.setattr(checkpoint, "_write_weights", disk_full)
    _train(model)
    with pytest.raises(checkpoint.CheckpointSaveError) as info:
        ckpt.save((1, 2))
    message = str(info.value)
    assert "\n" not in message
    assert "disk is full" in message and previous in message
    assert "intact" in message
    assert os.listdir(tmp_path) == ["ckpt-0001.weights.h5"]  # no temp file
    with open(previous, "rb") as f:
        assert f.read() == before
    monkeypatch.undo()
    assert Checkpointer(tiny_classifier(seed=1), tmp_path).restore() == (1, 0)


def test_interrupted_save_is_cleared_on_start(tmp_path):
    (tmp_path / ".tmp-ckpt-0003.weights.h5").write_bytes(b"half")
    Checkpointer(tiny_classifier(), tmp_path)
    assert os.listdir(tmp_path) == []
