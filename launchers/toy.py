"""The paper's toy problem (Figure 4), searched by the bi-level engine.

    python launchers/toy.py --output_dir=/tmp/toy
    python launchers/toy.py --arch_grad=first_order --steps=300 --output_dir=D

Writes D/trajectory.csv (step, a, w, val_loss, ... of --arch_grad, plus the
other estimators' columns with --compare) and D/trajectory.png (one panel
per estimator).
"""

import os
import sys

from absl import flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tf_amended_darts.core import bilevel  # noqa: E402
from tf_amended_darts.core.optimizers import TorchAdam, TorchSGD  # noqa: E402
from tf_amended_darts.jobs import errors, toy  # noqa: E402

# Toy defaults: large enough steps that 500 steps show both behaviours;
# eta = 0.5 > critical_eta() ~ 0.125 (see tf_amended_darts/jobs/toy.py).
TOY_WEIGHT_LR = 0.05
TOY_ARCH_LR = 0.01
TOY_ETA = 0.5


def define_flags(fv=flags.FLAGS):
    flags.DEFINE_enum("arch_grad", "amended", bilevel.ARCH_GRADS,
                      "Estimator whose trajectory is the CSV's main columns.",
                      flag_values=fv)
    flags.DEFINE_float("eta", TOY_ETA, "Amending coefficient (>= 0).",
                       flag_values=fv)
    flags.DEFINE_enum("hvp", "exact", bilevel.HVP_MODES, "Product mode.",
                      flag_values=fv)
    flags.DEFINE_integer("steps", 500, "Search steps.", lower_bound=1,
                         flag_values=fv)
    flags.DEFINE_string("output_dir", "runs/toy", "Output directory.",
                        flag_values=fv)
    flags.DEFINE_float("w_init", -1.0, "Initial w (a poor start).",
                       flag_values=fv)
    flags.DEFINE_float("a_init", 1.0, "Initial a.", flag_values=fv)
    flags.DEFINE_float("weight_lr", TOY_WEIGHT_LR, "SGD lr for w.",
                       flag_values=fv)
    flags.DEFINE_float("arch_lr", TOY_ARCH_LR, "Adam lr for a.",
                       flag_values=fv)
    flags.DEFINE_bool("compare", True, "Also run the other estimators and "
                      "plot one panel each.", flag_values=fv)


def main(argv, fv=flags.FLAGS):
    del argv
    with errors.usage():
        bilevel.validate_estimator(fv.arch_grad, fv.eta, fv.hvp)
    os.makedirs(fv.output_dir, exist_ok=True)
    names = [fv.arch_grad] + (
        [n for n in bilevel.ARCH_GRADS if n != fv.arch_grad]
        if fv.compare else [])
    runs = {}
    for name in names:
        runs[name] = toy.run(
            name, fv.eta, fv.steps, hvp=fv.hvp, w_init=fv.w_init,
            a_init=fv.a_init,
            weight_optimizer=TorchSGD(fv.weight_lr, global_clipnorm=5.0),
            arch_optimizer=TorchAdam(fv.arch_lr))
    main_rows = runs.pop(fv.arch_grad)
    toy.write_csv(os.path.join(fv.output_dir, "trajectory.csv"), main_rows,
                  extra=runs)
    def title(n):
        return f"{n} (eta={fv.eta:g})" if n == "amended" else n
    panels = {title(fv.arch_grad): main_rows}
    panels.update({title(n): r for n, r in runs.items()})
    toy.plot(os.path.join(fv.output_dir, "trajectory.png"), panels)
    last = main_rows[-1]
    print(f"{fv.arch_grad}: a={last['a']:.4g} w={last['w']:.4g} "
          f"val_loss={last['val_loss']:.4g} after {fv.steps} steps")
    print(f"wrote {fv.output_dir}/trajectory.csv and trajectory.png")


if __name__ == "__main__":
    define_flags()
    errors.run(main)
