"""Operator lists, named search spaces and cell edge layouts, as plain data.

This module has no TensorFlow import: the supernet, the genotype derivation
and the launchers all read the same description of a space from here.

A cell has two input states, ``c_{k-2}`` (state 0) and ``c_{k-1}`` (state 1),
and ``steps`` intermediate nodes; node ``j`` is state ``j + 2``. The cell
output concatenates the last ``multiplier`` nodes (all four in DARTS).

Edge layouts (method.md section 5, flag ``--edges``):

* ``pruned``: every node ``j`` receives an edge from every earlier state
  ``0 .. j + 1`` (14 edges for 4 steps); after the search each node keeps its
  two strongest edges (the DARTS rule, see ``genotype.derive_pruned``).
* ``fixed``: 8 edges and no edge search. Node 0 takes ``[0, 1]``
  (``c_{k-2}``, ``c_{k-1}``); node ``j >= 1`` takes ``[j + 1, 0]`` (node
  ``j - 1`` and ``c_{k-2}``) (paper, section 3.1.2).
* ``searched``: stage 1 has the 14 edges of ``pruned`` and one logit per pair
  of inputs of each node (``input_pairs``; paper eq. 16); each node keeps its
  argmax pair, and stage 2 searches operators on those 8 edges only.

References:
    Liu, Simonyan and Yang, "DARTS: Differentiable Architecture Search",
    ICLR 2019, and its reference code (``genotypes.py``,
    ``model_search.py``).
"""

from __future__ import annotations

import dataclasses
import itertools
import math

from tf_amended_darts.nn.validate import check_int, invalid

# DARTS reference `genotypes.py`, PRIMITIVES, in its order.
DARTS_PRIMITIVES = (
    "none",
    "max_pool_3x3",
    "avg_pool_3x3",
    "skip_connect",
    "sep_conv_3x3",
    "sep_conv_5x5",
    "dil_conv_3x3",
    "dil_conv_5x5",
)

# The operator that outputs zeros; never kept by the derivation rules.
NONE_OP = "none"

# R-DARTS' S4 operator: Gaussian noise, whatever the input (automl/
# RobustDARTS src/operations.py, `NoiseOp`); unlike ``none`` the derivation
# may keep it (src/search/model_search.py, `genotype._parse`).
NOISE_OP = "noise"

# Every operator a space, a supernet or a genotype may name.
KNOWN_OPERATORS = DARTS_PRIMITIVES + (NOISE_OP,)

# Intermediate nodes per cell and nodes concatenated into the cell output
# (DARTS reference `model_search.py`: steps=4, multiplier=4).
DEFAULT_STEPS = 4
DEFAULT_MULTIPLIER = 4

# Number of input states of a cell: c_{k-2} and c_{k-1}.
NUM_CELL_INPUTS = 2

# Inputs each intermediate node keeps in a discrete cell (DARTS rule).
INPUTS_PER_NODE = 2

EDGE_LAYOUTS = ("pruned", "fixed", "searched")

_OVERRIDABLE = ("layers", "init_channels", "operators", "steps", "multiplier")


def check_operators(
    operators, accepted: tuple[str, ...] = KNOWN_OPERATORS
) -> tuple[str, ...]:
    """Validates an operator list and returns it as a tuple.

    Args:
        operators: sequence of operator names.
        accepted: the names allowed.

    Returns:
        The operators as a tuple of strings.

    Raises:
        ValueError: if ``operators`` is empty, not a sequence of strings, has
            duplicates or unknown names, or holds only ``none``.
    """
    if isinstance(operators, str) or not hasattr(operators, "__iter__"):
        raise invalid(
            "operators", f"a sequence of names from {accepted}", operators
        )
    ops = tuple(operators)
    if not ops:
        raise invalid(
            "operators", f"a non-empty sequence of names from {accepted}", ops
        )
    for op in ops:
        if op not in accepted:
            raise invalid("operators", f"names from {accepted}", ops)
    if len(set(ops)) != len(ops):
        raise invalid("operators", "names without duplicates", ops)
    if all(op == NONE_OP for op in ops):
        raise invalid(
            "operators", f"at least one operator other than {NONE_OP!r}", ops
        )
    return ops


def check_layout(layout: str) -> str:
    """Returns ``layout`` if it is one of ``EDGE_LAYOUTS``.

    Raises:
        ValueError: naming the accepted layouts.
    """
    if layout not in EDGE_LAYOUTS:
        raise invalid("layout", f"one of {EDGE_LAYOUTS}", layout)
    return layout


