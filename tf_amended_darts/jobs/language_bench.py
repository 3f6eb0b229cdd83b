"""Timing of one recurrent search step per estimator (``--task=ptb``).

One step is the search's: `engine.BilevelSearch.train_step` (architecture
step on a validation batch, then the weight step) of the search model of
`language_search.build_search`, traced once (`core.lean_function`, as
``fit`` runs it), fed with synthetic token batches of the full ``bptt``
length (the vocabulary's size, not its words, sets the cost). Reported:
the first step (trace + graph instantiation + one execution), the median
seconds per step over the timed steps after the warm-up steps, tokens per
second (training and validation tokens of a step), and the peak resident
memory.

A guard thread stops the process when its resident memory passes
``max_rss_gb`` (exit code `RSS_EXIT`), so that a configuration too large
for a shared machine is reported as such instead of meeting the kernel's
OOM killer. `launchers/bench_ptb.py` runs each configuration in its own
process (its peak memory is its own).
"""

import os
import resource
import statistics
import threading
import time

import numpy as np
import tensorflow as tf

from tf_amended_darts.core.lean_function import LeanFunction
from tf_amended_darts.jobs import language_config, language_search
from tf_amended_darts.language import data, models

RSS_EXIT = 75
RSS_POLL_S = 0.2


def _rss_gb():
    with open("/proc/self/statm") as handle:
        pages = int(handle.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 1e9


def peak_rss_gb():
    """Peak resident memory of this process, GB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6


def start_rss_guard(limit_gb):
    """Exits the process with `RSS_EXIT` when RSS passes ``limit_gb``."""

    def guard():
        while True:
            if _rss_gb() > limit_gb:
                os.write(2, f"RSS above {limit_gb} GB: stopped.\n".encode())
                os._exit(RSS_EXIT)
            time.sleep(RSS_POLL_S)

    threading.Thread(target=guard, daemon=True).start()


def synthetic_pair(batch, bptt, vocab, seed):
    """One ``((x_t, y_t), (x_v, y_v))`` element of full-length batches."""
    rng = np.random.default_rng(seed)
    pair = []
    for stream in (models.TRAIN_STREAM, models.VALID_STREAM):
        tokens = rng.integers(0, vocab, (batch, bptt + 1))
        pair.append(data.make_batch(tokens[:, :-1], tokens[:, 1:], bptt,
                                    stream, bptt))
    return tuple(pair)


def measure(arch_grad, hvp, batch, bptt, nhid, vocab, steps=3, warmup=1,
            grappler=False, seed=0):
    """Times search steps of one configuration.

    Returns:
        A dict: the settings, ``first_step_s``, ``s_per_step`` (median),
        ``tokens_per_s``, ``peak_rss_gb`` and ``params``.
    """
    config = language_config.LanguageSearchConfig(
        model_dir="unused", batch_size=batch, bptt=bptt, emsize=nhid,
        nhid=nhid, arch_grad=arch_grad, hvp=hvp, vocab_size=vocab,
        grappler=grappler, seed=seed,
    )
    language_search.set_up(config)
    search = language_search.build_search(config, vocab)
    pair = tf.nest.map_structure(tf.constant,
                                 synthetic_pair(batch, bptt, vocab, seed))
    step = LeanFunction(search.train_step)  # as fit runs it (engine)

    def run():
        logs = step(pair)
        return float(logs["loss"])

    start = time.perf_counter()
    run()
    first = time.perf_counter() - start
    for _ in range(warmup):
        run()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    median = statistics.median(times)
    return {
        "arch_grad": arch_grad, "hvp": hvp, "batch": batch, "bptt": bptt,
        "nhid": nhid, "vocab": vocab, "grappler": grappler,
        "first_step_s": round(first, 2), "s_per_step": round(median, 3),
        "tokens_per_s": round(2 * batch * bptt / median, 1),
        "peak_rss_gb": round(peak_rss_gb(), 2),
        "params": models.count_params(search.network),
        "steps": steps, "warmup": warmup,
    }
