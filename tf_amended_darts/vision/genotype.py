"""Discrete cell genotypes: the data type and its versioned JSON I/O.

A cell genotype lists two ``(operator, input)`` entries per intermediate
node, in node order; input 0 is ``c_{k-2}``, input 1 is ``c_{k-1}`` and
input ``2 + i`` is intermediate node ``i`` (the format of the DARTS reference
``genotypes.py`` and of ``published_genotypes.json``).

Shared spaces (S1, S3) have one normal and one reduction cell
(``Genotype.normal`` / ``Genotype.reduce``); per-cell spaces (S2) have one
``CellGenotype`` per cell (``Genotype.cells``). ``Genotype.cell_genotypes``
gives both as one list of cells for a network builder.

Genotypes are data: JSON with a format name and a version, strict about its
fields, never Python text to ``eval``. Derivation from architecture weights
is `derive.py`. This module has no TensorFlow import.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.resources
import json
import numbers
import os
from collections.abc import Mapping, Sequence

from tf_amended_darts.core import jsonio
from tf_amended_darts.nn.validate import invalid
from tf_amended_darts.vision import search_space

GENOTYPE_FORMAT = "tf_amended_darts.genotype"
GENOTYPE_VERSION = 1
SUPPORTED_VERSIONS = (1,)

PUBLISHED_FILE = "published_genotypes.json"
# Where the project's reference copy lives: <repo>/../shared/reference/.
_SHARED_PUBLISHED = os.path.join(
    os.path.dirname(
        os.path.dirname(
            os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        )
    ),
    "shared",
    "reference",
    PUBLISHED_FILE,
)

_SHARED_FIELDS = ("normal", "normal_concat", "reduce", "reduce_concat")
_HEADER_FIELDS = ("format", "version")
_OPTIONAL_FIELDS = ("metadata",)
_TOP_FIELDS = _HEADER_FIELDS + _SHARED_FIELDS + ("cells",) + _OPTIONAL_FIELDS
_CELL_FIELDS = ("edges", "concat", "reduction")
_FIRST_NODE_STATE = search_space.NUM_CELL_INPUTS
_PER_NODE = search_space.INPUTS_PER_NODE

Edge = tuple[str, int]


def _is_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _check_edges(field: str, edges, operators=None) -> tuple[Edge, ...]:
    """Validates a cell's ``(operator, input)`` list; returns it as tuples."""
    if isinstance(edges, (str, bytes)) or not isinstance(edges, Sequence):
        raise invalid(field, "a list of [operator, input] pairs", edges)
    if not edges or len(edges) % _PER_NODE:
        raise invalid(
            field,
            f"{_PER_NODE} [operator, input] entries per intermediate node "
            f"(a nonzero even count; got {len(edges)})",
            edges,
        )
    out = []
    for e, entry in enumerate(edges):
        name = f"{field}[{e}]"
        if (
            isinstance(entry, (str, bytes))
            or not isinstance(entry, Sequence)
            or len(entry) != 2
        ):
            raise invalid(name, "an [operator, input] pair", entry)
        op, inp = entry
        if (
            not isinstance(op, str)
            or not op
            or (operators is not None and op not in operators)
        ):
            expected = (
                f"an operator from {operators}"
                if operators is not None
                else "a non-empty operator name"
            )
            raise invalid(f"{name}[0]", expected, op)
        node = e // _PER_NODE
        last = node + _FIRST_NODE_STATE - 1
        if not _is_int(inp) or not 0 <= inp <= last:
            raise invalid(
                f"{name}[1]",
                f"an input in 0..{last} (node {node} may take inputs "
                f"0..{last}: c_{{k-2}}, c_{{k-1}}, earlier nodes)",
                inp,
            )
        out.append((op, int(inp)))
    return tuple(out)


