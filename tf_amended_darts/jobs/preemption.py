"""SIGTERM and SIGINT: finish the step, write a checkpoint, exit 75.

A cluster or a preemptible VM sends SIGTERM first (and SIGKILL some
seconds later); Ctrl-C sends SIGINT. Inside `watch` (the search and
re-training launchers run in it) either signal only raises a flag: the
current step finishes, the training loop writes a step checkpoint
(`resume.StepCheckpoint`), and `Preempted` ends the run; the launchers
print its one-line message (where it stopped, the checkpoint, that
rerunning the same command resumes) and exit with `EXIT_PREEMPTED`. A
second SIGINT while the first is being handled interrupts at once
(``KeyboardInterrupt``), for a user who does not want to wait for the
step to end.

Distribution. One process (``--strategy=default`` or ``mirrored``, any
number of replicas): the flag is read after every step of Keras' ``fit``
in the main thread; nothing needs agreeing on. Several workers
(``--strategy=multi_worker``): the signal usually reaches one worker only,
and every worker must stop after the same step or the others would wait
forever in the next collective operation. This is what
`tf.distribute.experimental.PreemptionCheckpointHandler` is for, and
`ClusterPreemption` uses it: its watcher polls this module's flag
(``termination_watcher_fn``), it agrees on the step through the
coordination service, then calls our ``save_fn`` (the chief writes the
step checkpoint; it does not use its own ``tf.train.Checkpoint``
format) and our ``exit_fn`` (raising `Preempted`), on every worker. Its
watcher polls once a second, so a worker may run a second's worth of
steps before the agreed stop. TensorFlow's coordination service installs
a C++ SIGTERM handler of its own when the strategy starts, which would
swallow the signal: `reclaim` takes it back. Where it does not fit:
under ``fit`` in one process it would add nothing but a one-step delay and
a probe of the GCE metadata server at start, and on a GCE VM without
GPUs it ignores signals altogether (its GCE_CPU platform is unsupported),
so one process reads the flag directly.
"""

import contextlib
import signal
import threading

# sysexits.h EX_TEMPFAIL: "temporary failure, the user is invited to
# retry"; distinct from 143 (killed by SIGTERM before anything was saved)
# and from 1 / 2 (errors).
EXIT_PREEMPTED = 75
SIGNALS = (signal.SIGTERM, signal.SIGINT)

_state = {"signal": None, "installed": False}
_lock = threading.Lock()
# One PreemptionCheckpointHandler per strategy and process: its
# coordination-service keys are global to the cluster.
_CLUSTER = {}


class Preempted(Exception):
    """The run stopped on a signal after writing a checkpoint.

    Args:
        message: one line: the signal, where the run stopped, the
            checkpoint, and that rerunning the same command resumes.
    """

    exit_code = EXIT_PREEMPTED


def requested():
    """The name of the signal received (``"SIGTERM"``), or None."""
    return _state["signal"]


def request(signum=signal.SIGTERM):
    """Raises the flag as the signal ``signum`` would (tests, hooks)."""
    with _lock:
        if _state["signal"] is None:
            _state["signal"] = signal.Signals(signum).name


def clear():
    """Lowers the flag."""
    with _lock:
        _state["signal"] = None


def _handler(signum, frame):
    del frame
    if signum == signal.SIGINT and _state["signal"] is not None:
        # Second Ctrl-C: do not wait for the step.
        signal.signal(signal.SIGINT, signal.default_int_handler)
        raise KeyboardInterrupt
    request(signum)


