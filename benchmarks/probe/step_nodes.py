"""Graph nodes of the traced S1 search step, of the checkout in the cwd.

    cd SOME_CHECKOUT && python /path/to/benchmarks/probe/step_nodes.py \
        ARCH HVP [LAYERS C SIZE]

Traces `BilevelSearch.train_step` of the supernet (default S1: 8 cells,
C = 16, 32x32) at batch 2 without running it and prints one JSON line with
the node count (`as_graph_def()`; independent of the batch) and the trace
seconds. The package is imported from the current directory, so the same
script counts an older checkout (benchmarks/s1_issue13.sh, "before" rows).
tests/vision/test_search_step_size.py bounds the same count.
"""

import json
import os
import sys
import time

sys.path.insert(0, os.getcwd())
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from tf_amended_darts.core import engine  # noqa: E402
from tf_amended_darts.vision.supernet import SearchNetwork  # noqa: E402

BATCH = 2


def main(argv):
    arch, hvp = argv[1:3]
    layers, channels, size = (int(x) for x in (argv[3:6] or (8, 16, 32)))
    tf.config.optimizer.set_experimental_options(
        {"disable_meta_optimizer": True})
    net = SearchNetwork(10, layers=layers, init_channels=channels)
    net.build((None, size, size, 3))
    search = engine.BilevelSearch(net, arch_grad=arch, hvp=hvp)
    search.compile()
    rng = np.random.default_rng(0)

    def batch():
        return (
            tf.constant(rng.normal(size=(BATCH, size, size, 3)), tf.float32),
            tf.constant(rng.integers(0, 10, BATCH), tf.int32),
        )

    t = time.perf_counter()
    graph = tf.function(search.train_step).get_concrete_function(
        (batch(), batch())).graph
    trace_s = time.perf_counter() - t
    print(json.dumps({
        "root": os.getcwd(), "arch_grad": arch, "hvp": hvp,
        "layers": layers, "C": channels, "size": size,
        "nodes": len(graph.as_graph_def().node),
        "trace_s": round(trace_s, 1),
    }))


if __name__ == "__main__":
    main(sys.argv)