def _check_concat(field: str, concat, steps: int) -> tuple[int, ...]:
    """Validates the states concatenated into a cell output."""
    first, last = _FIRST_NODE_STATE, steps + _FIRST_NODE_STATE - 1
    expected = f"a non-empty list of distinct node states in {first}..{last}"
    if (
        isinstance(concat, (str, bytes))
        or not isinstance(concat, Sequence)
        or not concat
    ):
        raise invalid(field, expected, concat)
    if any(not _is_int(s) or not first <= s <= last for s in concat):
        raise invalid(field, expected, concat)
    if len(set(concat)) != len(concat):
        raise invalid(field, expected, concat)
    return tuple(int(s) for s in concat)


@dataclasses.dataclass(frozen=True)
class CellGenotype:
    """One discrete cell.

    Args:
        edges: ``(operator, input)`` pairs, two per intermediate node.
        concat: node states concatenated into the cell output.
        reduction: whether the cell halves the spatial size.
    """

    edges: tuple[Edge, ...]
    concat: tuple[int, ...]
    reduction: bool

    def __post_init__(self):
        edges = _check_edges("edges", self.edges)
        object.__setattr__(self, "edges", edges)
        concat = _check_concat("concat", self.concat, self.steps)
        object.__setattr__(self, "concat", concat)
        if not isinstance(self.reduction, bool):
            raise invalid("reduction", "true or false", self.reduction)

    @property
    def steps(self) -> int:
        """Number of intermediate nodes."""
        return len(self.edges) // _PER_NODE


@dataclasses.dataclass(frozen=True)
class Genotype:
    """A discrete architecture.

    Either the shared form (``normal``, ``normal_concat``, ``reduce``,
    ``reduce_concat``; ``cells`` is ``None``), as in DARTS, or the per-cell
    form (``cells``; the four shared fields empty), as searched in S2.

    Args:
        normal: ``(operator, input)`` pairs of the normal cell.
        normal_concat: node states concatenated by the normal cell.
        reduce: ``(operator, input)`` pairs of the reduction cell.
        reduce_concat: node states concatenated by the reduction cell.
        cells: one ``CellGenotype`` per cell, in network order.
        metadata: JSON-serialisable provenance (space, layout, epoch, ...).

    Raises:
        ValueError: naming the field and the accepted values.
    """

    normal: tuple[Edge, ...] = ()
    normal_concat: tuple[int, ...] = ()
    reduce: tuple[Edge, ...] = ()
    reduce_concat: tuple[int, ...] = ()
    cells: tuple[CellGenotype, ...] | None = None
    metadata: Mapping | None = dataclasses.field(default=None, hash=False)

    def __post_init__(self):
        if self.cells is None:
            for kind in ("normal", "reduce"):
                edges = _check_edges(kind, getattr(self, kind))
                object.__setattr__(self, kind, edges)
                concat = _check_concat(
                    f"{kind}_concat",
                    getattr(self, f"{kind}_concat"),
                    len(edges) // _PER_NODE,
                )
                object.__setattr__(self, f"{kind}_concat", concat)
        else:
            for field in _SHARED_FIELDS:
                if getattr(self, field):
                    raise invalid(
                        field,
                        "empty when `cells` is given (per-cell form)",
                        getattr(self, field),
                    )
                object.__setattr__(self, field, ())
            if (
                isinstance(self.cells, (str, bytes, Mapping))
                or not (isinstance(self.cells, Sequence) and self.cells)
                or not all(isinstance(c, CellGenotype) for c in self.cells)
            ):
                raise invalid(
                    "cells", "a non-empty sequence of CellGenotype", self.cells
                )
            object.__setattr__(self, "cells", tuple(self.cells))
        if self.metadata is not None:
            object.__setattr__(
                self, "metadata", jsonio.metadata_copy(self.metadata)
            )

    @property
    def is_per_cell(self) -> bool:
        """Whether each cell has its own genotype."""
        return self.cells is not None

    def cell_genotypes(self, layers: int) -> tuple[CellGenotype, ...]:
        """The genotype of every cell of a ``layers``-cell network.

        Reduction cells sit at ``search_space.reduction_indices(layers)``.

        Args:
            layers: number of cells of the network to build.

        Returns:
            One ``CellGenotype`` per cell.

        Raises:
            ValueError: for a per-cell genotype whose cell count or
                reduction positions do not match ``layers``.
        """
        reductions = search_space.reduction_indices(layers)
        if self.cells is None:
            normal = CellGenotype(self.normal, self.normal_concat, False)
            reduce = CellGenotype(self.reduce, self.reduce_concat, True)
            return tuple(
                reduce if i in reductions else normal for i in range(layers)
            )
        found = [i for i, c in enumerate(self.cells) if c.reduction]
        if len(self.cells) != layers or found != reductions:
            raise invalid(
                "layers",
                f"{len(self.cells)} for this per-cell genotype (reduction "
                f"cells at {found})",
                layers,
            )
        return self.cells


