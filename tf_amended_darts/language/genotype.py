"""Recurrent-cell genotypes: the data type and its versioned JSON.

A recurrent genotype lists one ``(operator, predecessor)`` entry per
intermediate node, in node order: node ``i`` (state ``i + 1``) applies the
operator to state ``predecessor`` in ``0..i`` (state 0 is the cell's first
state), and ``concat`` names the states averaged into the cell output. The
format of the DARTS reference ``rnn/genotypes.py``.

JSON: the same versioned header as the convolutional genotypes
(``tf_amended_darts.genotype``, version 1) with ``"kind": "recurrent"``::

    {"format": "tf_amended_darts.genotype", "version": 1,
     "kind": "recurrent", "recurrent": [["sigmoid", 0], ...],
     "concat": [1, 2, ..., 8], "metadata": {...}}

Unknown fields, unknown operators and out-of-range predecessors are
rejected. Published genotypes (``DARTS_V1``, ``DARTS_V2``, ``ENAS``) load
by name from ``published_genotypes.json`` beside this module. No TensorFlow
import.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.resources
import json
import os
from collections.abc import Mapping, Sequence

from tf_amended_darts.core import jsonio
from tf_amended_darts.language import space
from tf_amended_darts.nn.validate import invalid

GENOTYPE_FORMAT = "tf_amended_darts.genotype"  # shared with vision's
GENOTYPE_VERSION = 1
SUPPORTED_VERSIONS = (1,)
KIND = "recurrent"
PUBLISHED_FILE = "published_genotypes.json"

_HEADER_FIELDS = ("format", "version", "kind")
_FIELDS = _HEADER_FIELDS + ("recurrent", "concat", "metadata")

Node = tuple[str, int]


def _check_nodes(field, nodes, operators) -> tuple[Node, ...]:
    if isinstance(nodes, (str, bytes)) or not isinstance(nodes, Sequence):
        raise invalid(field, "a list of [operator, predecessor] pairs", nodes)
    if not nodes:
        raise invalid(field, "at least one node", nodes)
    out = []
    for i, entry in enumerate(nodes):
        name = f"{field}[{i}]"
        if (
            isinstance(entry, (str, bytes))
            or not isinstance(entry, Sequence)
            or len(entry) != 2
        ):
            raise invalid(name, "an [operator, predecessor] pair", entry)
        op, pred = entry
        if op not in operators or op == space.NONE:
            allowed = tuple(o for o in operators if o != space.NONE)
            raise invalid(f"{name}[0]", f"an operator from {allowed}", op)
        if not jsonio.is_int(pred) or not 0 <= pred <= i:
            raise invalid(
                f"{name}[1]",
                f"a predecessor state in 0..{i} (node {i} may take state 0, "
                "the cell's first state, or an earlier node)",
                pred,
            )
        out.append((str(op), int(pred)))
    return tuple(out)


def _check_concat(concat, steps) -> tuple[int, ...]:
    expected = f"a non-empty list of distinct states in 1..{steps}"
    if (
        isinstance(concat, (str, bytes))
        or not isinstance(concat, Sequence)
        or not concat
    ):
        raise invalid("concat", expected, concat)
    if any(not jsonio.is_int(s) or not 1 <= s <= steps for s in concat):
        raise invalid("concat", expected, concat)
    if len(set(concat)) != len(concat):
        raise invalid("concat", expected, concat)
    return tuple(int(s) for s in concat)


@dataclasses.dataclass(frozen=True)
class RecurrentGenotype:
    """A discrete recurrent cell.

    Args:
        recurrent: ``(operator, predecessor)`` per intermediate node.
        concat: the states averaged into the output (default: all nodes,
            ``1..steps``, as DARTS' ``range(1, 9)``).
        metadata: JSON-serialisable provenance (search settings, epoch).

    Raises:
        ValueError: naming the field and the accepted values.
    """

    recurrent: tuple[Node, ...]
    concat: tuple[int, ...] = ()
    metadata: Mapping | None = dataclasses.field(default=None, hash=False)

    def __post_init__(self):
        nodes = _check_nodes("recurrent", self.recurrent, space.PRIMITIVES)
        object.__setattr__(self, "recurrent", nodes)
        concat = self.concat or tuple(range(1, len(nodes) + 1))
        object.__setattr__(self, "concat", _check_concat(concat, len(nodes)))
        if self.metadata is not None:
            object.__setattr__(
                self, "metadata", jsonio.metadata_copy(self.metadata)
            )

    @property
    def steps(self) -> int:
        """Number of intermediate nodes."""
        return len(self.recurrent)

    @property
    def kind(self) -> str:
        return KIND


def from_weights(weights, metadata=None) -> RecurrentGenotype:
    """The genotype DARTS derives from softmax weights (`space.derive`)."""
    nodes = space.derive(weights)
    steps = len(nodes)
    concat = tuple(range(steps + 1))[-min(space.CONCAT, steps) :]
    return RecurrentGenotype(tuple(nodes), concat, metadata)


def to_dict(genotype: RecurrentGenotype) -> dict:
    """The versioned JSON object of a genotype."""
    data = jsonio.header(GENOTYPE_FORMAT, GENOTYPE_VERSION)
    data["kind"] = KIND
    data["recurrent"] = [list(node) for node in genotype.recurrent]
    data["concat"] = list(genotype.concat)
    if genotype.metadata is not None:
        data["metadata"] = genotype.metadata
    return data


def to_json(genotype: RecurrentGenotype) -> str:
    """Serialises a genotype to versioned JSON text."""
    return json.dumps(to_dict(genotype), indent=2) + "\n"


def from_dict(data, require_header: bool = True) -> RecurrentGenotype:
    """Builds a genotype from its JSON object, validating every field.

    Args:
        data: the parsed JSON object.
        require_header: whether ``format``, ``version`` and ``kind`` must
            be present (``False`` accepts the published layout without).

    Raises:
        ValueError: naming the offending field and the accepted values.
    """
    if not isinstance(data, Mapping):
        raise invalid("genotype", "a JSON object", data)
    if "normal" in data or "cells" in data:
        raise invalid(
            "genotype",
            "a recurrent genotype (`recurrent`, `concat`); this one is a "
            "convolutional cell (use the vision task)",
            sorted(data),
        )
    jsonio.reject_unknown("genotype", data, _FIELDS)
    if require_header or any(k in data for k in _HEADER_FIELDS):
        jsonio.check_header(data, GENOTYPE_FORMAT, SUPPORTED_VERSIONS)
        if data.get("kind") != KIND:
            raise invalid("kind", repr(KIND), data.get("kind"))
    if "recurrent" not in data:
        raise ValueError("Missing field `recurrent`: expected a list of "
                         "[operator, predecessor] pairs")
    nodes = _check_nodes("recurrent", data["recurrent"], space.PRIMITIVES)
    concat = data.get("concat")
    if concat is None:
        raise ValueError("Missing field `concat`: expected the averaged "
                         "states, e.g. [1, ..., 8]")
    return RecurrentGenotype(
        nodes, _check_concat(concat, len(nodes)), data.get("metadata")
    )


def from_json(text: str) -> RecurrentGenotype:
    """Parses versioned genotype JSON text (see `from_dict`)."""
    return from_dict(jsonio.parse(text, "genotype JSON"), require_header=True)


def save(genotype: RecurrentGenotype, path) -> None:
    """Saves a genotype as versioned JSON, atomically."""
    jsonio.atomic_write(path, to_json(genotype))


@functools.lru_cache(maxsize=1)
def _published_data() -> dict:
    resource = importlib.resources.files(__package__) / PUBLISHED_FILE
    return json.loads(resource.read_text(encoding="utf-8"))


def published_names() -> tuple[str, ...]:
    """Names of the published recurrent genotypes."""
    return tuple(n for n in _published_data() if not n.startswith("_"))


def load_published(name: str) -> RecurrentGenotype:
    """Loads a published genotype (``DARTS_V1``, ``DARTS_V2``, ``ENAS``)."""
    if name not in published_names():
        raise invalid("genotype", f"one of {published_names()}", name)
    return from_dict(_published_data()[name], require_header=False)


def load(path_or_name) -> RecurrentGenotype:
    """Loads a genotype from a JSON file or by published name.

    Raises:
        FileNotFoundError: for a path-like argument naming no file.
        ValueError: for an unknown name or an invalid file.
    """
    if isinstance(path_or_name, RecurrentGenotype):
        return path_or_name
    path = os.fspath(path_or_name)
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as handle:
            return from_json(handle.read())
    if path in published_names():
        return load_published(path)
    if os.sep in path or path.endswith(".json"):
        raise FileNotFoundError(f"No genotype file at {path!r}")
    raise invalid(
        "genotype",
        f"an existing file or a published name from {published_names()}",
        path,
    )
