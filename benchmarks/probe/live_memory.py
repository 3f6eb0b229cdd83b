"""What is alive at the peak of one search step, by pass.

    python benchmarks/probe/live_memory.py ARCH HVP LAYERS C SIZE BATCH \
        [--top=N] [--variant=NAME]

Builds the measured search step (probe_setup.py), runs it twice, then
profiles one step with the TensorFlow profiler and replays the CPU
allocator's MemoryAllocation / MemoryDeallocation events (host plane of
``xplane.pb``) in time order. At the peak of live tensor bytes it groups
the live allocations by the pass of the op that allocated them:

* ``val fwd`` / ``train fwd``: forward ops of the validation / training
  functional passes (`engine.BilevelSearch.functional_loss`, which the
  probe wraps in the name scopes ``val_pass`` / ``train_pass``);
* ``... bwd1``: first backward pass (``gradient_tape/<scope>``);
* ``... bwd2``: second backward pass (``gradient_tape/gradient_tape/...``);
  the training passes' groups are split into ``hv`` and ``dhv`` by graph
  reachability (ancestors of ``H v``, which the probe names);
* ``weight step``: the weight step's stateful pass; ``other``: the rest.

Prints one JSON line: the allocator's peak (``get_memory_info``), the
replayed peak, its time within the step, and the live bytes per group at
the peak (and at the end of each pass), plus the largest live tensors'
op names (``--top``). ``--variant`` names a function of variants.py that
replaces `bilevel.amended_product_exact`.
"""

import collections
import glob
import json
import os
import resource
import sys
import tempfile
import time

ROOT = os.path.dirname(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
)
sys.path.insert(0, ROOT)
import tensorflow as tf  # noqa: E402
from probe_setup import search_step  # noqa: E402
from tensorflow.tsl.profiler.protobuf import xplane_pb2  # noqa: E402

from tf_amended_darts.core import bilevel, engine  # noqa: E402

MB = 2**20


def _name_passes():
    """Wraps the functional losses in name scopes and names the products'
    outputs, so that allocations can be attributed to passes."""
    original = engine.BilevelSearch.functional_loss
    counter = collections.Counter()

    def functional_loss(self, x, y, record=None):
        scope = "val_pass" if record is not None else "train_pass"
        loss_fn = original(self, x, y, record)

        def scoped(w, a):
            counter[scope] += 1
            with tf.name_scope(scope):
                return loss_fn(w, a)

        return scoped

    engine.BilevelSearch.functional_loss = functional_loss
    product = bilevel.amended_product_exact

    def named_product(*args, **kwargs):
        hv, dhv = product(*args, **kwargs)
        hv = [tf.identity(t, name="PROBE_HV") for t in hv]
        dhv = [tf.identity(t, name="PROBE_DHV") for t in dhv]
        return hv, dhv

    bilevel.amended_product_exact = named_product


def _ancestors(graph_def, marker):
    inputs = {n.name: [i.lstrip("^").split(":")[0] for i in n.input]
              for n in graph_def.node}
    todo = [n.name for n in graph_def.node if n.name.startswith(marker)]
    seen = set(todo)
    while todo:
        for parent in inputs.get(todo.pop(), ()):
            if parent not in seen:
                seen.add(parent)
                todo.append(parent)
    return seen


def _in(name, nodes):
    """Whether node `name`, or the function call it was inlined from, is
    in `nodes`."""
    while name:
        if name in nodes:
            return True
        name = name.rpartition("/")[0]
    return False


def _classify(name, hv_nodes):
    if "val_pass" in name:
        kind = "val"
    elif "train_pass" in name:
        kind = "train"
    else:
        return "weight step" if "search_network" in name else "other"
    depth = ("fwd", "bwd1", "bwd2")[min(name.count("gradient_tape"), 2)]
    if kind == "val":
        return f"val {depth}"
    return f"train {depth} " + ("hv" if _in(name, hv_nodes) else "dhv")


