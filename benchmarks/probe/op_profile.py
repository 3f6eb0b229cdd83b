"""Where a search step's time goes, by TensorFlow op type.

    python benchmarks/probe/op_profile.py ARCH HVP LAYERS C SIZE BATCH \
        [--grappler] [--steps=N]

Builds the supernet and `BilevelSearch`, runs two untimed steps, then
profiles N steps (default 2) with the TensorFlow profiler and sums the
executor's op events from the host plane of the trace (``xplane.pb``) by op
type. Prints the wall seconds per step, the summed op seconds per step (over
both cores' threads, so it can exceed the wall time) and the op types with
the largest share, as one JSON line.
"""

import glob
import json
import os
import sys
import tempfile
import time
from collections import Counter

ROOT = os.path.dirname(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
)
sys.path.insert(0, ROOT)
import tensorflow as tf  # noqa: E402
from probe_setup import search_step  # noqa: E402
from tensorflow.tsl.profiler.protobuf import xplane_pb2  # noqa: E402


def op_seconds(logdir):
    """``Counter(op type -> seconds)`` summed over the trace's op events."""
    (path,) = glob.glob(os.path.join(logdir, "**", "*.xplane.pb"),
                        recursive=True)
    space = xplane_pb2.XSpace()
    with open(path, "rb") as f:
        space.ParseFromString(f.read())
    totals = Counter()
    for plane in space.planes:
        if not plane.name.startswith("/host:CPU"):
            continue
        for line in plane.lines:
            if not line.name.startswith("tf_Compute"):
                continue  # executor threads; Eigen's workers run inside ops
            for event in line.events:
                meta = plane.event_metadata[event.metadata_id]
                # Executor op events are named "op_name:OpType".
                if ":" not in meta.name or meta.name.startswith(
                        ("ThreadpoolListener", "ExecutorState")):
                    continue
                kind = meta.display_name or meta.name.rsplit(":", 1)[-1]
                totals[kind] += event.duration_ps * 1e-12
    return totals


def main(argv):
    arch, hvp, layers, C, size, batch = argv[1:7]
    grappler = "--grappler" in argv
    steps = next((int(a.split("=")[1]) for a in argv
                  if a.startswith("--steps=")), 2)
    layers, C, size, batch = int(layers), int(C), int(size), int(batch)
    step, data = search_step(arch, hvp, layers, C, size, batch, grappler)
    t = time.perf_counter()
    float(step(data)["loss"])
    first = time.perf_counter() - t
    float(step(data)["loss"])
    logdir = tempfile.mkdtemp(prefix="op_profile_")
    tf.profiler.experimental.start(logdir)
    t = time.perf_counter()
    for _ in range(steps):
        float(step(data)["loss"])
    wall = (time.perf_counter() - t) / steps
    tf.profiler.experimental.stop()
    totals = op_seconds(logdir)
    op_total = sum(totals.values()) / steps
    top = [(k, round(v / steps, 3), round(v / steps / op_total, 3))
           for k, v in totals.most_common(25)]
    print(json.dumps({
        "arch": arch, "hvp": hvp, "layers": layers, "C": C, "size": size,
        "batch": batch, "grappler": grappler, "first_step_s": round(first, 1),
        "wall_s_per_step": round(wall, 3),
        "op_s_per_step": round(op_total, 3), "top": top,
    }))


if __name__ == "__main__":
    main(sys.argv)
