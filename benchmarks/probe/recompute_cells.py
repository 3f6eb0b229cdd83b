"""Measured alternative (issue 13; benchmarks/s1_cpu.md section 8,
"Recomputed cells"), not kept: the supernet's cells recomputed in the
estimator's functional passes.

`patch(net, cells)` makes the first ``cells`` cells (all: None) of a built
`SearchNetwork`, when called in training mode inside `frozen_statistics()`
(the nested passes of the estimator), run through `nn.recompute.recompute`:
the cell's variable values (those of the enclosing `stateless_call`) become
explicit inputs and the recomputation maps them back in its own
`keras.StatelessScope`. Other calls (the weight step, which updates moving
statistics) are unchanged. Not with drop-path, skip dropout or PC-DARTS
edge scales (the recomputed cells would draw other masks): an error.

Checked (float64, 3-cell supernet, C = 4, 8x8, batch 6, the S1 operators;
``python benchmarks/probe/recompute_cells.py``, 2026-12-06): ``g1``,
``g2`` and the amended gradient within 1.9e-15 (relative) of the plain
network's; graph 192,115 nodes against 88,539. S1, batch 32:
`rss_probe.py amended exact 32 0 0 recompute_cells[:N]`.
"""

import os
import sys

import keras
import numpy as np
import tensorflow as tf

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))))

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
        **kwargs,
    ):
        if not (training and statistics_frozen()):
            return call(
                inputs,
                edge_weights,
                pair_weights,
                training=training,
                drop_prob=drop_prob,
                seed=seed,
                **kwargs,
            )
        unsupported = [k for k, v in kwargs.items() if v is not None]
        if drop_prob is not None or unsupported:
            raise ValueError(
                "recompute_cells supports no drop-path, skip dropout or "
                f"edge scales; received drop_prob={drop_prob!r}, "
                f"{unsupported}."
            )
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


def patch(net, cells=None):
    """Recompute the first ``cells`` cells (all: None) of the built
    SearchNetwork ``net`` (in place)."""
    for cell in net.cells[:cells]:
        cell.call = _recomputed_call(cell, cell.call)
    return net


def _amended(recomputed):
    """The amended exact estimate on a float64 3-cell supernet, and the
    traced graph's node count."""
    from tf_amended_darts.core import engine
    from tf_amended_darts.jobs import precision

    keras.utils.set_random_seed(0)
    net = precision.search_network("float64", 10, 8, layers=3,
                                   init_channels=4)
    if recomputed:
        patch(net)
    search = engine.BilevelSearch(net, arch_grad="amended", hvp="exact")
    search.compile()
    rng = np.random.default_rng(1)

    def batch():
        return (tf.constant(rng.normal(size=(6, 8, 8, 3))),
                tf.constant(rng.integers(0, 10, 6), tf.int32))

    train, val = batch(), batch()
    step = tf.function(lambda: search.arch_gradient(train, val)[0])
    nodes = len(step.get_concrete_function().graph.as_graph_def().node)
    return step(), nodes


def main():
    (plain, n_plain), (recomputed, n_recomputed) = (
        _amended(False), _amended(True))
    for name in ("g1", "g2", "arch_grads"):
        a = np.concatenate([np.ravel(x) for x in getattr(plain, name)])
        b = np.concatenate([np.ravel(x) for x in getattr(recomputed, name)])
        print(f"{name}: relative difference "
              f"{np.linalg.norm(a - b) / np.linalg.norm(a):.2e}")
    print(f"graph nodes: {n_recomputed} recomputed, {n_plain} plain")


if __name__ == "__main__":
    main()