@dataclasses.dataclass(frozen=True)
class SearchSpace:
    """A cell-based search space.

    Args:
        name: the space's name (e.g. ``"s1"``).
        operators: candidate operator names, a subset of
            ``KNOWN_OPERATORS`` in the order the architecture logits use.
        layers: number of cells in the search network.
        init_channels: the network's basic width ``C``.
        steps: intermediate nodes per cell.
        multiplier: number of (last) intermediate nodes concatenated into
            the cell output.
        shared_per_cell_type: ``True`` when all normal cells share one set of
            architecture parameters and all reduction cells another (DARTS);
            ``False`` when each cell has its own set (S2).
        edge_operators: optional per-edge operator lists of a shared space,
            ``{"normal": [...], "reduce": [...]}`` with one list per edge of
            the ``pruned`` layout (all of one length, names from
            ``operators``): edge ``e`` mixes only its own (R-DARTS' S1).
            ``None``: ``operators`` on every edge.

    Raises:
        ValueError: naming the field and the accepted values.
    """

    name: str
    operators: tuple[str, ...]
    layers: int
    init_channels: int
    steps: int = DEFAULT_STEPS
    multiplier: int = DEFAULT_MULTIPLIER
    shared_per_cell_type: bool = True
    edge_operators: dict = None

    def __post_init__(self):
        if not isinstance(self.name, str) or not self.name:
            raise invalid("name", "a non-empty string", self.name)
        object.__setattr__(self, "operators", check_operators(self.operators))
        check_int("layers", self.layers, 1)
        check_int("init_channels", self.init_channels, 1)
        check_int("steps", self.steps, 1)
        check_int("multiplier", self.multiplier, 1)
        if self.multiplier > self.steps:
            raise invalid(
                "multiplier",
                f"an integer in 1..steps={self.steps}",
                self.multiplier,
            )
        if not isinstance(self.shared_per_cell_type, bool):
            raise invalid(
                "shared_per_cell_type",
                "True or False",
                self.shared_per_cell_type,
            )
        if self.edge_operators is not None:
            object.__setattr__(
                self, "edge_operators", self._checked_edge_operators()
            )

    def _checked_edge_operators(self) -> dict:
        # num_edges("pruned", steps), inline: SPACES below is built before
        # the module's functions exist.
        count = sum(j + NUM_CELL_INPUTS for j in range(self.steps))
        expected = (
            f"{{'normal': lists, 'reduce': lists}}: one operator list per "
            f"edge of the pruned layout ({count}"
            f" for steps={self.steps}), all of one length, names from "
            f"{self.operators}, in a shared space"
        )
        value = self.edge_operators
        if (
            not self.shared_per_cell_type
            or not isinstance(value, dict)
            or set(value) != {"normal", "reduce"}
        ):
            raise invalid("edge_operators", expected, value)
        out = {}
        for key, lists in value.items():
            lists = tuple(tuple(ops) for ops in lists)
            if (
                len(lists) != count
                or len({len(ops) for ops in lists}) != 1
                or any(
                    len(set(ops)) != len(ops)
                    or not set(ops) <= set(self.operators)
                    for ops in lists
                )
            ):
                raise invalid("edge_operators", expected, value)
            out[key] = lists
        return out

    def edge_operators_for(self, layers: int):
        """``edge_operators`` of the cell types a ``layers``-cell net has
        (the `supernet.SearchNetwork` argument), or None."""
        if self.edge_operators is None:
            return None
        return {
            key: [list(ops) for ops in self.edge_operators[key]]
            for key in cell_types_present(layers)
        }

    @property
    def concat(self) -> tuple[int, ...]:
        """States concatenated into the cell output (the last nodes)."""
        return tuple(
            range(
                NUM_CELL_INPUTS + self.steps - self.multiplier,
                NUM_CELL_INPUTS + self.steps,
            )
        )

    @property
    def reduction_cells(self) -> list[int]:
        """Indices of the reduction cells (``reduction_indices(layers)``)."""
        return reduction_indices(self.layers)

    @property
    def num_arch_sets(self) -> int:
        """Independent sets of architecture parameters (cell genotypes)."""
        if self.shared_per_cell_type:
            return len(cell_types_present(self.layers))
        return self.layers


