"""Architecture search: flags -> validated config -> search -> genotype.

    python launchers/search.py --flagfile=flags/quickstart.cfg \
        --model_dir=runs/quickstart
    python launchers/search.py --flagfile=flags/ptb_quickstart.cfg \
        --model_dir=runs/ptb_quickstart

``--task=vision`` (default) searches CNN cells, ``--task=ptb`` a recurrent
cell. Rerunning the same command resumes from the newest checkpoint in
--model_dir. See tf_amended_darts/jobs/search.py and language_search.py
for the run directories' layouts. SIGTERM / SIGINT (CNN search): a step
checkpoint, one line, exit status 75; errors: one line, exit status 1 or 2
(tf_amended_darts/jobs/errors.py). The baselines (PC-DARTS, P-DARTS,
R-DARTS) run from the same launcher with their flags
(tf_amended_darts/jobs/baseline_config.py; flags/pc_darts*.cfg,
flags/p_darts*.cfg, flags/r_darts*.cfg).
"""

import os
import sys

from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tf_amended_darts.jobs import (  # noqa: E402
    baseline_config,
    baselines,
    errors,
    language_config,
    language_search,
    preemption,
    search_config,
)
from tf_amended_darts.language import visualize as rnn_visualize  # noqa
from tf_amended_darts.vision import visualize  # noqa: E402


def run_search(fv=flags.FLAGS):
    """Runs the search the flags describe; returns the final genotype."""
    ptb = "task" in fv and fv.task == "ptb"
    with errors.usage():
        config = (language_config.search_from_flags(fv) if ptb
                  else search_config.from_flags(fv))
        extra = None if ptb else baseline_config.from_flags(fv)
    if ptb:
        language_search.check_run_dir(config)  # before anything is written
        os.makedirs(config.model_dir, exist_ok=True)
        fv.append_flags_into_file(os.path.join(config.model_dir, "flags.txt"))
        genotype = language_search.run(config)
    else:
        baselines.check_run_dir(config, extra)  # before anything is written
        os.makedirs(config.model_dir, exist_ok=True)
        fv.append_flags_into_file(os.path.join(config.model_dir, "flags.txt"))
        with preemption.watch():
            genotype = baselines.run(config, extra)
    d = config.model_dir
    print((rnn_visualize if ptb else visualize).genotype_to_text(genotype))
    print(f"genotype:    {os.path.join(d, 'genotype.json')}")
    print(f"cell PNGs:   {os.path.join(d, 'genotype*.png')}")
    print(f"TensorBoard: tensorboard --logdir {d}")
    return genotype


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    run_search()


if __name__ == "__main__":
    search_config.define_flags()
    language_config.define_search_flags()
    baseline_config.define_flags()
    flags.mark_flag_as_required("model_dir")
    errors.run(main)
