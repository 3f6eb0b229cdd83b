"""Peak RSS of the S1 search step under process-level variations.

    MALLOC_MMAP_THRESHOLD_=65536 MALLOC_TRIM_THRESHOLD_=65536 \
        python benchmarks/probe/rss_probe.py ARCH HVP BATCH [TRIM_S] \
        [TRACEBACKS] [VARIANT]

Runs `launchers/bench.py`'s measurement of the S1 step (8 cells, C = 16,
32x32, Grappler off, digits pipeline, 3 steps after 1 warm-up) in this
process. With TRIM_S > 0 a thread calls glibc's ``malloc_trim(0)`` every
TRIM_S seconds throughout, which hands freed heap pages (the graph copies
that tracing and function instantiation free, fragments below the mmap
threshold) back to the kernel; TRIM_S = 0 measures without it. Prints
bench.py's JSON row plus ``trim_s``. Comparing the two peaks says whether
the RSS above TensorFlow's own allocations is fragmentation that trimming
recovers (benchmarks/s1_cpu.md, section 7). TRACEBACKS = 1 (default) records
each graph op's Python stack trace as TensorFlow does by default, 0 not
(`graph_settings.set_op_tracebacks`): what those traces cost per node.
VARIANT names a function of variants.py that replaces
`bilevel.amended_product_exact` (``--arch_grad=amended --hvp=exact``), or
is ``recompute_cells[:N]``: the supernet's first N cells (all without N)
recomputed in the estimator's passes (recompute_cells.py), or is
``opt_level_l0``: the function runtime's graph optimiser off
(`runtime_optimizer_off`).
"""

import ctypes
import json
import os
import sys
import threading
import time

ROOT = os.path.dirname(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
)
sys.path.insert(0, ROOT)

from launchers import bench  # noqa: E402


def start_trimmer(period_s):
    """A daemon thread that trims glibc's heap every `period_s` seconds."""
    libc = ctypes.CDLL("libc.so.6")

    def loop():
        while True:
            libc.malloc_trim(0)
            time.sleep(period_s)

    threading.Thread(target=loop, daemon=True).start()


def patch_search_network(variant):
    """``recompute_cells[:N]``: bench's network recomputes its first N cells
    (all without N) in the estimator's passes (recompute_cells.py)."""
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import recompute_cells

    from tf_amended_darts.jobs import precision

    _, _, count = variant.partition(":")
    cells = int(count) if count else None
    build = precision.search_network

    def search_network(*args, **kwargs):
        return recompute_cells.patch(build(*args, **kwargs), cells)

    precision.search_network = search_network


def runtime_optimizer_off():
    """``opt_level_l0``: the function runtime instantiates the step without
    its graph optimiser (common subexpression elimination and constant
    folding, `OptimizerOptions.L1` by default; Grappler is separate and off
    here anyway), through the eager context's config before TensorFlow
    starts (a private attribute: a probe, not a setting of the package)."""
    from tensorflow.core.protobuf import config_pb2
    from tensorflow.python.eager import context

    config = config_pb2.ConfigProto()
    options = config.graph_options.optimizer_options
    options.opt_level = config_pb2.OptimizerOptions.L0
    options.do_common_subexpression_elimination = False
    options.do_constant_folding = False
    options.do_function_inlining = True
    ctx = context.context()
    assert ctx._context_handle is None, "TensorFlow has already started"
    ctx._config = config


def main(argv):
    arch, hvp, batch = argv[1], argv[2], int(argv[3])
    trim_s = float(argv[4]) if len(argv) > 4 else 0.0
    tracebacks = argv[5] != "0" if len(argv) > 5 else True
    variant = argv[6] if len(argv) > 6 else None
    if variant == "opt_level_l0":
        runtime_optimizer_off()
    elif variant and variant.startswith("recompute_cells"):
        patch_search_network(variant)
    elif variant:
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        import variants

        from tf_amended_darts.core import bilevel

        bilevel.amended_product_exact = getattr(variants, variant)
    bench.start_rss_guard(20.0)  # as bench.py --max_rss_gb=20
    if trim_s > 0:
        start_trimmer(trim_s)
    layers, channels, size, _ = bench.PRESETS["s1"]
    row = bench.measure(arch, hvp, layers, channels, size, batch, steps=3,
                        warmup=1, grappler=False, data="digits",
                        op_tracebacks=tracebacks)
    row["trim_s"] = trim_s
    row["tracebacks"] = tracebacks
    row["variant"] = variant
    print(json.dumps(row))


if __name__ == "__main__":
    main(sys.argv)
