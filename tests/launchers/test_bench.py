"""launchers/bench.py: flags, input pipeline and the report table.

The timed search step itself is exercised by the benchmark runs
(benchmarks/s1_cpu.md); here only what is cheap: batch-size resolution,
the batches the step is fed, and the per-batch first_order ratio.
"""

import itertools
import subprocess
import sys

import pytest
from absl import flags

from launchers import bench
from tests.helpers import REPO_ROOT

ROOT = REPO_ROOT


def _flag_values(argv):
    fv = flags.FlagValues()
    bench.define_flags(fv)
    fv(["bench"] + argv)
    return fv


@pytest.mark.parametrize(
    "argv,expected",
    [
        ([], [16]),
        (["--preset=s1"], [32]),
        (["--preset=s1", "--batch_size=8"], [8]),
        (["--preset=s1", "--batch_sizes=32,64"], [32, 64]),
        (["--batch_size=8", "--batch_sizes=4"], [4]),
    ],
)
def test_batch_sizes(argv, expected):
    assert bench.batch_sizes(_flag_values(argv)) == expected


def test_bad_batch_size_is_named():
    with pytest.raises(ValueError, match="Batch sizes"):
        bench.batch_sizes(_flag_values(["--batch_sizes=0"]))


@pytest.mark.parametrize("data", bench.DATA)
def test_batches_are_search_pairs(data):
    batches = bench.make_batches(data, 16, 4)
    for (x_t, y_t), (x_v, y_v) in itertools.islice(batches, 2):
        assert x_t.shape == x_v.shape == (4, 16, 16, 3)
        assert x_t.dtype.name == "float32"
        assert y_t.shape == y_v.shape == (4,)
        assert y_t.dtype.name == "int32"


def test_digits_pipeline_repeats_past_one_epoch():
    # 1437 digits training images, halves of 718 / 719: 5 batches of 128
    # per epoch; the benchmark must not run dry.
    batches = bench.make_batches("digits", 16, 128)
    assert len(list(itertools.islice(batches, 7))) == 7


def _row(arch_grad, hvp, batch, sec, **extra):
    row = {"arch_grad": arch_grad, "hvp": hvp, "batch": batch,
           "first_step_s": 100.0, "sec_per_step": sec,
           "images_per_s": 2 * batch / sec, "input_share": 0.01,
           "peak_rss_mb": 1000.0}
    row.update(extra)
    return row


def test_table_ratios_are_per_batch():
    fv = _flag_values(["--preset=s1", "--batch_sizes=32,64"])
    rows = [_row("first_order", "exact", 32, 10.0),
            _row("amended", "exact", 32, 25.0),
            _row("first_order", "exact", 64, 20.0),
            _row("amended", "exact", 64, 30.0),
            {"arch_grad": "amended", "hvp": "finite_difference",
             "batch": 64, "error": "killed (SIGKILL; out of memory?)"}]
    lines = bench.table(rows, fv, 8, 16, 32).splitlines()
    assert "| 32 | amended | exact | 100.0 | 25.00 | 2.6 | 2.50 |" in lines[4]
    assert "| 64 | amended | exact | 100.0 | 30.00 | 4.3 | 1.50 |" in lines[6]
    assert "killed" in lines[7]


def test_epoch_seconds_column_drops_the_last_partial_batch():
    fv = _flag_values(["--preset=s1", "--batch_sizes=96",
                       "--epoch_pairs=25000", "--jit_compile=True"])
    rows = [_row("first_order", "exact", 96, 2.0)]
    assert bench.epoch_seconds(rows[0], 25000) == 2.0 * 260
    lines = bench.table(rows, fv, 8, 16, 32).splitlines()
    assert "jit_compile=True" in lines[0]
    assert lines[1].endswith("s/epoch (25000 pairs) |")
    assert lines[3].endswith("| 520 |")
    assert lines[2].count("|") == lines[3].count("|")


def test_rss_guard_stops_the_process():
    # Any Python process is over 1 MB resident: the guard must exit it with
    # RSS_EXIT well before the sleep ends.
    code = ("import time; from launchers import bench; "
            "bench.start_rss_guard(0.001); time.sleep(30)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT,
                         capture_output=True, text=True, timeout=25)
    assert out.returncode == bench.RSS_EXIT
    assert "GB" in out.stderr


def test_nodes_of_called_functions_are_shown_beside_the_step_s():
    fv = _flag_values(["--preset=s1", "--batch_sizes=32"])
    rows = [_row("first_order", "exact", 32, 2.0, graph_nodes=1234,
                 function_nodes=567),
            _row("amended", "exact", 32, 6.0, graph_nodes=89,
                 function_nodes=0)]
    lines = bench.table(rows, fv, 8, 16, 32).splitlines()
    assert lines[3].endswith("| 1000 | 1234 + 567 |")
    assert lines[4].endswith("| 1000 | 89 |")


def test_gpu_peak_column_only_when_a_row_has_one():
    fv = _flag_values(["--preset=s1", "--batch_sizes=32,64"])
    cpu_rows = [_row("first_order", "exact", 32, 2.0, graph_nodes=1234)]
    cpu = bench.table(cpu_rows, fv, 8, 16, 32).splitlines()
    assert "GPU peak" not in cpu[1]
    assert cpu[3].endswith("| 1000 | 1234 |")
    gpu_rows = [_row("first_order", "exact", 32, 2.0, graph_nodes=1234,
                     gpu_peak_mb=2048.4),
                {"arch_grad": "amended", "hvp": "exact", "batch": 64,
                 "error": "stopped: RSS over 16 GB"}]
    gpu = bench.table(gpu_rows, fv, 8, 16, 32).splitlines()
    assert gpu[1].endswith("| graph nodes | GPU peak (MB) |")
    assert gpu[3].endswith("| 1000 | 1234 | 2048 |")
    # every row has as many cells as the header
    assert {line.count("|") for line in gpu[1:]} == {gpu[1].count("|")}
