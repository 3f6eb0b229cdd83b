"""Stability study: a grid of searches from one flagfile, then a report.

    python launchers/study.py --flagfile=flags/study_cpu.cfg \
        --study_dir=studies/cpu_fashion_mnist

Rerunning the same command resumes unfinished runs and regenerates
``report.md``; ``--report_only`` rebuilds the report from what exists. See
tf_amended_darts/jobs/study.py.
"""

import os
import sys

from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tf_amended_darts.jobs import study  # noqa: E402


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    print(f"report: {study.run(flags.FLAGS)}")


if __name__ == "__main__":
    study.define_flags()
    flags.mark_flag_as_required("study_dir")
    app.run(main)
