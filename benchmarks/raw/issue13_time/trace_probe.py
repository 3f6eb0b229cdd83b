import sys, time, cProfile, pstats
arch, autograph, layers, prof = sys.argv[1], sys.argv[2] == "1", int(sys.argv[3]), sys.argv[4] if len(sys.argv) > 4 else ""
import numpy as np, tensorflow as tf
from tf_amended_darts.core import engine, graph_settings
from tf_amended_darts.core.lean_function import LeanFunction
from tf_amended_darts.jobs import precision
graph_settings.configure(False, False)
net = precision.search_network("float32", 10, 16, layers=layers, init_channels=8)
search = engine.BilevelSearch(net, arch_grad=arch, hvp="exact")
search.compile()
rng = np.random.default_rng(0)
b = lambda: (tf.constant(rng.normal(size=(8,16,16,3)), tf.float32), tf.constant(rng.integers(0,10,8), tf.int32))
pair = (b(), b())
step = LeanFunction(search.train_step, autograph=autograph)
t0 = time.perf_counter()
if prof:
    pr = cProfile.Profile(); pr.enable()
n = step.trace(pair)["graph_nodes"]
if prof:
    pr.disable(); pstats.Stats(pr).sort_stats(prof).print_stats(45)
t1 = time.perf_counter()
float(step(pair)["loss"])
t2 = time.perf_counter()
print(f"RESULT {arch} autograph={autograph} layers={layers} nodes={n} trace={t1-t0:.1f}s first_exec={t2-t1:.1f}s us/node={(t1-t0)/n*1e6:.0f}")
