"""Random search (keras-tuner): flags -> validated config -> best genotype.

    python launchers/random_search.py \
        --flagfile=flags/random_search_quickstart.cfg --model_dir=runs/rs

Rerunning the same command resumes (keras-tuner's oracle state; an
interrupted trial resumes from its last epoch). See
tf_amended_darts/jobs/random_search.py for the run directory's layout.
"""

import os
import sys

from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tf_amended_darts.jobs import (  # noqa: E402
    random_search,
    random_search_config,
)
from tf_amended_darts.vision import visualize  # noqa: E402


def run_random_search(fv=flags.FLAGS):
    """Runs the random search the flags describe; the best genotype."""
    config = random_search_config.from_flags(fv)
    os.makedirs(config.model_dir, exist_ok=True)
    fv.append_flags_into_file(os.path.join(config.model_dir, "flags.txt"))
    genotype = random_search.run(config)
    d = config.model_dir
    print(visualize.genotype_to_text(genotype))
    print(f"genotype:    {os.path.join(d, 'genotype.json')}")
    print(f"trials:      {os.path.join(d, 'metrics.csv')}")
    print(f"TensorBoard: tensorboard --logdir {d}")
    return genotype


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    run_random_search()


if __name__ == "__main__":
    random_search_config.define_flags()
    flags.mark_flag_as_required("model_dir")
    app.run(main)