# --------------------------------------------------------------------------
# JSON I/O.


def to_dict(genotype: Genotype) -> dict:
    """The versioned JSON object of a genotype."""
    data = {"format": GENOTYPE_FORMAT, "version": GENOTYPE_VERSION}
    if genotype.cells is None:
        for field in _SHARED_FIELDS:
            data[field] = [
                list(x) if isinstance(x, tuple) else x
                for x in getattr(genotype, field)
            ]
    else:
        data["cells"] = [
            {
                "edges": [list(edge) for edge in cell.edges],
                "concat": list(cell.concat),
                "reduction": cell.reduction,
            }
            for cell in genotype.cells
        ]
    if genotype.metadata is not None:
        data["metadata"] = genotype.metadata
    return data


def to_json(genotype: Genotype) -> str:
    """Serialises a genotype to versioned JSON text."""
    return json.dumps(to_dict(genotype), indent=2) + "\n"


def _reject_unknown(field: str, data: Mapping, known: tuple[str, ...]):
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise ValueError(
            f"Unknown field(s) {unknown} in `{field}`; accepted fields: {known}"
        )


def _require(field: str, data: Mapping, key: str, expected: str):
    if key not in data:
        raise ValueError(f"Missing field `{field}`: expected {expected}")


def from_dict(data, operators=None, require_header: bool = True) -> Genotype:
    """Builds a genotype from its JSON object, validating every field.

    Args:
        data: the parsed JSON object.
        operators: accepted operator names (default ``KNOWN_OPERATORS``).
        require_header: whether ``format`` and ``version`` must be present
            (``False`` also accepts the published layout without them).

    Returns:
        The ``Genotype``.

    Raises:
        ValueError: naming the offending field and the accepted values.
    """
    if operators is None:
        operators = search_space.KNOWN_OPERATORS
    ops = tuple(operators)
    if not isinstance(data, Mapping):
        raise invalid("genotype", "a JSON object", data)
    _reject_unknown("genotype", data, _TOP_FIELDS)
    if data.get("kind") == "recurrent":
        raise invalid(
            "kind",
            "a convolutional-cell genotype (a recurrent one is read by "
            "tf_amended_darts.language.genotype, --task=ptb)",
            data["kind"],
        )
    if require_header or "format" in data or "version" in data:
        jsonio.check_header(data, GENOTYPE_FORMAT, SUPPORTED_VERSIONS)
    metadata = data.get("metadata")
    if "cells" in data:
        present = [f for f in _SHARED_FIELDS if f in data]
        if present:
            raise invalid(
                "cells", "no shared fields alongside `cells`", present
            )
        cells_data = data["cells"]
        if not isinstance(cells_data, list) or not cells_data:
            raise invalid(
                "cells", "a non-empty list of cell objects", cells_data
            )
        cells = []
        for i, cell in enumerate(cells_data):
            name = f"cells[{i}]"
            if not isinstance(cell, Mapping):
                raise invalid(name, f"an object with {_CELL_FIELDS}", cell)
            _reject_unknown(name, cell, _CELL_FIELDS)
            for field in _CELL_FIELDS:
                _require(f"{name}.{field}", cell, field, "present")
            edges = _check_edges(f"{name}.edges", cell["edges"], ops)
            concat = _check_concat(
                f"{name}.concat", cell["concat"], len(edges) // _PER_NODE
            )
            if not isinstance(cell["reduction"], bool):
                raise invalid(
                    f"{name}.reduction", "true or false", cell["reduction"]
                )
            cells.append(CellGenotype(edges, concat, cell["reduction"]))
        return Genotype(cells=tuple(cells), metadata=metadata)
    values = {}
    for kind in ("normal", "reduce"):
        for field in (kind, f"{kind}_concat"):
            _require(field, data, field, "present (or `cells` instead)")
        values[kind] = _check_edges(kind, data[kind], ops)
        values[f"{kind}_concat"] = _check_concat(
            f"{kind}_concat",
            data[f"{kind}_concat"],
            len(values[kind]) // _PER_NODE,
        )
    return Genotype(**values, metadata=metadata)


