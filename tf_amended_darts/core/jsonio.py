"""Versioned JSON files: atomic writes and the header check.

Every data file of the project (genotypes of each task, run summaries) is
JSON with a format name and a version, written so that a reader sees the
old or the new content only. This module holds the two generic pieces the
task-specific readers share; it has no TensorFlow import and knows no
domain.
"""

from __future__ import annotations

import contextlib
import json
import numbers
import os
import tempfile
from collections.abc import Mapping

from tf_amended_darts.nn.validate import invalid


def is_int(value) -> bool:
    """Whether ``value`` is an integer (``bool`` is not)."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def atomic_write(path, data) -> None:
    """Writes a file so that readers see the old or the new content only.

    Writes a temporary file in the same directory, fsyncs it, then
    ``os.replace``-s it over ``path``. Parent directories are created.

    Args:
        path: destination file.
        data: ``bytes`` or ``str`` (UTF-8 encoded).
    """
    path = os.path.abspath(os.fspath(path))
    directory = os.path.dirname(path)
    os.makedirs(directory, exist_ok=True)
    if isinstance(data, str):
        data = data.encode("utf-8")
    fd, tmp = tempfile.mkstemp(
        prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=directory
    )
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    with contextlib.suppress(OSError):  # Persist the rename (POSIX only).
        dir_fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def header(format_name: str, version: int) -> dict:
    """The leading fields of a versioned JSON object."""
    return {"format": format_name, "version": version}


def check_header(data: Mapping, format_name: str, versions) -> int:
    """Checks ``format`` and ``version`` of a parsed JSON object.

    Args:
        data: the parsed object.
        format_name: the expected ``format`` value.
        versions: the supported ``version`` values.

    Returns:
        The version.

    Raises:
        ValueError: naming the missing or wrong field and the accepted
            values.
    """
    versions = tuple(versions)
    for key, expected in (
        ("format", repr(format_name)),
        ("version", f"one of {versions}"),
    ):
        if key not in data:
            raise ValueError(f"Missing field `{key}`: expected {expected}")
    if data["format"] != format_name:
        raise invalid("format", repr(format_name), data["format"])
    version = data["version"]
    if not is_int(version) or version not in versions:
        raise invalid("version", f"one of {versions}", version)
    return int(version)


def reject_unknown(field: str, data: Mapping, known) -> None:
    """Raises naming the fields of ``data`` that are not in ``known``."""
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise ValueError(
            f"Unknown field(s) {unknown} in `{field}`; accepted fields: "
            f"{tuple(known)}"
        )


def _no_duplicate_keys(pairs):
    keys = [k for k, _ in pairs]
    duplicates = sorted({k for k in keys if keys.count(k) > 1})
    if duplicates:
        raise invalid("json", "no repeated keys", duplicates)
    return dict(pairs)


def parse(text: str, what: str = "JSON"):
    """Parses JSON text, rejecting repeated keys.

    Args:
        text: the JSON text.
        what: what the text is, for the error message.

    Raises:
        ValueError: for malformed JSON or a repeated key.
    """
    try:
        return json.loads(text, object_pairs_hook=_no_duplicate_keys)
    except json.JSONDecodeError as error:
        raise ValueError(f"Malformed {what}: {error}") from error


def metadata_copy(metadata) -> dict:
    """A private deep copy of a genotype's ``metadata``.

    Raises:
        ValueError: naming ``metadata`` unless it is a mapping with string
            keys and JSON-serialisable values (the copy proves the latter).
    """
    if not isinstance(metadata, Mapping) or not all(
        isinstance(k, str) for k in metadata
    ):
        raise invalid("metadata", "a mapping with string keys", metadata)
    try:
        return json.loads(json.dumps(dict(metadata)))
    except (TypeError, ValueError) as error:
        raise invalid(
            "metadata", "JSON-serialisable values", metadata
        ) from error
