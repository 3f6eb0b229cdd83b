"""Exports a re-trained network as a SavedModel (and optionally TFLite).

    python launchers/export.py --model_dir=runs/retrain_quickstart \
        --export_dir=runs/retrain_quickstart_export [--tflite]

Loads the run's config, genotype and final weights (else the newest
checkpoint). The SavedModel's ``serving_default`` signature takes
``images`` (float32, NHWC, normalised as in training) and returns
``logits`` and ``probabilities``. See tf_amended_darts/jobs/export.py. A
--task=ptb run exports token ids -> next-token log-probabilities
(tf_amended_darts/jobs/language_export.py).
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
    if language_export.is_language_run(fv.model_dir):
        result = language_export.export_saved_model(
            fv.model_dir, fv.export_dir, overwrite=fv.overwrite)
    else:
        result = export.export_saved_model(
            fv.model_dir, fv.export_dir, tflite=fv.tflite,
            overwrite=fv.overwrite)
    print(json.dumps(result, indent=1, sort_keys=True))
    print(f"try: saved_model_cli show --dir {result['export_dir']} --all")
    return result


if __name__ == "__main__":
    export.define_export_flags()
    flags.mark_flags_as_required(["model_dir", "export_dir"])
    errors.run(main)
