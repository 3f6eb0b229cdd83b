"""Architecture search: flags -> validated config -> search -> genotype.

    python launchers/search.py --flagfile=flags/quickstart.cfg \
        --model_dir=runs/quickstart

Rerunning the same command resumes from the newest checkpoint in
--model_dir. See tf_amended_darts/jobs/search.py for the run directory's layout.
SIGTERM / SIGINT: a step checkpoint, one line, exit status 75; errors: one
line, exit status 1 or 2 (tf_amended_darts/jobs/errors.py).
"""

import os
import sys

from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tf_amended_darts.jobs import (  # noqa: E402
    errors,
    preemption,
    search,
    search_config,
)
from tf_amended_darts.vision import visualize  # noqa: E402


def run_search(fv=flags.FLAGS):
    """Runs the search the flags describe; returns the final genotype."""
    with errors.usage():
        config = search_config.from_flags(fv)
    search.check_run_dir(config)  # before anything is written
    os.makedirs(config.model_dir, exist_ok=True)
    fv.append_flags_into_file(os.path.join(config.model_dir, "flags.txt"))
    with preemption.watch():
        genotype = search.run(config)
    d = config.model_dir
    print(visualize.genotype_to_text(genotype))
    print(f"genotype:    {os.path.join(d, 'genotype.json')}")
    print(f"cell PNGs:   {os.path.join(d, 'genotype_*.png')}")
    print(f"TensorBoard: tensorboard --logdir {d}")
    return genotype


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    run_search()


if __name__ == "__main__":
    search_config.define_flags()
    flags.mark_flag_as_required("model_dir")
    errors.run(main)
