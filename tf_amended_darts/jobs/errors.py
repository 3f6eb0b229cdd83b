"""One-line errors and exit statuses for every launcher.

`run(main)` replaces ``absl.app.run(main)``. An error the project raises
on purpose (flag validation, data not found, genotype files, non-finite
values, a run directory of another configuration, GPU count, a failed
checkpoint save) prints ``error: <message>`` on stderr, one line, without
a traceback; ``--verbose_errors`` (or the environment variable
`VERBOSE_ENV` set to 1) prints the traceback too. Exit statuses:

* 0: done;
* 1 (`EXIT_FAILURE`): an error found while running (data not found,
  non-finite values, a checkpoint that cannot be written, ...);
* 2 (`EXIT_USAGE`): a usage error: a flag that does not parse, a missing
  required flag, an invalid flag value (found while the launcher builds
  its config, inside `usage`, or later with a message ``Invalid
  --flag=...``; `UsageError`, ``absl.app.UsageError``), a ``--model_dir``
  of another configuration (`run_dir.ConfigMismatchError`);
* 75 (`preemption.EXIT_PREEMPTED`): stopped by SIGTERM / SIGINT after
  writing a checkpoint; rerun the same command to resume;
* 130: a second Ctrl-C (interrupted without a checkpoint).

"On purpose" means raised by the project's own code (its innermost frame
is in this package or in ``launchers/``): an exception raised inside
TensorFlow, Keras or another library is a bug to report, and keeps its
traceback.
"""

import contextlib
import os
import sys
import traceback

from absl import app, flags

from tf_amended_darts.jobs import preemption

EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT, the shell's convention
VERBOSE_ENV = "TF_AMENDED_DARTS_VERBOSE_ERRORS"
VERBOSE_FLAG = "verbose_errors"
# Where the project's code lives: the package and the launchers beside it.
_PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_OWN_DIRS = (
    _PACKAGE_DIR + os.sep,
    os.path.join(os.path.dirname(_PACKAGE_DIR), "launchers") + os.sep,
)
USAGE_PREFIX = "Invalid --"  # the project's flag-validation messages


class UsageError(ValueError):
    """A command line the project rejects (exit status 2)."""


def fail(flag, accepted, value):
    """Raises the ValueError of an invalid ``--flag=value``.

    The message names the flag, the value and the accepted values (the
    launchers' configs raise it; inside `usage` it becomes a `UsageError`).
    """
    raise ValueError(
        f"Invalid --{flag}={value!r}. Accepted values: {accepted}."
    )


@contextlib.contextmanager
def usage():
    """Within it, a ValueError the project raises is a `UsageError`.

    Launchers build their config from the flags in it: every check of a
    flag value is a usage error (exit status 2), whatever its wording.
    """
    try:
        yield
    except UsageError:
        raise
    except ValueError as error:
        if not own_error(error):
            raise
        raise UsageError(str(error)) from error


def define_flags(fv=flags.FLAGS):
    """Defines ``--verbose_errors`` on ``fv`` (once)."""
    if VERBOSE_FLAG not in fv:
        flags.DEFINE_bool(
            VERBOSE_FLAG,
            False,
            "Print the Python traceback of an error, not only its one-line "
            f"message (or set {VERBOSE_ENV}=1).",
            flag_values=fv,
        )


def own_error(error):
    """Whether ``error`` was raised by the project's code.

    TensorFlow's op errors never are (TensorFlow filters its own frames
    out of their tracebacks, so the innermost frame left can be ours).
    """
    tf = sys.modules.get("tensorflow")  # not imported: not a TF error
    if tf is not None and isinstance(error, tf.errors.OpError):
        return False
    tb = error.__traceback__
    if tb is None:
        return False
    while tb.tb_next is not None:
        tb = tb.tb_next
    path = os.path.abspath(tb.tb_frame.f_code.co_filename)
    main = os.path.abspath(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    return path.startswith(_OWN_DIRS) or path == main


def is_usage_error(error):
    """Whether ``error`` is a usage error (exit status 2)."""
    if isinstance(error, (UsageError, app.UsageError, flags.Error)):
        return True
    return isinstance(error, ValueError) and str(error).startswith(
        USAGE_PREFIX
    )


def one_line(error):
    """``error``'s message on one line."""
    text = " ".join(str(error).split())
    return text or type(error).__name__


def exit_status(error):
    """The exit status for ``error`` (see the module docstring)."""
    if isinstance(error, preemption.Preempted):
        return preemption.EXIT_PREEMPTED
    if isinstance(error, KeyboardInterrupt):
        return EXIT_INTERRUPTED
    return EXIT_USAGE if is_usage_error(error) else EXIT_FAILURE


def verbose(fv=flags.FLAGS):
    """Whether tracebacks are wanted (flag or environment)."""
    if os.environ.get(VERBOSE_ENV, "").strip().lower() in ("1", "true"):
        return True
    try:
        return bool(fv[VERBOSE_FLAG].value) if VERBOSE_FLAG in fv else False
    except flags.Error:
        return False


def handled(error):
    """Whether `report` prints ``error`` as one line (else it is a bug)."""
    return isinstance(
        error,
        (preemption.Preempted, KeyboardInterrupt, app.UsageError, flags.Error),
    ) or (isinstance(error, Exception) and own_error(error))


def report(error, fv=flags.FLAGS, stream=None):
    """Prints ``error`` as the launchers do; returns the exit status.

    Args:
        error: the exception caught (`handled` must be true).
        fv: the flags (for ``--verbose_errors``).
        stream: default ``sys.stderr``.
    """
    stream = stream or sys.stderr
    if verbose(fv):
        traceback.print_exception(error, file=stream)
    if isinstance(error, preemption.Preempted):
        print(one_line(error), file=stream, flush=True)
    elif isinstance(error, KeyboardInterrupt):
        print(
            "error: interrupted by a second Ctrl-C; the work since the "
            "last checkpoint is lost.",
            file=stream,
            flush=True,
        )
    else:
        print(f"error: {one_line(error)}", file=stream, flush=True)
    return exit_status(error)


def guard(main, fv=flags.FLAGS):
    """``main`` wrapped: project errors become one line and an exit status.

    Returns:
        ``wrapped(argv)``: calls ``main(argv)``; returns None on success
        (``absl.app.run`` exits 0), else exits with `exit_status`.
    """

    def wrapped(argv):
        try:
            main(argv)
        except (Exception, KeyboardInterrupt) as error:  # noqa: BLE001
            if not handled(error):
                raise
            sys.exit(report(error, fv))

    return wrapped


def _parse_flags(argv, fv=flags.FLAGS):
    try:
        return fv(argv)
    except flags.Error as error:
        print(f"error: {one_line(error)}", file=sys.stderr, flush=True)
        sys.exit(EXIT_USAGE)


def run(main, fv=flags.FLAGS):
    """``absl.app.run(main)`` with one-line errors and exit statuses.

    Defines ``--verbose_errors``; flag-parsing errors (a value that does
    not parse, a missing required flag) exit 2 with one line too.

    Args:
        main: ``main(argv)``; its return value is ignored.
        fv: the flags ``main`` reads.
    """
    define_flags(fv)
    app.run(guard(main, fv), flags_parser=lambda argv: _parse_flags(argv, fv))