def _no_duplicate_keys(pairs):
    keys = [k for k, _ in pairs]
    duplicates = sorted({k for k in keys if keys.count(k) > 1})
    if duplicates:
        raise invalid("genotype", "no repeated keys", duplicates)
    return dict(pairs)


def _parse_json(text):
    try:
        return json.loads(text, object_pairs_hook=_no_duplicate_keys)
    except json.JSONDecodeError as error:
        raise ValueError(f"Malformed genotype JSON: {error}") from error


def from_json(text: str, operators=None) -> Genotype:
    """Parses versioned genotype JSON text (see ``from_dict``).

    Raises:
        ValueError: for malformed JSON or any invalid field.
    """
    return from_dict(_parse_json(text), operators, require_header=True)


def atomic_write(path, data) -> None:
    """Writes a file atomically (`core.jsonio.atomic_write`)."""
    jsonio.atomic_write(path, data)


def save(genotype: Genotype, path) -> None:
    """Saves a genotype as versioned JSON, atomically."""
    atomic_write(path, to_json(genotype))


@functools.lru_cache(maxsize=1)
def _published_data() -> dict:
    resource = importlib.resources.files(__package__) / PUBLISHED_FILE
    if resource.is_file():
        text = resource.read_text(encoding="utf-8")
    else:  # A source tree without the package copy.
        with open(_SHARED_PUBLISHED, encoding="utf-8") as handle:
            text = handle.read()
    return json.loads(text)


def published_names() -> tuple[str, ...]:
    """Names of the published convolutional-cell genotypes."""
    return tuple(
        name
        for name, entry in _published_data().items()
        if not name.startswith("_") and "normal" in entry
    )


def load_published(name: str, operators=None) -> Genotype:
    """Loads a published genotype (``DARTS_V2``, ``PC_DARTS_CIFAR``, ...).

    Raises:
        ValueError: for an unknown name or a recurrent-cell genotype.
    """
    if name not in published_names():
        raise invalid("name", f"one of {published_names()}", name)
    return from_dict(_published_data()[name], operators, require_header=False)


def load(path_or_name, operators=None) -> Genotype:
    """Loads a genotype from a JSON file or by published name.

    Args:
        path_or_name: a file written by ``save``, or one of
            ``published_names()`` (an existing file of that name wins).
        operators: accepted operator names (default ``KNOWN_OPERATORS``).

    Returns:
        The ``Genotype``.

    Raises:
        FileNotFoundError: for a path-like argument naming no file.
        ValueError: for an unknown name or an invalid file.
    """
    path = os.fspath(path_or_name)
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as handle:
            return from_json(handle.read(), operators)
    if path in published_names():
        return load_published(path, operators)
    if os.sep in path or path.endswith(".json"):
        raise FileNotFoundError(f"No genotype file at {path!r}")
    raise invalid(
        "path_or_name",
        f"an existing file or a published name from {published_names()}",
        path,
    )
