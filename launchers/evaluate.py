"""Test error (top-1, top-5) of a re-training run or of a SavedModel.

    python launchers/evaluate.py --model_dir=runs/retrain_quickstart
    python launchers/evaluate.py --saved_model=runs/retrain_quickstart_export

Prints one JSON object: accuracies as fractions, errors in percent, on the
test split of --dataset (default: the model's own dataset). A language
model (--task=ptb run or its SavedModel, recognised from its files): the
test loss and perplexity.
"""

import json
import os
import sys

from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tf_amended_darts.jobs import errors, export, language_export  # noqa: E402


def main(argv, fv=flags.FLAGS):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    if language_export.is_language_run(fv.model_dir or fv.saved_model):
        result = language_export.evaluate_from_flags(fv)  # perplexity
    else:
        result = export.evaluate_from_flags(fv)
    print(json.dumps(result, indent=1, sort_keys=True))
    return result


if __name__ == "__main__":
    export.define_evaluate_flags()
    errors.run(main)
