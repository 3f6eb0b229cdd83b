"""SIGTERM / SIGINT in a training loop: a step checkpoint, then resume.

The quick in-process test of the default suite; the launchers' kill -9 /
SIGTERM tests on the search and re-training are in test_resume.py (slow).
"""

import os
import signal
import threading
import time

import keras
import numpy as np
import pytest

from tests.helpers import tiny_batches, tiny_classifier
from tf_amended_darts.core.checkpoint import Position
from tf_amended_darts.jobs import preemption, resume

STEPS = 5


class _SignalAt(keras.callbacks.Callback):
    """Sends ``signum`` to this process after step ``step`` of ``epoch``."""

    def __init__(self, epoch, step, signum=signal.SIGTERM):
        super().__init__()
        self.at, self.signum, self.epoch = (epoch, step - 1), signum, 0

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        if (self.epoch, batch) == self.at:
            os.kill(os.getpid(), self.signum)


def _train(directory, epochs=3, signal_at=None, every_steps=0):
    """The loop of the search and re-training, on a tiny model."""
    model = tiny_classifier()
    run = resume.Resumable(model, directory, steps_per_epoch=STEPS,
                           every_steps=every_steps)
    logs = {}
    extra = [_SignalAt(*signal_at)] if signal_at else []
    for epoch in range(run.position.epoch, epochs):
        data, steps = run.epoch_data(epoch, tiny_batches(epoch, STEPS))
        history = model.fit(data, steps_per_epoch=steps, initial_epoch=epoch,
                            epochs=epoch + 1, verbose=0,
                            callbacks=extra + run.callbacks())
        logs[epoch] = {k: v[-1] for k, v in history.history.items()}
        run.end_epoch(epoch + 1)
    return model, logs


def _assert_same_weights(a, b):
    for x, y in zip(a.variables + a.optimizer.variables,
                    b.variables + b.optimizer.variables, strict=True):
        np.testing.assert_array_equal(x.numpy(), y.numpy())


@pytest.mark.parametrize(
    "step", [2, pytest.param(STEPS, marks=pytest.mark.slow)])
def test_sigterm_writes_a_step_checkpoint_and_resume_is_exact(tmp_path,
                                                              step):
    straight, straight_logs = _train(tmp_path / "straight")
    d = tmp_path / "stopped"
    with preemption.watch():
        with pytest.raises(preemption.Preempted) as info:
            _train(d, signal_at=(1, step))
    message = str(info.value)
    if step < STEPS:
        position = Position(1, step)
        assert message.startswith(f"stopped by SIGTERM at epoch 2, step "
                                  f"{step}: checkpoint ")
    else:  # after the last step: the epoch's end
        position = Position(2, 0)
        assert "the end of epoch 2" in message
    assert "rerun the same command to resume (exit status 75)" in message
    names = sorted(os.listdir(d))
    assert names[-1] == os.path.basename(message.split("checkpoint ")[1]
                                         .split(" written")[0])
    assert resume.Resumable(tiny_classifier(), d, steps_per_epoch=STEPS
                            ).position == position
    preemption.clear()
    resumed, resumed_logs = _train(d)
    _assert_same_weights(resumed, straight)
    # The resumed epoch's means cover all of its steps, as uninterrupted.
    for epoch, logs in resumed_logs.items():
        assert logs == straight_logs[epoch]


def test_periodic_step_checkpoints_and_signal_handlers(tmp_path):
    before = signal.getsignal(signal.SIGTERM)
    with preemption.watch():
        assert signal.getsignal(signal.SIGTERM) is not before
        _train(tmp_path, epochs=1, every_steps=2)
    assert signal.getsignal(signal.SIGTERM) is before
    # Steps 2 and 4 were written, then made obsolete by the epoch's end.
    assert os.listdir(tmp_path) == ["ckpt-0001.weights.h5"]
    with pytest.raises(ValueError, match="--checkpoint_every_steps=-1"):
        resume.Resumable(tiny_classifier(), tmp_path, steps_per_epoch=STEPS,
                         every_steps=-1)


def test_second_sigint_interrupts_at_once():
    with preemption.watch():
        os.kill(os.getpid(), signal.SIGINT)
        assert preemption.requested() == "SIGINT"
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(1)  # the handler runs between bytecodes
    assert preemption.requested() == "SIGINT"
    preemption.clear()


class _NoCluster:
    cluster_resolver = None


def test_cluster_preemption_saves_at_the_agreed_step_then_stops(tmp_path):
    # The PreemptionCheckpointHandler wiring, in its single-worker mode:
    # its watcher thread polls our flag (about once a second), the step
    # to save at is agreed, then our save_fn and exit_fn run.
    handler = preemption.ClusterPreemption(_NoCluster(), str(tmp_path / "h"))
    saved = []

    def save():
        saved.append(len(saved))
        return "stopped by SIGTERM at epoch 1, step 2: checkpoint written"

    handler.check(save)
    preemption.request(signal.SIGTERM)
    try:
        deadline = time.time() + 10
        with pytest.raises(preemption.Preempted, match="step 2"):
            while time.time() < deadline:
                handler.check(save)
                time.sleep(0.2)
    finally:
        preemption.clear()
    assert saved == [0]
    assert not (tmp_path / "h").exists()
    handler.close()  # its watcher ended with the signal: nothing to stop


def _watchers():
    return [t for t in threading.enumerate()
            if t.name.startswith("WorkerTerminationSignalWatcher")]


def test_cluster_preemption_close_stops_its_watcher(tmp_path):
    # The end of a run without a signal: the watcher thread would poll
    # until the process exits (and a peer watcher would stay blocked).
    before = _watchers()
    handler = preemption.ClusterPreemption(_NoCluster(), str(tmp_path / "h"))
    started = [t for t in _watchers() if t not in before]
    assert len(started) == 1 and started[0].is_alive()
    handler.close()
    assert not started[0].is_alive()


def test_watch_closes_the_cluster_handlers_it_saw(monkeypatch):
    closed = []

    class _Handler:
        def close(self):
            closed.append(1)

    monkeypatch.setitem(preemption._CLUSTER, "strategy", _Handler())
    with preemption.watch():
        pass
    assert closed == [1] and not preemption._CLUSTER


def test_a_non_finite_step_writes_no_checkpoint(tmp_path):
    run = resume.Resumable(tiny_classifier(), tmp_path, steps_per_epoch=STEPS,
                           every_steps=1)
    run.begin_epoch(0)
    run.after_step({"loss": float("nan"), "accuracy": 0.5})
    assert os.listdir(tmp_path) == []
    run.after_step({"loss": np.float32(1.5)})
    assert os.listdir(tmp_path) == ["ckpt-0001-step-000002.weights.h5"]


def test_reclaim_takes_the_signals_back_inside_watch():
    with preemption.watch():
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # as TF's C++ does
        preemption.reclaim()
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.1)
        assert preemption.requested() == "SIGTERM"
    preemption.clear()
    before = signal.getsignal(signal.SIGTERM)
    preemption.reclaim()  # outside watch: nothing changes
    assert signal.getsignal(signal.SIGTERM) is before
