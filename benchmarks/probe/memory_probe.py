"""Memory probe of one search step: RSS and time of trace vs first run.

    python benchmarks/probe/memory_probe.py ARCH HVP LAYERS C SIZE BATCH \
        [VARIANT]

Prints one JSON line: graph nodes (as_graph_def), trace seconds, RSS after
building / tracing / first execution, peak RSS, second-step seconds.
VARIANT names a function of variants.py that replaces
`bilevel.amended_product_exact` (alternatives measured, not kept).
TRACEMALLOC=1 also reports Python allocations during tracing;
RECOMPUTE_CELLS=1 recomputes the cells (recompute_cells.py).
"""

import gc
import json
import os
import resource
import sys
import time
from collections import Counter

ROOT = os.path.dirname(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
)
sys.path.insert(0, ROOT)
from probe_setup import search_step  # noqa: E402

from tf_amended_darts.core import bilevel  # noqa: E402


def rss():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS"):
                return int(line.split()[1]) / 1024


def peak():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


arch, hvp, layers, C, size, batch = sys.argv[1:7]
variant = sys.argv[7] if len(sys.argv) > 7 else "current"
layers, C, size, batch = int(layers), int(C), int(size), int(batch)
tm = os.environ.get("TRACEMALLOC")
if os.environ.get("BNCUSTOM"):
    raise SystemExit(
        "BNCUSTOM: the prototype patch is now layers.normalize_batch"
    )
if variant != "current":
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "variants",
        os.path.join(os.path.dirname(os.path.abspath(__file__)), "variants.py"),
    )
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    bilevel.amended_product_exact = getattr(mod, variant)
if os.environ.get("NO_STACK"):  # ops keep no Python stack trace
    from tensorflow.python.framework import ops as tf_ops

    _extract = tf_ops.tf_stack.extract_stack

    class _NoStack:
        @staticmethod
        def extract_stack(stacklevel=1):
            return _extract(stacklevel=10_000)

    tf_ops.tf_stack = _NoStack
recompute = os.environ.get("RECOMPUTE_CELLS") == "1"
step, data = search_step(arch, hvp, layers, C, size, batch, recompute=recompute)
gc.collect()
r0 = rss()
out = {"variant": variant, "arch": arch, "hvp": hvp, "rss_built": r0}
out["recompute_cells"] = recompute
if tm:
    import tracemalloc

    tracemalloc.start()
t = time.perf_counter()
conc = step.get_concrete_function(data)
out["trace_s"] = time.perf_counter() - t
out["rss_traced"] = rss()
if tm:
    cur, pk = tracemalloc.get_traced_memory()
    out["tracemalloc_cur_mb"] = cur / 2**20
    out["tracemalloc_peak_mb"] = pk / 2**20
    snap = tracemalloc.take_snapshot()
    tracemalloc.stop()
    for st in snap.statistics("filename")[:8]:
        print(st, file=sys.stderr)
t = time.perf_counter()
gd = conc.graph.as_graph_def()
out["nodes"] = len(gd.node)
out["lib_fns"] = len(gd.library.function)
out["lib_nodes"] = sum(len(f.node_def) for f in gd.library.function)
out["graphdef_mb"] = gd.ByteSize() / 2**20
out["top_ops"] = Counter(n.op for n in gd.node).most_common(12)
del gd
gc.collect()
out["rss_after_graphdef"] = rss()
t = time.perf_counter()
r = step(data)
float(r["loss"])
out["first_exec_s"] = time.perf_counter() - t
out["rss_after_first_exec"] = rss()
out["peak_after_first"] = peak()
t = time.perf_counter()
r = step(data)
float(r["loss"])
out["second_s"] = time.perf_counter() - t
out["peak"] = peak()
print(json.dumps(out))
