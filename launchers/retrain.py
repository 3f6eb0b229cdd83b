"""Re-training: flags -> validated config -> re-train -> test error.

    python launchers/retrain.py --flagfile=flags/retrain_quickstart.cfg \
        --genotype=DARTS_V2 --model_dir=runs/retrain_quickstart

``--genotype`` is a published name or a genotype JSON (e.g. the
``genotype.json`` of a search). Rerunning the same command resumes from the
newest checkpoint in --model_dir; ``--seeds=0,1,2`` trains one network per
seed and writes the mean and std of the test error. ``--task=ptb`` trains
a recurrent genotype instead (tf_amended_darts/jobs/language_train.py);
see tf_amended_darts/jobs/retrain.py for the CNN run directory's layout.
SIGTERM / SIGINT (CNN): a step checkpoint, one line, exit status 75;
errors: one line, exit status 1 or 2 (tf_amended_darts/jobs/errors.py).
"""

import json
import os
import sys

from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tf_amended_darts.jobs import (  # noqa: E402
    errors,
    language_config,
    language_train,
    preemption,
    retrain,
    retrain_config,
)


def main(argv, fv=flags.FLAGS):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    if "task" in fv and fv.task == "ptb":
        return _train_language(fv)
    with errors.usage():
        config = retrain_config.from_flags(fv)
    retrain.check_run_dir(config)  # before anything is written
    os.makedirs(config.model_dir, exist_ok=True)
    fv.append_flags_into_file(os.path.join(config.model_dir, "flags.txt"))
    with preemption.watch():
        result = retrain.run(config)
    d = config.model_dir
    runs = os.path.join(d, "seed_*") if config.seeds else d
    name = retrain.SUMMARY_FILE if config.seeds else retrain.RESULT_FILE
    print(json.dumps(result, indent=1, sort_keys=True))
    print(f"result:      {os.path.join(d, name)}")
    print(f"metrics:     {os.path.join(runs, retrain.METRICS_FILE)}")
    print(f"TensorBoard: tensorboard --logdir {d}")
    print(
        f"export:      python launchers/export.py --model_dir={d} "
        "--export_dir=EXPORT_DIR"
    )
    return result


def _train_language(fv):
    """--task=ptb: trains a recurrent genotype (NT-ASGD), test perplexity."""
    with errors.usage():
        config = language_config.train_from_flags(fv)
    language_train.check_run_dir(config)  # before anything is written
    os.makedirs(config.model_dir, exist_ok=True)
    fv.append_flags_into_file(os.path.join(config.model_dir, "flags.txt"))
    result = language_train.run(config)
    print(json.dumps(result, indent=1, sort_keys=True))
    print(f"export:      python launchers/export.py --model_dir="
          f"{config.model_dir} --export_dir=EXPORT_DIR")
    return result


if __name__ == "__main__":
    retrain_config.define_flags()
    language_config.define_train_flags()
    flags.mark_flags_as_required(["genotype", "model_dir"])
    errors.run(main)
