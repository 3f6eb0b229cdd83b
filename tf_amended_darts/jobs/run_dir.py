"""A run directory belongs to one configuration.

Before a launcher writes anything in ``--model_dir``, `check` compares the
requested configuration with the directory's ``config.json``. A difference
in anything that changes the model or the data stops the run with one
line (`ConfigMismatchError`, exit status 2) naming each differing flag as
``--flag old -> new`` and the two ways out: the old flags, or a new
``--model_dir``. Flags that may change on resume (``resumable``: logging,
checkpoint cadence, where the data lives, the strategy, ...) and
``upward`` ones (``--epochs``, only upward) are allowed; `record` then
rewrites ``config.json`` and appends them to `CHANGES_FILE`, one line per
resume that changed something.

Caveat: ``--epochs`` upward continues the same run, but the per-epoch
cosine schedule and the drop-path ramp are functions of the epoch count,
so the epochs after the change follow the new schedule (from where the
old one was): the result differs from a run started with the larger
count.
"""

import datetime
import json
import os

from tf_amended_darts.jobs.errors import UsageError
from tf_amended_darts.vision import genotype as G

CONFIG_FILE = "config.json"
FLAGS_FILE = "flags.txt"
CHANGES_FILE = "config_changes.txt"


class ConfigMismatchError(UsageError):
    """``--model_dir`` holds a run of another configuration."""


def _normal(value):
    """``value`` as config.json stores it (tuples become lists)."""
    return json.loads(json.dumps(value))


def _flag_text(value):
    if value is None:
        return "(unset)"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return ",".join(str(v) for v in value) or "(empty)"
    return str(value)


def read_config(model_dir, name=CONFIG_FILE):
    """The dict of ``model_dir/<name>`` (``config.json``), or None if there
    is none.

    Raises:
        ConfigMismatchError: when it exists but cannot be read.
    """
    path = os.path.join(model_dir, name)
    if not os.path.exists(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            values = json.load(f)
    except (OSError, ValueError) as err:
        raise ConfigMismatchError(
            f"--model_dir={model_dir}: its {name} cannot be read "
            f"({' '.join(str(err).split())}). Restore it, or use a new "
            "--model_dir."
        ) from None
    if not isinstance(values, dict):
        raise ConfigMismatchError(
            f"--model_dir={model_dir}: its {name} is not a JSON "
            "object. Restore it, or use a new --model_dir."
        )
    return values


def check(
    model_dir,
    requested,
    *,
    resumable=(),
    upward=(),
    ignore=("model_dir",),
    defaults=None,
    name=CONFIG_FILE,
):
    """Compares ``requested`` with ``model_dir``'s config; writes nothing.

    Args:
        model_dir: the run directory (it may not exist yet).
        requested: the new configuration, a dict of flag name -> value.
        resumable: names that may take any new value on resume.
        upward: names that may only grow on resume (e.g. ``epochs``).
        ignore: names never compared.
        defaults: values of names the old config.json lacks (a field added
            since it was written); a name missing from both is unchanged.
        name: the file holding the old configuration (another file, e.g.
            ``baselines.json``, for flags kept beside ``config.json``).

    Returns:
        The allowed changes, ``[(name, old, new)]`` (empty for a new
        directory).

    Raises:
        ConfigMismatchError: naming every other differing flag, ``old ->
            new``, and the ways out.
    """
    old = read_config(model_dir, name)
    if old is None:
        return []
    new = _normal(requested)
    defaults = _normal(defaults or {})
    allowed, refused = [], []
    for flag in sorted(new):
        if flag in ignore:
            continue
        before = old[flag] if flag in old else defaults.get(flag, new[flag])
        after = new[flag]
        if before == after:
            continue
        change = (flag, before, after)
        if flag in resumable:
            allowed.append(change)
        elif (
            flag in upward
            and isinstance(before, (int, float))
            and isinstance(after, (int, float))
            and after > before
        ):
            allowed.append(change)
        else:
            refused.append(change)
    if refused:
        listed = ", ".join(
            f"--{flag} {_flag_text(a)} -> {_flag_text(b)}"
            + (" (only upward)" if flag in upward else "")
            for flag, a, b in refused
        )
        raise ConfigMismatchError(
            f"--model_dir={model_dir} holds a run of another configuration "
            f"({listed}); nothing was written. Rerun with that run's flags "
            f"(in {os.path.join(model_dir, FLAGS_FILE)}) to resume it, or "
            "pass a new --model_dir to start another run."
        )
    return allowed


def other_genotype(model_dir, path, requested):
    """The error of a run directory whose genotype file ``path`` names
    other cells than ``--genotype=requested``."""
    return ConfigMismatchError(
        f"--model_dir={model_dir} holds a run of another genotype ({path}) "
        f"than --genotype={requested}; nothing was written. Rerun with the "
        "genotype of that run to resume it, or pass a new --model_dir."
    )


def record(model_dir, config_text, changes=()):
    """Writes ``config.json`` atomically and logs the allowed changes.

    Args:
        model_dir: the run directory (created).
        config_text: the configuration as JSON text.
        changes: what `check` returned.
    """
    os.makedirs(model_dir, exist_ok=True)
    if changes:
        stamp = datetime.datetime.now(datetime.timezone.utc).isoformat(
            timespec="seconds"
        )
        line = ", ".join(
            f"--{name} {_flag_text(a)} -> {_flag_text(b)}"
            for name, a, b in changes
        )
        with open(
            os.path.join(model_dir, CHANGES_FILE), "a", encoding="utf-8"
        ) as f:
            f.write(f"{stamp} resumed with {line}\n")
    G.atomic_write(os.path.join(model_dir, CONFIG_FILE), config_text)


def describe_changes(changes):
    """One line saying which allowed flags changed, or None."""
    if not changes:
        return None
    return "Resuming with changed flags: " + ", ".join(
        f"--{name} {_flag_text(a)} -> {_flag_text(b)}"
        for name, a, b in changes
    ) + "."