def _events(logdir):
    (path,) = glob.glob(os.path.join(logdir, "**", "*.xplane.pb"),
                        recursive=True)
    space = xplane_pb2.XSpace()
    with open(path, "rb") as f:
        space.ParseFromString(f.read())
    out = []
    for plane in space.planes:
        if not plane.name.startswith("/host:CPU"):
            continue
        stat_names = {k: v.name for k, v in plane.stat_metadata.items()}
        for line in plane.lines:
            for event in line.events:
                kind = plane.event_metadata[event.metadata_id].name
                if kind not in ("MemoryAllocation", "MemoryDeallocation"):
                    continue
                stats = {}
                for s in event.stats:
                    key = stat_names[s.metadata_id]
                    if s.HasField("ref_value"):
                        value = plane.stat_metadata[s.ref_value].name
                    elif s.HasField("str_value"):
                        value = s.str_value
                    elif s.HasField("uint64_value"):
                        value = s.uint64_value
                    else:
                        value = s.int64_value
                    stats[key] = value
                t = line.timestamp_ns * 1000 + event.offset_ps
                out.append((t, kind == "MemoryAllocation", stats))
    out.sort(key=lambda e: e[0])
    return out


def main(argv):
    arch, hvp, layers, C, size, batch = argv[1:7]
    top = next((int(a.split("=")[1]) for a in argv
                if a.startswith("--top=")), 15)
    variant = next((a.split("=")[1] for a in argv
                    if a.startswith("--variant=")), None)
    if variant:
        import importlib.util

        spec = importlib.util.spec_from_file_location(
            "variants", os.path.join(os.path.dirname(__file__), "variants.py")
        )
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        bilevel.amended_product_exact = getattr(module, variant)
    _name_passes()
    step, data = search_step(arch, hvp, int(layers), int(C), int(size),
                             int(batch))
    t = time.perf_counter()
    concrete = step.get_concrete_function(data)
    trace_s = time.perf_counter() - t
    graph_def = concrete.graph.as_graph_def()
    nodes = len(graph_def.node)
    hv_nodes = _ancestors(graph_def, "PROBE_HV")
    del graph_def
    t = time.perf_counter()
    float(step(data)["loss"])
    first_s = time.perf_counter() - t
    float(step(data)["loss"])
    rss_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    tf.config.experimental.reset_memory_stats("CPU:0")
    base = tf.config.experimental.get_memory_info("CPU:0")["current"]
    logdir = tempfile.mkdtemp(prefix="live_memory_")
    tf.profiler.experimental.start(logdir)
    float(step(data)["loss"])
    tf.profiler.experimental.stop()
    info = tf.config.experimental.get_memory_info("CPU:0")
    events = _events(logdir)
    live, live_bytes, peak, peak_i = {}, 0, 0, 0
    for i, (_, alloc, stats) in enumerate(events):
        addr = stats.get("addr")
        if alloc:
            size_b = int(stats.get("allocation_bytes", 0))
            live[addr] = (size_b, str(stats.get("tf_op", "")))
            live_bytes += size_b
            if live_bytes > peak:
                peak, peak_i = live_bytes, i
        elif addr in live:
            live_bytes -= live.pop(addr)[0]
    # replay up to the peak to list what is live there
    live = {}
    for _, alloc, stats in events[: peak_i + 1]:
        addr = stats.get("addr")
        if alloc:
            live[addr] = (int(stats.get("allocation_bytes", 0)),
                          str(stats.get("tf_op", "")))
        else:
            live.pop(addr, None)
    groups = collections.Counter()
    ops = collections.Counter()
    for size_b, op in live.values():
        group = _classify(op, hv_nodes)
        groups[group] += size_b
        ops[group + " | " + op] += size_b
    t0 = events[0][0] if events else 0
    t1 = events[-1][0] if events else 0
    print(json.dumps({
        "variant": variant, "arch": arch, "hvp": hvp,
        "layers": int(layers), "C": int(C),
        "size": int(size), "batch": int(batch),
        "nodes": nodes, "trace_s": round(trace_s, 1),
        "first_exec_s": round(first_s, 1), "rss_peak_mb": round(rss_peak),
        "allocator_peak_mb": round(info["peak"] / MB),
        "allocator_base_mb": round(base / MB),
        "replayed_peak_mb": round(peak / MB),
        "peak_at": round((events[peak_i][0] - t0) / max(t1 - t0, 1), 3),
        "events": len(events),
        "live_at_peak_mb": {k: round(v / MB, 1)
                            for k, v in groups.most_common()},
        "top_ops_mb": [(k, round(v / MB, 1))
                       for k, v in ops.most_common(top)],
    }))


if __name__ == "__main__":
    main(sys.argv)
