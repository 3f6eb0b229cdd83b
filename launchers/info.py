"""Parameter and multiply-add counts of a re-training network.

    python launchers/info.py --genotype=DARTS_V2 --dataset=imagenet
    python launchers/info.py --genotype=DARTS_V2 --task=ptb

Prints one JSON object: `params` (trainable, auxiliary head excluded),
`params_aux` (the auxiliary head alone; 0 with --noauxiliary), `macs`
(multiply-adds per image of the main network, see flops.py), settings.
With --task=ptb: `params` of the recurrent evaluation model (embedding =
hidden = --emsize, default 850; --vocab_size, default 10,000; tied).
"""

import json
import os
import sys

from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tf_amended_darts.jobs import errors, language_train  # noqa: E402
from tf_amended_darts.vision import flops, network  # noqa: E402
from tf_amended_darts.vision import genotype as G  # noqa: E402

# dataset -> (network class, classes, init_channels, layers, image size),
# the reference train.py / train_imagenet.py defaults.
DATASETS = {
    "cifar10": (network.NetworkCIFAR, 10, 36, 20, 32),
    "imagenet": (network.NetworkImageNet, 1000, 48, 14, 224),
}


def define_flags(fv=flags.FLAGS):
    flags.DEFINE_string("genotype", "DARTS_V2", "Published genotype "
                        f"{G.published_names()} or genotype JSON path.",
                        flag_values=fv)
    flags.DEFINE_enum("dataset", "cifar10", list(DATASETS), "Network kind.",
                      flag_values=fv)
    for name, default in (("init_channels", "36 / 48"), ("layers", "20 / 14"),
                          ("image_size", "32 / 224")):
        flags.DEFINE_integer(name, None, f"Default {default} (cifar10 / "
                             "imagenet).", lower_bound=1, flag_values=fv)
    flags.DEFINE_bool("auxiliary", True, "Build the auxiliary head.",
                      flag_values=fv)
    flags.DEFINE_enum("task", "vision", ["vision", "ptb"], "ptb: the "
                      "recurrent evaluation model.", flag_values=fv)
    flags.DEFINE_integer("emsize", 850, "ptb: embedding = hidden width.",
                         lower_bound=1, flag_values=fv)
    flags.DEFINE_integer("vocab_size", 10000, "ptb: vocabulary.",
                         lower_bound=2, flag_values=fv)


def info(fv=flags.FLAGS):
    """Prints and returns the network's size as one JSON object."""
    if fv.task == "ptb":
        try:
            result = language_train.model_info(fv.genotype, fv.vocab_size,
                                               fv.emsize)
        except (ValueError, OSError) as error:
            raise app.UsageError(f"--genotype: {error}") from error
        print(json.dumps(result))
        return result
    cls, classes, channels, layers, size = DATASETS[fv.dataset]
    channels = fv.init_channels or channels
    layers, size = fv.layers or layers, fv.image_size or size
    try:
        genotype = network.as_genotype(fv.genotype)
    except (ValueError, OSError) as error:
        raise app.UsageError(f"--genotype: {error}") from error
    net = cls(genotype, num_classes=classes, layers=layers,
              init_channels=channels, auxiliary=fv.auxiliary)
    net.build((None, size, size, 3))
    result = {"genotype": fv.genotype, "dataset": fv.dataset,
            "init_channels": channels, "layers": layers, "image_size": size,
            "num_classes": classes, "params": network.count_params(net),
            "params_aux": network.aux_params(net),
            "macs": flops.count_macs(net, size)}
    print(json.dumps(result))
    return result


def main(argv):
    del argv
    info()


if __name__ == "__main__":
    define_flags()
    errors.run(main)
