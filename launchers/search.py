"""Architecture search: flags -> validated config -> search -> genotype.

    python launchers/search.py --flagfile=flags/quickstart.cfg \
        --model_dir=runs/quickstart

Rerunning the same command resumes from the newest checkpoint in
--model_dir. See tf_amended_darts/jobs/search.py for the run directory's layout.
The baselines (PC-DARTS, P-DARTS, R-DARTS) run from the same launcher with
their flags (tf_amended_darts/jobs/baseline_config.py; flags/pc_darts*.cfg,
flags/p_darts*.cfg, flags/r_darts*.cfg).
"""

import os
import sys

from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tf_amended_darts.jobs import (  # noqa: E402
    baseline_config,
    baselines,
    search_config,
)
from tf_amended_darts.vision import visualize  # noqa: E402


def run_search(fv=flags.FLAGS):
    """Runs the search the flags describe; returns the final genotype."""
    config = search_config.from_flags(fv)
    extra = baseline_config.from_flags(fv)
    os.makedirs(config.model_dir, exist_ok=True)
    fv.append_flags_into_file(os.path.join(config.model_dir, "flags.txt"))
    genotype = baselines.run(config, extra)
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
    baseline_config.define_flags()
    flags.mark_flag_as_required("model_dir")
    app.run(main)