@contextlib.contextmanager
def watch():
    """Within it, SIGTERM and SIGINT raise the flag instead of stopping.

    The previous handlers come back on exit. Outside the main thread
    (where Python cannot install handlers) it does nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.getsignal(s) for s in SIGNALS}
    clear()
    for s in SIGNALS:
        signal.signal(s, _handler)
    _state["installed"] = True
    try:
        yield
    finally:
        close_cluster_handlers()
        _state["installed"] = False
        for s, handler in previous.items():
            signal.signal(s, handler)


def reclaim():
    """Installs this module's handlers again, if `watch` is active.

    TensorFlow's coordination service (started with a multi-worker
    strategy) installs a SIGTERM handler of its own in C++
    (``SigtermNotifier``), which replaces ours and swallows the signal;
    the training loop calls this once the strategy exists
    (`resume.Resumable`).
    """
    if not _state["installed"]:
        return
    if threading.current_thread() is not threading.main_thread():
        return
    for s in SIGNALS:
        signal.signal(s, _handler)


def stop_message(position, checkpoint_path):
    """The one line `Preempted` carries."""
    name = requested() or "a signal"
    saved = (
        f"checkpoint {checkpoint_path} written"
        if checkpoint_path
        else "the chief worker wrote the checkpoint"
    )
    return (
        f"stopped by {name} at {position.describe()}: {saved}; rerun the "
        f"same command to resume (exit status {EXIT_PREEMPTED})."
    )


class LocalPreemption:
    """One process: a raised flag means stop after this step."""

    def should_stop(self):
        return requested() is not None

    def check(self, save):
        """Calls ``save()`` and raises `Preempted` if the flag is raised.

        Args:
            save: ``() -> message`` writing the checkpoint of the current
                position.
        """
        if self.should_stop():
            raise Preempted(save())


class ClusterPreemption:
    """Several workers: `PreemptionCheckpointHandler` picks the step.

    `check` must be called after every training step on every worker
    (the handler counts the calls to agree on a step).

    The handler polls this module's flag once a second
    (``failure_handling.py``, ``_poll_termination_signal``).

    Args:
        strategy: the `tf.distribute.MultiWorkerMirroredStrategy`.
        directory: a path the handler's own checkpoint manager may read
            (it never writes there: ``save_fn`` replaces its saving).
    """

    def __init__(self, strategy, directory):
        import tensorflow as tf  # pylint: disable=C0415 (light module)

        self._save = None
        self._message = None
        config = tf.distribute.experimental.TerminationConfig(
            termination_watcher_fn=lambda: requested() is not None,
            exit_fn=self._exit,
            grace_period=0,
            save_fn=self._save_fn,
        )
        # The handler restores a run counter through this manager; with a
        # save_fn it never writes, and the directory is never created.
        manager = tf.train.CheckpointManager(
            tf.train.Checkpoint(), directory, max_to_keep=1
        )
        self.handler = tf.distribute.experimental.PreemptionCheckpointHandler(
            strategy.cluster_resolver, manager, termination_config=config
        )

    def should_stop(self):
        return False  # the handler decides, in `check`

    def _save_fn(self, *args, **kwargs):
        del args, kwargs
        self._message = self._save()

    def _exit(self):
        raise Preempted(
            self._message
            or f"stopped by a signal to a worker; rerun the same command "
            f"to resume (exit status {EXIT_PREEMPTED})."
        )

    def check(self, save):
        self._save = save
        self.handler.save_checkpoint_if_preempted()

    def close(self):
        """Stops the handler's watcher threads (at the end of a run).

        Otherwise its peer watcher stays blocked on a coordination-service
        key until the process exits, and prints a traceback when the chief
        (which hosts the service) exits first. The first worker to close
        releases every worker's watcher (TensorFlow's own clean-up, which
        `PreemptionCheckpointHandler.__del__` runs too late).
        """
        handler = self.handler
        for name in (
            "_stop_cluster_wise_termination_watcher_thread",
            "_stop_poll_termination_signal_thread",
        ):
            stop = getattr(handler, name, None)
            if stop is None:
                continue
            try:
                stop()
            except Exception:  # noqa: BLE001 (the run is over)
                pass


def cluster_preemption(strategy, directory):
    """The `ClusterPreemption` of ``strategy`` (one per process)."""
    key = id(strategy)
    if key not in _CLUSTER:
        _CLUSTER[key] = ClusterPreemption(strategy, directory)
    return _CLUSTER[key]


def close_cluster_handlers():
    """`ClusterPreemption.close` of every handler made; forgets them."""
    while _CLUSTER:
        _, handler = _CLUSTER.popitem()
        handler.close()