# Paper, section 3.1.2 and Appendix C.2 (method.md section 5).
SPACES = {
    # S1: the DARTS space; 8 cells, C = 16, all 8 operators, shared per type.
    "s1": SearchSpace(
        name="s1",
        operators=DARTS_PRIMITIVES,
        layers=8,
        init_channels=16,
        shared_per_cell_type=True,
    ),
    # S2: re-training depth and width, 2 operators, one set per cell.
    "s2": SearchSpace(
        name="s2",
        operators=("skip_connect", "sep_conv_3x3"),
        layers=20,
        init_channels=36,
        shared_per_cell_type=False,
    ),
    # S3: R-DARTS' reduced space (Zela et al., 2020), shared per type.
    "s3": SearchSpace(
        name="s3",
        operators=("sep_conv_3x3", "skip_connect", "none"),
        layers=8,
        init_channels=16,
        shared_per_cell_type=True,
    ),
}


# R-DARTS' spaces (Zela et al., ICLR 2020; automl/RobustDARTS src/spaces.py),
# under their own names (../shared/baselines.md, "Name clash"): 8 cells,
# C = 16, shared per cell type, alpha columns in R-DARTS' order. S1 gives
# each edge its own two operators; S4 pairs ``noise`` with sep_conv_3x3.
_SKIP, _SEP3 = "skip_connect", "sep_conv_3x3"
_DIL3, _DIL5 = "dil_conv_3x3", "dil_conv_5x5"
_MAX, _AVG = "max_pool_3x3", "avg_pool_3x3"
RDARTS_S1_EDGES = {
    "normal": (
        (_SKIP, _DIL3), (_SKIP, _DIL5), (_SKIP, _DIL5), (_SKIP, _SEP3),
        (_SKIP, _DIL3), (_MAX, _SKIP), (_SKIP, _SEP3), (_SKIP, _SEP3),
        (_SKIP, _DIL3), (_SKIP, _SEP3), (_MAX, _SKIP), (_SKIP, _DIL3),
        (_DIL3, _DIL5), (_DIL3, _DIL5),
    ),
    "reduce": (
        (_MAX, _AVG), (_MAX, _DIL3), (_MAX, _AVG), (_MAX, _AVG),
        (_SKIP, _DIL5), (_MAX, _AVG), (_MAX, _SEP3), (_SKIP, _DIL3),
        (_SKIP, _DIL5), (_MAX, _AVG), (_MAX, _AVG), (_SKIP, _DIL5),
        (_SKIP, _DIL5), (_SKIP, _DIL5),
    ),
}
SPACES.update(
    rdarts_s1=SearchSpace(
        name="rdarts_s1",
        operators=(_MAX, _AVG, _SKIP, _SEP3, _DIL3, _DIL5),
        layers=8,
        init_channels=16,
        edge_operators=RDARTS_S1_EDGES,
    ),
    rdarts_s2=SearchSpace(
        name="rdarts_s2",
        operators=(_SKIP, _SEP3),
        layers=8,
        init_channels=16,
    ),
    rdarts_s3=SearchSpace(
        name="rdarts_s3",
        operators=(NONE_OP, _SKIP, _SEP3),
        layers=8,
        init_channels=16,
    ),
    rdarts_s4=SearchSpace(
        name="rdarts_s4",
        operators=(NOISE_OP, _SEP3),
        layers=8,
        init_channels=16,
    ),
)


def space_names() -> tuple[str, ...]:
    """Names accepted by ``get_space``."""
    return tuple(SPACES)


def get_space(name: str, **overrides) -> SearchSpace:
    """Returns a named search space, optionally with some fields changed.

    Args:
        name: one of ``SPACES`` (case-insensitive).
        **overrides: new values for ``layers``, ``init_channels`` or
            ``operators`` (e.g. a smaller network for quick CPU runs).

    Returns:
        A validated ``SearchSpace``.

    Raises:
        ValueError: for an unknown name or override, or an invalid value.
    """
    key = name.lower() if isinstance(name, str) else name
    if key not in SPACES:
        raise invalid("name", f"one of {space_names()}", name)
    for field in overrides:
        if field not in _OVERRIDABLE:
            raise invalid(
                "overrides", f"keys from {_OVERRIDABLE}", sorted(overrides)
            )
    return dataclasses.replace(SPACES[key], **overrides)


