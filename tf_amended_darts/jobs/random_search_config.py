"""Flags of the random-search launcher and the validated config.

Random search (Li and Talwalkar; the DARTS paper's "random search" rows,
../shared/baselines.md section 4): ``--trials`` genotypes sampled uniformly
from ``--space`` (two distinct inputs per node, an operator other than
``none`` on each), each trained as a re-training network for ``--epochs``
on the search-train half of the training set and scored on the held-out
search-validation half (never the test split); the best is kept. DARTS:
"best architecture among 24 samples according to the validation error
after 100 training epochs" (CIFAR-10).

Flags are defined by `define_flags(flag_values)`, never at import; the
config is built from any `FlagValues`.
"""

import dataclasses
import json

from absl import flags

from tf_amended_darts.core import graph_settings, hparams
from tf_amended_darts.jobs import retrain_config as R
from tf_amended_darts.jobs.errors import fail as _fail
from tf_amended_darts.vision import data, network
from tf_amended_darts.vision import search_space as S

# DARTS paper, Table 1 footnote: 24 samples, 100 training epochs each.
TRIALS = 24
TRIAL_EPOCHS = 100


def define_flags(fv=flags.FLAGS):
    """Defines the random-search flags on ``fv``."""
    d = dict(flag_values=fv)
    flags.DEFINE_string("model_dir", None, "Run directory (resumes).", **d)
    flags.DEFINE_string(
        "dataset", "cifar10", f"One of {', '.join(data.DATASETS)}.", **d)
    flags.DEFINE_string("data_dir", None, "TFDS data directory.", **d)
    flags.DEFINE_integer("image_size", 0, "Image side; 0: the dataset's.",
                         **d)
    flags.DEFINE_float(
        "train_portion", hparams.TRAIN_PORTION,
        "Share of the training set trained on; the rest scores the trials.",
        **d)
    flags.DEFINE_string("space", "s1", f"One of {', '.join(S.SPACES)}.", **d)
    flags.DEFINE_integer("trials", TRIALS, "Genotypes sampled and trained.",
                         **d)
    flags.DEFINE_integer("epochs", TRIAL_EPOCHS, "Training epochs per trial.",
                         **d)
    flags.DEFINE_integer(
        "steps_per_epoch", 0, "Cap on steps per epoch; 0: the whole half.",
        **d)
    flags.DEFINE_integer("batch_size", R.BATCH_SIZE, "Batch size.", **d)
    flags.DEFINE_integer("layers", network.CIFAR_LAYERS,
                         "Cells of the trial network.", **d)
    flags.DEFINE_integer("init_channels", network.CIFAR_INIT_CHANNELS,
                         "C of the trial network.", **d)
    flags.DEFINE_float("learning_rate", R.LEARNING_RATE, "SGD lr.", **d)
    flags.DEFINE_float("learning_rate_min", R.LEARNING_RATE_MIN,
                       "Final lr of the cosine schedule.", **d)
    flags.DEFINE_float("momentum", R.MOMENTUM, "SGD momentum.", **d)
    flags.DEFINE_float("weight_decay", R.WEIGHT_DECAY, "Coupled L2.", **d)
    flags.DEFINE_float("grad_clip", R.GRAD_CLIP, "Global-norm clip.", **d)
    flags.DEFINE_bool("auxiliary", False, "Auxiliary head.", **d)
    flags.DEFINE_float("auxiliary_weight", R.AUXILIARY_WEIGHT,
                       "Auxiliary loss weight.", **d)
    flags.DEFINE_float("drop_path_prob", 0.0,
                       "Drop-path reached at the last epoch.", **d)
    flags.DEFINE_integer("cutout", 0, "Cutout length (0: off).", **d)
    flags.DEFINE_integer("seed", 0, "Seed of sampling, data, weights.", **d)
    flags.DEFINE_bool("deterministic", False, "TensorFlow op determinism.",
                      **d)
    flags.DEFINE_bool("grappler", False,
                      "Keep TensorFlow's graph optimiser (off by default, as "
                      "in re-training).", **d)
    flags.DEFINE_bool("op_tracebacks", False,
                      graph_settings.OP_TRACEBACKS_HELP, **d)
    flags.DEFINE_bool("tensorboard", True, "Write TensorBoard logs.", **d)
    flags.DEFINE_integer("verbose", 2, "Keras fit verbosity.", **d)
    flags.DEFINE_integer("keep_checkpoints", 1, "Checkpoints kept per trial.",
                         **d)


