"""Graph-size bound of the S1 amended search step (issue 13).

The amended exact step's memory is its graph (about 20 KB of RSS per node
while tracing and at the first execution: benchmarks/s1_cpu.md) plus the
activations the nested passes keep. Node counts are deterministic and do
not depend on the batch, so this test traces the S1 step (8 cells, C = 16,
32x32, the search's `BilevelSearch.train_step`) at batch 2 and fails when
its node count grows past the stated bound: a change that brings back
batch norm's autodiff derivatives, per-call constants or a second copy of
a pass shows up here before it shows up as memory. Tracing only (no
execution): minutes on 2 shared cores, so slow-marked.

Counted as `len(graph.as_graph_def().node)` of the traced step's concrete
function plus the nodes of the functions it calls (its library; none
without recomputed cells), TensorFlow 2.21 / Keras 3.15.1, Grappler
irrelevant (tracing).
Control edges are bounded too: a control dependency on a list of tensors
gives every waiting op one edge per tensor, which added ~2.5 GB to the S1
amended step with one extra node (benchmarks/s1_cpu.md section 8).

With recomputed cells (`--recompute_cells`, benchmarks/s1_cpu.md sections
10 and 13) the step's own graph is bounded, and its cells' nodes must live
in three non-inlined functions per body, one body for each kind of cell
(S1: 5 for 8 cells, the two normal cells of each resolution share one): a
recomputation that copies the cells' ops into the step again (18.3 GB at
S1 batch 32, section 8) or a body traced once per cell fails here.
"""

import numpy as np
import pytest
import tensorflow as tf

from tf_amended_darts.core import engine
from tf_amended_darts.vision.supernet import SearchNetwork

S1 = {"layers": 8, "init_channels": 16, "size": 32}
BATCH = 2

# (arch_grad, hvp): limit, with the count measured on the commit that set it
# (benchmarks/s1_cpu.md section 7):
LIMITS = {
    ("amended", "exact"): 285_000,  # 268,356 at 546aaa8 (TF 2.21)
}
CONTROL_EDGE_LIMITS = {
    ("amended", "exact"): 35_000,  # 29,513 at 546aaa8 (TF 2.21)
}
# --recompute_cells: 113,706 nodes at a64f2d1, 100,972 at a712f5c (shared
# bodies, forward function; bench.py, TF 2.21).
RECOMPUTED_LIMIT = 111_000
# S1's recomputed bodies: normal cells at three resolutions, two reductions
RECOMPUTED_BODIES = 5


def s1_step_graph(arch_grad, hvp, recompute_cells=False):
    """The GraphDef of the traced S1 search step at batch `BATCH`."""
    net = SearchNetwork(10, layers=S1["layers"],
                        init_channels=S1["init_channels"],
                        recompute_cells=recompute_cells)
    size = S1["size"]
    net.build((None, size, size, 3))
    search = engine.BilevelSearch(net, arch_grad=arch_grad, hvp=hvp)
    search.compile()
    rng = np.random.default_rng(0)

    def batch():
        return (
            tf.constant(rng.normal(size=(BATCH, size, size, 3)), tf.float32),
            tf.constant(rng.integers(0, 10, BATCH), tf.int32),
        )

    step = tf.function(search.train_step)
    return step.get_concrete_function((batch(), batch())).graph.as_graph_def()


def s1_step_nodes(arch_grad, hvp):
    """Graph nodes and control edges of the traced S1 search step at
    batch `BATCH`, its functions' included."""
    graph = s1_step_graph(arch_grad, hvp)
    nodes = [*graph.node,
             *(node for f in graph.library.function for node in f.node_def)]
    control_edges = sum(
        name.startswith("^") for node in nodes for name in node.input
    )
    return len(nodes), control_edges


@pytest.mark.slow
@pytest.mark.parametrize("arch_grad,hvp", sorted(LIMITS))
def test_s1_search_step_graph_size(arch_grad, hvp):
    nodes, control_edges = s1_step_nodes(arch_grad, hvp)
    print(f"S1 {arch_grad} {hvp} step: {nodes} nodes, "
          f"{control_edges} control edges")
    assert nodes <= LIMITS[arch_grad, hvp]
    assert control_edges <= CONTROL_EDGE_LIMITS[arch_grad, hvp]


@pytest.mark.slow
def test_s1_recomputed_step_keeps_its_cells_in_functions():
    graph = s1_step_graph("amended", "exact", recompute_cells=True)
    print(f"S1 amended exact step, recomputed cells: {len(graph.node)} "
          "nodes")
    assert len(graph.node) <= RECOMPUTED_LIMIT
    noinline = [f for f in graph.library.function if f.attr["_noinline"].b]
    assert len(noinline) == 3 * RECOMPUTED_BODIES
