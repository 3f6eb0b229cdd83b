"""Run directories as a search and the study leave them (no TensorFlow:
the study tests' fake search process imports this module)."""

import csv
import json
import os

from tf_amended_darts.vision import genotype as G

CONCAT = (2, 3, 4, 5)
RUN_STATE = "study_run.json"  # jobs/study.py RUN_STATE


def _genotype(skips, **metadata):
    normal = tuple(
        ("skip_connect" if i < skips else "sep_conv_3x3", i % 2)
        for i in range(8)
    )
    reduce = tuple(("sep_conv_3x3", i % 2) for i in range(8))
    return G.Genotype(normal, CONCAT, reduce, CONCAT, metadata=metadata)


def fabricate_run(run_dir, arch_grad, eta, seed, epochs, skips, finished=True,
                  retrain_accuracy=None):
    """A run directory as a search and the study would leave it."""
    os.makedirs(run_dir, exist_ok=True)
    config = {"arch_grad": arch_grad, "eta": eta, "seed": seed,
              "epochs": 10, "dataset": "fashion_mnist", "image_size": 16}
    with open(os.path.join(run_dir, "config.json"), "w") as f:
        json.dump(config, f)
    columns = ["epoch", "val_accuracy", "skip_connections_normal",
               "mean_max_weight", "skip_share", "none_weight_avg",
               "parametric_ops_normal", "genotype_stable_since",
               "fidelity_cosine_second_order", "fidelity_cosine_amended",
               "cg_residual", "cg_damping"]
    with open(os.path.join(run_dir, "metrics.csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, columns, restval="")
        writer.writeheader()
        for e in range(1, epochs + 1):
            row = {"epoch": e, "val_accuracy": 0.5 + 0.01 * e,
                   "skip_connections_normal": min(skips, e),
                   "mean_max_weight": 0.34 + 0.01 * e,
                   "skip_share": min(skips, e) / 8, "none_weight_avg": 0.3,
                   "parametric_ops_normal": 8 - min(skips, e),
                   "genotype_stable_since": min(e, skips + 1)}
            if e % 2 == 0:
                row.update(fidelity_cosine_second_order=0.25,
                           fidelity_cosine_amended=0.5, cg_residual=1e-3,
                           cg_damping=2.0)
            writer.writerow(row)
    G.save(_genotype(skips, stable_since_epoch=skips + 1,
                     epochs_run=epochs, stopped_when_stable=False),
           os.path.join(run_dir, "genotype.json"))
    with open(os.path.join(run_dir, RUN_STATE), "w") as f:
        json.dump({"seconds": 120.0, "finished": finished}, f)
    if retrain_accuracy is not None:
        os.makedirs(os.path.join(run_dir, "retrain"))
        with open(os.path.join(run_dir, "retrain", "result.json"), "w") as f:
            json.dump({"test_top1_accuracy": retrain_accuracy}, f)
