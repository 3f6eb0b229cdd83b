"""Checks, without importing TensorFlow, that exactly one TensorFlow wheel
is installed (setup.py explains the ``cpu`` / ``gpu`` extras).

``tensorflow-cpu`` and ``tensorflow`` install the same ``tensorflow``
module; with both, whichever was installed last wins file by file, and a
GPU install can silently run the CPU build.
"""

import importlib.metadata
import importlib.util
import warnings

# The wheels that provide the `tensorflow` module.
TENSORFLOW_DISTRIBUTIONS = ("tensorflow", "tensorflow-cpu")
INSTALL_HINT = (
    'pip install -e ".[cpu]" (CPU build) or pip install -e ".[gpu]" '
    "(CUDA build)"
)


def installed_tensorflow(version=importlib.metadata.version):
    """``{distribution: version}`` of the TensorFlow wheels installed."""
    found = {}
    for name in TENSORFLOW_DISTRIBUTIONS:
        try:
            found[name] = version(name)
        except importlib.metadata.PackageNotFoundError:
            pass
    return found


def check(
    version=importlib.metadata.version, find_spec=importlib.util.find_spec
):
    """Raises ImportError without TensorFlow; warns when both wheels are
    installed.

    Args:
        version: `importlib.metadata.version` (a stand-in in tests).
        find_spec: `importlib.util.find_spec` (likewise).
    """
    found = installed_tensorflow(version)
    if not found:
        if find_spec("tensorflow") is not None:
            return  # built from source, tf-nightly, ...: not ours to judge
        raise ImportError(
            "TensorFlow is not installed. Install the project with one "
            f"build: {INSTALL_HINT}."
        )
    if len(found) > 1:
        warnings.warn(
            f"Both TensorFlow wheels are installed ({found}); they share "
            "one module, so the CPU build may run on a GPU machine. Keep "
            "one: pip uninstall -y tensorflow tensorflow-cpu, then "
            f"{INSTALL_HINT}.",
            stacklevel=2,
        )
