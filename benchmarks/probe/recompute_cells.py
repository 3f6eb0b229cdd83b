"""Measured alternative (issue 13, NOTES_memory.md "Recomputation"), not
kept: the supernet's cells recomputed in the estimator's functional passes.

`patch(net)` makes every cell of a built `SearchNetwork`, when called in
training mode inside `frozen_statistics()` (the nested passes of the
estimator), run through `nn.recompute.recompute`: the cell's variable
values (those of the enclosing `stateless_call`) become explicit inputs and
the recomputation maps them back in its own `keras.StatelessScope`. Other
calls (the weight step, which updates moving statistics) are unchanged.
Not with drop-path (the recomputed cells would draw other masks).

Checked (float64, 3-cell supernet, C=4, 8x8, batch 6, operators max_pool,
skip, sep_conv; /tmp script, numbers in NOTES_memory.md): loss 4e-16
absolute, first derivatives 1.5e-15, ``H v`` 4.5e-15 and ``D H v``
4.0e-15 relative to the plain network; graph 85,651 nodes against 40,277.
"""

import keras

from tf_amended_darts.nn.contexts import frozen_statistics, statistics_frozen
from tf_amended_darts.nn.recompute import recompute


def _recomputed_call(cell, call):
    def wrapped(
        inputs,
        edge_weights,
        pair_weights=None,
        training=False,
        drop_prob=None,
        seed=None,
    ):
        if not (training and statistics_frozen()):
            return call(
                inputs,
                edge_weights,
                pair_weights,
                training=training,
                drop_prob=drop_prob,
                seed=seed,
            )
        if drop_prob is not None:
            raise ValueError("recompute_cells does not support drop-path.")
        variables = list(cell.variables)
        values = [keras.ops.convert_to_tensor(v.value) for v in variables]
        pairs = list(pair_weights) if pair_weights is not None else []
        n = 3 + len(pairs)

        def fn(xs):
            mapping = list(zip(variables, xs[n:], strict=True))
            with keras.StatelessScope(state_mapping=mapping):
                with frozen_statistics():
                    return call(
                        (xs[0], xs[1]),
                        xs[2],
                        xs[3:n] if pairs else None,
                        training=True,
                    )

        s0, s1 = inputs
        return recompute(fn, [s0, s1, edge_weights, *pairs, *values])

    return wrapped


def patch(net):
    """Recompute the cells of the built SearchNetwork ``net`` (in place)."""
    for cell in net.cells:
        cell.call = _recomputed_call(cell, cell.call)
    return net