def reduction_indices(layers: int) -> list[int]:
    """Indices of the reduction cells: at 1/3 and 2/3 of the depth.

    DARTS reference ``model_search.py``: cell ``i`` reduces when
    ``i in [layers // 3, 2 * layers // 3]``. For ``layers < 3`` both
    positions can coincide; the index is then listed once.

    Args:
        layers: number of cells.

    Returns:
        The sorted distinct reduction-cell indices.
    """
    check_int("layers", layers, 1)
    return sorted({layers // 3, 2 * layers // 3})


def cell_types_present(layers: int) -> tuple[str, ...]:
    """The cell types (``normal``, ``reduce``) in a ``layers``-cell net."""
    n_reduce = len(reduction_indices(layers))
    types = ("normal",) if layers > n_reduce else ()
    return types + ("reduce",)


def edge_list(layout: str, steps: int = DEFAULT_STEPS) -> list[list[int]]:
    """Input states of each intermediate node under an edge layout.

    State 0 is ``c_{k-2}``, state 1 is ``c_{k-1}``, node ``j`` is state
    ``j + 2``. Rows of architecture weights follow this order, concatenated
    over nodes (the DARTS reference order).

    Args:
        layout: one of ``EDGE_LAYOUTS``; for ``searched`` this is stage 1
            (all edges).
        steps: intermediate nodes per cell.

    Returns:
        For each node ``j``, the list of its input states.

    Raises:
        ValueError: for an unknown layout or a bad ``steps``.
    """
    check_layout(layout)
    check_int("steps", steps, 1)
    if layout == "fixed":
        return [[0, 1]] + [[j + 1, 0] for j in range(1, steps)]
    return [list(range(j + NUM_CELL_INPUTS)) for j in range(steps)]


def num_edges(layout: str, steps: int = DEFAULT_STEPS) -> int:
    """Number of searched edges per cell (14 or 8 for 4 steps)."""
    return sum(len(inputs) for inputs in edge_list(layout, steps))


def input_pairs(j: int) -> list[tuple[int, int]]:
    """All pairs ``(i1, i2)``, ``i1 < i2``, of the inputs of node ``j``.

    These index the stage-1 pair logits of the ``searched`` layout (paper
    eq. 16), in ``itertools.combinations`` order: ``(0, 1), (0, 2), (1, 2),
    ...``.

    Args:
        j: the node index (0-based).

    Returns:
        ``C(j + 2, 2)`` pairs.
    """
    check_int("j", j, 0)
    return list(itertools.combinations(range(j + NUM_CELL_INPUTS), 2))


def num_pairs(steps: int = DEFAULT_STEPS) -> int:
    """Total pair logits per cell for the ``searched`` layout (20 for 4)."""
    check_int("steps", steps, 1)
    return sum(len(input_pairs(j)) for j in range(steps))


def cell_choices(operators, layout: str, steps: int = DEFAULT_STEPS) -> int:
    """Number of distinct discrete cells.

    Only operators other than ``none`` count (the derivation never keeps
    ``none``). ``pruned`` and ``searched``: node ``j`` chooses 2 of its
    ``j + 2`` inputs and an operator on each, ``prod_j C(j + 2, 2) k^2``.
    ``fixed``: an operator on each of the ``2 * steps`` edges, ``k^(2 steps)``.

    Args:
        operators: candidate operator names.
        layout: one of ``EDGE_LAYOUTS``.
        steps: intermediate nodes per cell.

    Returns:
        The exact count.
    """
    ops = check_operators(operators)
    k = sum(op != NONE_OP for op in ops)
    check_layout(layout)
    check_int("steps", steps, 1)
    if layout == "fixed":
        return k ** (INPUTS_PER_NODE * steps)
    count = 1
    for j in range(steps):
        count *= math.comb(j + NUM_CELL_INPUTS, INPUTS_PER_NODE)
        count *= k**INPUTS_PER_NODE
    return count


def space_size(space: SearchSpace, layout: str = "pruned") -> int:
    """Number of distinct discrete architectures in a space.

    ``cell_choices(...) ** num_arch_sets``: one independent cell per set of
    architecture parameters (two, normal and reduction, for shared spaces;
    one per cell otherwise). This convention reproduces the paper's
    numbers (section 3.1.2): S1 pruned ``(180 * 7^8)^2 = 1.0767e18``
    ("1.1e18"), S2 with searched (or pruned) edges ``(180 * 2^8)^20 =
    1.863e93`` ("1.9e93"). S2 with fixed edges has ``2^160 = 1.46e48``
    architectures; the paper's S2 number counts the edge choice too.

    Args:
        space: the search space.
        layout: one of ``EDGE_LAYOUTS``.

    Returns:
        The exact count, a Python int.
    """
    per_cell = cell_choices(space.operators, layout, space.steps)
    return per_cell**space.num_arch_sets
