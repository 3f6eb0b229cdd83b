"""Helpers shared by the test modules (fixtures are in conftest.py)."""

import os

# The repository root (flagfiles and launchers are run from here).
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# The smallest search the launchers run: S3 on 8x8 digits, 3 cells, C = 4.
SEARCH_TINY = (
    "--dataset=digits",
    "--image_size=8",
    "--space=s3",
    "--layers=3",
    "--init_channels=4",
    "--batch_size=8",
    "--epochs=1",
    "--steps_per_epoch=2",
    "--verbose=0",
    "--arch_lr=0.01",
)
# The smallest re-training: DARTS_V2, 3 cells, C = 4, 16x16 digits.
RETRAIN_TINY = (
    "--genotype=DARTS_V2",
    "--dataset=digits",
    "--image_size=16",
    "--layers=3",
    "--init_channels=4",
    "--batch_size=16",
    "--epochs=2",
    "--steps_per_epoch=2",
    "--noauxiliary",
    "--cutout=4",
    "--drop_path_prob=0.2",
    "--verbose=0",
)


def _flag_name(arg):
    name = arg.lstrip("-").split("=")[0]
    return name


def flags_with(base, **values):
    """``base`` (a list of ``--flag[=value]``) with ``values`` set.

    ``True`` gives ``--name``, ``False`` ``--noname``, ``None`` removes the
    flag (its default applies), anything else ``--name=value``. Flags not
    named keep their place; new ones are appended.
    """
    out = []
    for arg in base:
        name = _flag_name(arg)
        if name.startswith("no") and name[2:] in values:
            name = name[2:]  # --noname is the flag `name`
        if name not in values:
            out.append(arg)
    for name, value in values.items():
        if value is None:
            continue
        if value is True:
            out.append(f"--{name}")
        elif value is False:
            out.append(f"--no{name}")
        else:
            out.append(f"--{name}={value}")
    return out


def search_flag_values(args):
    """The search launcher's flags, parsed from ``args``."""
    from absl import flags

    from tf_amended_darts.jobs import search_config

    fv = flags.FlagValues()
    search_config.define_flags(fv)
    fv(["search"] + list(args))
    return fv


def retrain_flag_values(args):
    """The re-training launcher's flags, parsed from ``args``."""
    from absl import flags

    from tf_amended_darts.jobs import retrain_config

    fv = flags.FlagValues()
    retrain_config.define_flags(fv)
    fv(["retrain"] + list(args))
    return fv


def search_config_of(args):
    """The validated search config of ``args``."""
    from tf_amended_darts.jobs import search_config

    return search_config.from_flags(search_flag_values(args))


def run_retrain_launcher(args):
    """``launchers/retrain.py`` with ``args``, in this process."""
    from launchers import retrain as launcher

    return launcher.main(["retrain"], retrain_flag_values(args))


def h5_datasets(path):
    """``{name: array}`` of every dataset in an HDF5 (``.weights.h5``)
    file."""
    import h5py

    out = {}
    with h5py.File(path, "r") as f:
        f.visititems(
            lambda name, obj: (
                out.__setitem__(name, obj[()])
                if isinstance(obj, h5py.Dataset)
                else None
            )
        )
    return out
