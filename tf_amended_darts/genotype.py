"""Discrete cell genotypes: data type, derivation rules, versioned JSON I/O.

A cell genotype lists two ``(operator, input)`` entries per intermediate
node, in node order; input 0 is ``c_{k-2}``, input 1 is ``c_{k-1}`` and
input ``2 + i`` is intermediate node ``i`` (the format of the DARTS reference
``genotypes.py`` and of ``published_genotypes.json``).

Shared spaces (S1, S3) have one normal and one reduction cell
(``Genotype.normal`` / ``Genotype.reduce``); per-cell spaces (S2) have one
``CellGenotype`` per cell (``Genotype.cells``). ``Genotype.cell_genotypes``
gives both as one list of cells for a network builder.

Genotypes are data: JSON with a format name and a version, strict about its
fields, never Python text to ``eval``. This module has no TensorFlow import.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import importlib.resources
import json
import numbers
import os
import tempfile
from collections.abc import Mapping, Sequence

import numpy as np

from tf_amended_darts import search_space
from tf_amended_darts.search_space import _invalid

GENOTYPE_FORMAT = "tf_amended_darts.genotype"
GENOTYPE_VERSION = 1
SUPPORTED_VERSIONS = (1,)

PUBLISHED_FILE = "published_genotypes.json"
# Where the project's reference copy lives: <repo>/../shared/reference/.
_SHARED_PUBLISHED = os.path.join(
    os.path.dirname(
        os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
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
        raise _invalid(field, "a list of [operator, input] pairs", edges)
    if not edges or len(edges) % _PER_NODE:
        raise _invalid(
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
            raise _invalid(name, "an [operator, input] pair", entry)
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
            raise _invalid(f"{name}[0]", expected, op)
        node = e // _PER_NODE
        last = node + _FIRST_NODE_STATE - 1
        if not _is_int(inp) or not 0 <= inp <= last:
            raise _invalid(
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
        raise _invalid(field, expected, concat)
    if any(not _is_int(s) or not first <= s <= last for s in concat):
        raise _invalid(field, expected, concat)
    if len(set(concat)) != len(concat):
        raise _invalid(field, expected, concat)
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
            raise _invalid("reduction", "true or false", self.reduction)

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
                    raise _invalid(
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
                raise _invalid(
                    "cells", "a non-empty sequence of CellGenotype", self.cells
                )
            object.__setattr__(self, "cells", tuple(self.cells))
        if self.metadata is not None:
            if not isinstance(self.metadata, Mapping) or not all(
                isinstance(k, str) for k in self.metadata
            ):
                raise _invalid(
                    "metadata", "a mapping with string keys", self.metadata
                )
            try:  # A private deep copy; also proves it is JSON data.
                copy = json.loads(json.dumps(dict(self.metadata)))
            except (TypeError, ValueError) as error:
                raise _invalid(
                    "metadata", "JSON-serialisable values", self.metadata
                ) from error
            object.__setattr__(self, "metadata", copy)

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
            raise _invalid(
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
        operators: accepted operator names (default ``DARTS_PRIMITIVES``).
        require_header: whether ``format`` and ``version`` must be present
            (``False`` also accepts the published layout without them).

    Returns:
        The ``Genotype``.

    Raises:
        ValueError: naming the offending field and the accepted values.
    """
    if operators is None:
        operators = search_space.DARTS_PRIMITIVES
    ops = tuple(operators)
    if not isinstance(data, Mapping):
        raise _invalid("genotype", "a JSON object", data)
    _reject_unknown("genotype", data, _TOP_FIELDS)
    if require_header or "format" in data or "version" in data:
        _require("format", data, "format", repr(GENOTYPE_FORMAT))
        _require("version", data, "version", f"one of {SUPPORTED_VERSIONS}")
        if data.get("format") != GENOTYPE_FORMAT:
            raise _invalid("format", repr(GENOTYPE_FORMAT), data.get("format"))
        version = data.get("version")
        if not _is_int(version) or version not in SUPPORTED_VERSIONS:
            raise _invalid("version", f"one of {SUPPORTED_VERSIONS}", version)
    metadata = data.get("metadata")
    if "cells" in data:
        present = [f for f in _SHARED_FIELDS if f in data]
        if present:
            raise _invalid(
                "cells", "no shared fields alongside `cells`", present
            )
        cells_data = data["cells"]
        if not isinstance(cells_data, list) or not cells_data:
            raise _invalid(
                "cells", "a non-empty list of cell objects", cells_data
            )
        cells = []
        for i, cell in enumerate(cells_data):
            name = f"cells[{i}]"
            if not isinstance(cell, Mapping):
                raise _invalid(name, f"an object with {_CELL_FIELDS}", cell)
            _reject_unknown(name, cell, _CELL_FIELDS)
            for field in _CELL_FIELDS:
                _require(f"{name}.{field}", cell, field, "present")
            edges = _check_edges(f"{name}.edges", cell["edges"], ops)
            concat = _check_concat(
                f"{name}.concat", cell["concat"], len(edges) // _PER_NODE
            )
            if not isinstance(cell["reduction"], bool):
                raise _invalid(
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
        raise _invalid("genotype", "no repeated keys", duplicates)
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


def save(genotype: Genotype, path) -> None:
    """Saves a genotype as versioned JSON, atomically."""
    atomic_write(path, to_json(genotype))


@functools.lru_cache(maxsize=1)
def _published_data() -> dict:
    resource = importlib.resources.files("tf_amended_darts") / PUBLISHED_FILE
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
        raise _invalid("name", f"one of {published_names()}", name)
    return from_dict(_published_data()[name], operators, require_header=False)


def load(path_or_name, operators=None) -> Genotype:
    """Loads a genotype from a JSON file or by published name.

    Args:
        path_or_name: a file written by ``save``, or one of
            ``published_names()`` (an existing file of that name wins).
        operators: accepted operator names (default ``DARTS_PRIMITIVES``).

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
    raise _invalid(
        "path_or_name",
        f"an existing file or a published name from {published_names()}",
        path,
    )


# --------------------------------------------------------------------------
# Derivation from architecture weights.


def _operator_indices(operators) -> tuple[tuple[str, ...], list[int]]:
    """The operators, and the indices a derivation may keep (not ``none``)."""
    ops = search_space.check_operators(operators)
    return ops, [k for k, op in enumerate(ops) if op != search_space.NONE_OP]


def _as_matrix(field: str, weights, rows: int, cols: int) -> np.ndarray:
    array = np.asarray(weights, dtype=np.float64)
    if array.shape != (rows, cols):
        raise _invalid(f"{field}.shape", f"({rows}, {cols})", array.shape)
    if not np.all(np.isfinite(array)):
        raise _invalid(field, "finite values", array)
    return array


def _best_operator(row: np.ndarray, keep: list[int]) -> int:
    # DARTS `_parse`: `if k_best is None or W[j][k] > W[j][k_best]`, so a
    # tie keeps the operator that comes first.
    best = None
    for k in keep:
        if best is None or row[k] > row[best]:
            best = k
    return best


def derive_pruned_cell(weights, operators, steps: int = 4) -> tuple:
    """The DARTS rule (reference ``model_search.py``, ``_parse``).

    For each node, its input edges are ranked by strength, the largest
    non-``none`` weight, in decreasing order with a stable sort (on a tie
    the lower input index ranks first); the top two are kept, in that
    order, each with its best non-``none`` operator (on a tie, the one
    earlier in ``operators``). ``none`` is ignored even when it has the
    largest weight.

    Args:
        weights: ``(num_edges('pruned', steps), len(operators))`` softmax
            weights (or logits; only their order matters), rows ordered as
            ``search_space.edge_list('pruned', steps)``.
        operators: the operator names of the columns.
        steps: intermediate nodes per cell.

    Returns:
        ``(operator, input)`` pairs, two per node.

    Raises:
        ValueError: for a bad shape, non-finite weights, or operators that
            are all ``none``.
    """
    ops, keep = _operator_indices(operators)
    inputs = search_space.edge_list("pruned", steps)
    w = _as_matrix("weights", weights, sum(map(len, inputs)), len(ops))
    gene, start = [], 0
    for node_inputs in inputs:
        rows = w[start : start + len(node_inputs)]
        strength = [max(row[k] for k in keep) for row in rows]
        kept = sorted(
            range(len(rows)), key=lambda x: strength[x], reverse=True
        )[:_PER_NODE]
        for x in kept:
            gene.append((ops[_best_operator(rows[x], keep)], node_inputs[x]))
        start += len(node_inputs)
    return tuple(gene)


def _check_inputs(inputs, steps: int) -> list[list[int]]:
    if len(inputs) != steps:
        raise _invalid("inputs", f"one input list per node ({steps})", inputs)
    for j, pair in enumerate(inputs):
        last = j + _FIRST_NODE_STATE - 1
        if len(pair) != _PER_NODE or any(
            not _is_int(i) or not 0 <= i <= last for i in pair
        ):
            raise _invalid(
                f"inputs[{j}]", f"{_PER_NODE} inputs in 0..{last}", pair
            )
    return [list(pair) for pair in inputs]


def derive_fixed(weights, operators, steps: int = 4, inputs=None) -> tuple:
    """The best non-``none`` operator on each of a cell's fixed edges.

    Ties go to the operator earlier in ``operators``; ``none`` is ignored.

    Args:
        weights: ``(2 * steps, len(operators))`` weights, one row per edge
            in the order of ``inputs``.
        operators: the operator names of the columns.
        steps: intermediate nodes per cell.
        inputs: the two inputs of each node; default
            ``search_space.edge_list('fixed', steps)``. For the ``searched``
            layout's stage 2, pass the pairs from ``derive_pairs``.

    Returns:
        ``(operator, input)`` pairs, two per node, in the order of
        ``inputs``.

    Raises:
        ValueError: for bad inputs or weights, or operators all ``none``.
    """
    ops, keep = _operator_indices(operators)
    if inputs is None:
        inputs = search_space.edge_list("fixed", steps)
    inputs = _check_inputs(inputs, steps)
    w = _as_matrix("weights", weights, _PER_NODE * steps, len(ops))
    flat = [i for pair in inputs for i in pair]
    return tuple(
        (ops[_best_operator(row, keep)], i)
        for row, i in zip(w, flat, strict=True)
    )


def derive_pairs(pair_weights, steps: int = 4) -> list[tuple[int, int]]:
    """Stage 1 of the ``searched`` layout: each node's argmax input pair.

    Args:
        pair_weights: per-node vectors over ``search_space.input_pairs(j)``
            (``C(j + 2, 2)`` entries each), or one flat vector of length
            ``search_space.num_pairs(steps)`` concatenated over nodes.
        steps: intermediate nodes per cell.

    Returns:
        One ``(i1, i2)`` pair per node; on a tie, the earlier pair.

    Raises:
        ValueError: for wrong lengths or non-finite weights.
    """
    sizes = [len(search_space.input_pairs(j)) for j in range(steps)]
    if len(pair_weights) and np.ndim(pair_weights[0]) == 0:  # One vector.
        flat = _as_matrix(
            "pair_weights", np.reshape(pair_weights, (1, -1)), 1, sum(sizes)
        )[0]
        pair_weights = np.split(flat, np.cumsum(sizes)[:-1])
    if len(pair_weights) != steps:
        raise _invalid(
            "pair_weights", f"{steps} per-node vectors", pair_weights
        )
    pairs = []
    for j, size in enumerate(sizes):
        row = _as_matrix(
            f"pair_weights[{j}]", np.reshape(pair_weights[j], (1, -1)), 1, size
        )[0]
        pairs.append(search_space.input_pairs(j)[int(np.argmax(row))])
    return pairs


def _derive_cell(weights, operators, layout, steps, inputs) -> tuple:
    search_space.check_layout(layout)
    if layout == "pruned":
        if inputs is not None:
            raise _invalid("inputs", "None for the pruned layout", inputs)
        return derive_pruned_cell(weights, operators, steps)
    if layout == "searched" and inputs is None:
        raise _invalid(
            "inputs",
            "the stage-1 pairs (derive_pairs) for the searched layout",
            inputs,
        )
    return derive_fixed(weights, operators, steps, inputs)


def _concat(steps: int, multiplier: int) -> tuple[int, ...]:
    return tuple(
        range(_FIRST_NODE_STATE + steps - multiplier, _FIRST_NODE_STATE + steps)
    )


def derive_shared(
    weights_normal,
    weights_reduce,
    operators,
    layout: str = "pruned",
    steps: int = 4,
    multiplier: int = 4,
    inputs_normal=None,
    inputs_reduce=None,
    metadata=None,
) -> Genotype:
    """A shared-form genotype from normal and reduction cell weights.

    Args:
        weights_normal: weights of the normal cell (see ``derive_pruned_cell``
            or ``derive_fixed`` for the row order of each layout).
        weights_reduce: weights of the reduction cell.
        operators: the operator names of the columns.
        layout: one of ``search_space.EDGE_LAYOUTS``; ``searched`` means
            stage 2, with the kept pairs in ``inputs_*``.
        steps: intermediate nodes per cell.
        multiplier: how many last nodes the cell output concatenates.
        inputs_normal: for ``fixed``/``searched``, the nodes' inputs.
        inputs_reduce: likewise for the reduction cell.
        metadata: optional provenance stored in the genotype.

    Returns:
        The ``Genotype``.
    """
    concat = _concat(steps, multiplier)
    return Genotype(
        normal=_derive_cell(
            weights_normal, operators, layout, steps, inputs_normal
        ),
        normal_concat=concat,
        reduce=_derive_cell(
            weights_reduce, operators, layout, steps, inputs_reduce
        ),
        reduce_concat=concat,
        metadata=metadata,
    )


def derive_pruned(
    weights_normal,
    weights_reduce,
    operators,
    steps: int = 4,
    multiplier: int = 4,
) -> Genotype:
    """DARTS ``genotype()``: ``derive_pruned_cell`` on both cell types."""
    return derive_shared(
        weights_normal, weights_reduce, operators, "pruned", steps, multiplier
    )


def derive_per_cell(
    cell_weights,
    operators,
    reduction_cells,
    layout: str = "fixed",
    steps: int = 4,
    multiplier: int = 4,
    cell_inputs=None,
    metadata=None,
) -> Genotype:
    """A per-cell genotype (S2): one cell derived from each weight matrix.

    Args:
        cell_weights: one weight matrix per cell, in network order.
        operators: the operator names of the columns.
        reduction_cells: indices of the reduction cells (usually
            ``search_space.reduction_indices(len(cell_weights))``).
        layout: one of ``search_space.EDGE_LAYOUTS``.
        steps: intermediate nodes per cell.
        multiplier: how many last nodes the cell output concatenates.
        cell_inputs: for ``searched`` (stage 2), each cell's kept pairs;
            for ``fixed``, optional; for ``pruned``, ``None``.
        metadata: optional provenance stored in the genotype.

    Returns:
        The ``Genotype`` with ``cells`` set.
    """
    n = len(cell_weights)
    if cell_inputs is None:
        cell_inputs = [None] * n
    if len(cell_inputs) != n:
        raise _invalid(
            "cell_inputs", f"{n} entries (one per cell)", cell_inputs
        )
    reductions = set(reduction_cells)
    if any(not _is_int(i) or not 0 <= i < n for i in reductions):
        raise _invalid(
            "reduction_cells", f"cell indices in 0..{n - 1}", reduction_cells
        )
    concat = _concat(steps, multiplier)
    cells = tuple(
        CellGenotype(
            _derive_cell(w, operators, layout, steps, inputs),
            concat,
            i in reductions,
        )
        for i, (w, inputs) in enumerate(
            zip(cell_weights, cell_inputs, strict=True)
        )
    )
    return Genotype(cells=cells, metadata=metadata)