@dataclasses.dataclass(frozen=True)
class RandomSearchConfig:
    """A validated random-search configuration (see `define_flags`)."""

    model_dir: str
    dataset: str = "cifar10"
    data_dir: str = None
    image_size: int = 0
    train_portion: float = hparams.TRAIN_PORTION
    space: str = "s1"
    trials: int = TRIALS
    epochs: int = TRIAL_EPOCHS
    steps_per_epoch: int = 0
    batch_size: int = R.BATCH_SIZE
    layers: int = network.CIFAR_LAYERS
    init_channels: int = network.CIFAR_INIT_CHANNELS
    learning_rate: float = R.LEARNING_RATE
    learning_rate_min: float = R.LEARNING_RATE_MIN
    momentum: float = R.MOMENTUM
    weight_decay: float = R.WEIGHT_DECAY
    grad_clip: float = R.GRAD_CLIP
    auxiliary: bool = False
    auxiliary_weight: float = R.AUXILIARY_WEIGHT
    drop_path_prob: float = 0.0
    cutout: int = 0
    seed: int = 0
    deterministic: bool = False
    grappler: bool = False
    op_tracebacks: bool = False
    tensorboard: bool = True
    verbose: int = 2
    keep_checkpoints: int = 1

    def __post_init__(self):
        validate(self)

    def search_space(self):
        """The space genotypes are sampled from (at ``layers`` cells)."""
        return S.get_space(self.space, layers=self.layers)

    def to_json(self):
        return json.dumps(dataclasses.asdict(self), indent=1, sort_keys=True)


def validate(c):
    """Raises ValueError naming the first invalid flag."""
    if not c.model_dir:
        _fail("model_dir", "a directory path", c.model_dir)
    if c.dataset not in data.DATASETS:
        _fail("dataset", ", ".join(data.DATASETS), c.dataset)
    if c.space.lower() not in S.SPACES:
        _fail("space", ", ".join(S.SPACES), c.space)
    for name in ("trials", "epochs", "batch_size", "init_channels",
                 "keep_checkpoints"):
        if getattr(c, name) < 1:
            _fail(name, "an integer >= 1", getattr(c, name))
    if c.layers < 3:
        _fail("layers", "an integer >= 3 (two reduction cells)", c.layers)
    for name in ("steps_per_epoch", "image_size", "cutout", "seed"):
        if getattr(c, name) < 0:
            _fail(name, "an integer >= 0 (0: default/off)", getattr(c, name))
    if not 0.0 < c.train_portion < 1.0:
        _fail("train_portion", "a number in (0, 1)", c.train_portion)
    if not c.learning_rate > 0:
        _fail("learning_rate", "a number > 0", c.learning_rate)
    for name in ("learning_rate_min", "weight_decay", "grad_clip",
                 "auxiliary_weight"):
        if getattr(c, name) < 0:
            _fail(name, "a number >= 0", getattr(c, name))
    for name in ("momentum", "drop_path_prob"):
        if not 0.0 <= getattr(c, name) < 1.0:
            _fail(name, "a number in [0, 1)", getattr(c, name))
    if c.verbose not in (0, 1, 2):
        _fail("verbose", "0, 1, 2", c.verbose)


def from_flags(fv=flags.FLAGS):
    """A `RandomSearchConfig` from parsed flag values."""
    return RandomSearchConfig(**{
        f.name: fv[f.name].value
        for f in dataclasses.fields(RandomSearchConfig)
    })
