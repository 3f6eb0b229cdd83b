"""Flags of the re-training launcher and the validated config built from them.

Flags are defined by `define_flags(flag_values)`, never at import, and the
config is built from any `FlagValues` so tests can pass their own. Every
check names the flag and the accepted values. Defaults are the paper's
CIFAR-10 setting (../shared/method.md section 7), i.e. DARTS ``cnn/train.py``
with the auxiliary head and Cutout on; ``flags/retrain_*.cfg`` spell out
each experiment.
"""

import dataclasses
import json

from absl import flags

from tf_amended_darts.core import distribute, graph_settings, hparams
from tf_amended_darts.jobs.errors import fail as _fail
from tf_amended_darts.nn.drop_path import DROP_PATH_PROB
from tf_amended_darts.vision import data, network
from tf_amended_darts.vision import genotype as G

# --- Re-training, CIFAR-10 ([darts] cnn/train.py; [amended] section 4) ----
EPOCHS = 600  # [darts] train.py --epochs; [amended] 600 epochs
BATCH_SIZE = 96  # [darts] train.py --batch_size
LEARNING_RATE = 0.025  # [darts] train.py --learning_rate
# [darts] train.py CosineAnnealingLR(optimizer, epochs): eta_min 0.
LEARNING_RATE_MIN = 0.0
MOMENTUM = hparams.WEIGHT_MOMENTUM  # [darts] train.py --momentum 0.9
WEIGHT_DECAY = 3e-4  # [darts] train.py --weight_decay (coupled L2)
GRAD_CLIP = hparams.GRAD_CLIP_NORM  # [darts] train.py --grad_clip 5
AUXILIARY_WEIGHT = 0.4  # [darts] train.py --auxiliary_weight; [amended] 0.4
CUTOUT = 16  # [darts] train.py --cutout_length 16
# --- Re-training, ImageNet ([darts] cnn/train_imagenet.py; [amended]) -----
IMAGENET_EPOCHS = 250  # [darts] train_imagenet.py --epochs; [amended]
IMAGENET_BATCH_SIZE = 128  # [darts] train_imagenet.py --batch_size
IMAGENET_LEARNING_RATE = 0.5  # [amended] "SGD lr 0.5 decayed linearly"
IMAGENET_WEIGHT_DECAY = 3e-5  # [darts] train_imagenet.py; [amended]
LABEL_SMOOTHING = 0.1  # [darts] train_imagenet.py --label_smooth

LR_SCHEDULES = ("cosine", "linear")
# Keras 3 dtype policies accepted by --dtype_policy (keras.DTypePolicy
# names). Variables stay float32 under all three; "mixed_float16" trains
# with dynamic loss scaling (keras.optimizers.LossScaleOptimizer).
DTYPE_POLICIES = ("float32", "mixed_float16", "mixed_bfloat16")
GENOTYPE_FILE_HINT = "a genotype JSON file or one of "
# Flags a run may resume with changed (run_dir.check): logging, checkpoint
# cadence, where the data lives, how the work is compiled; --epochs only
# upward. Any other difference changes the model or the data. Not
# --strategy / --num_gpus: with more than one replica an epoch drops its
# last partial batch, so the steps per epoch, hence the schedule's epoch
# count from the optimiser's iterations, could change under a resumed run.
RESUMABLE = (
    "data_dir",
    "manual_dir",
    "download",
    "verbose",
    "tensorboard",
    "keep_checkpoints",
    "checkpoint_every_steps",
    "grappler",
    "op_tracebacks",
    "deterministic",
)
UPWARD = ("epochs",)


def define_flags(fv=flags.FLAGS):
    """Defines the re-training flags on ``fv``."""
    d = dict(flag_values=fv)
    flags.DEFINE_string(
        "genotype",
        None,
        "Published genotype name (e.g. DARTS_V2) or a genotype JSON path.",
        **d,
    )
    flags.DEFINE_string(
        "model_dir",
        None,
        "Run directory (resumes if it holds a checkpoint).",
        **d,
    )
    flags.DEFINE_string(
        "dataset", "cifar10", f"One of {', '.join(data.DATASETS)}.", **d
    )
    flags.DEFINE_string("data_dir", None, "TFDS data directory.", **d)
    flags.DEFINE_string(
        "manual_dir", None, "ImageNet tar files (with --download).", **d
    )
    flags.DEFINE_bool(
        "download", False, "Let TFDS download/prepare the data if absent.", **d
    )
    flags.DEFINE_integer("image_size", 0, "Image side; 0: the dataset's.", **d)
    flags.DEFINE_integer("epochs", EPOCHS, "Training epochs.", **d)
    flags.DEFINE_integer(
        "batch_size",
        BATCH_SIZE,
        "Global batch size (split evenly over the replicas).",
        **d,
    )
    flags.DEFINE_integer(
        "steps_per_epoch",
        0,
        "Cap on steps per epoch; 0: the whole training split.",
        **d,
    )
    flags.DEFINE_float("learning_rate", LEARNING_RATE, "Initial SGD lr.", **d)
    flags.DEFINE_float(
        "learning_rate_min", LEARNING_RATE_MIN, "Final lr of the schedule.", **d
    )
    flags.DEFINE_string(
        "lr_schedule",
        "cosine",
        f"Per-epoch schedule: {', '.join(LR_SCHEDULES)}.",
        **d,
    )
    flags.DEFINE_float("momentum", MOMENTUM, "SGD momentum.", **d)
    flags.DEFINE_float(
        "weight_decay", WEIGHT_DECAY, "Coupled L2 on every weight.", **d
    )
    flags.DEFINE_float(
        "grad_clip", GRAD_CLIP, "Global-norm gradient clip; 0: off.", **d
    )
    flags.DEFINE_integer("layers", network.CIFAR_LAYERS, "Cells.", **d)
    flags.DEFINE_integer(
        "init_channels",
        network.CIFAR_INIT_CHANNELS,
        "C, the width of the first cells.",
        **d,
    )
    flags.DEFINE_bool(
        "auxiliary", True, "Auxiliary head after cell 2 * layers // 3.", **d
    )
    flags.DEFINE_float(
        "auxiliary_weight",
        AUXILIARY_WEIGHT,
        "Weight of the auxiliary loss.",
        **d,
    )
    flags.DEFINE_float(
        "drop_path_prob",
        DROP_PATH_PROB,
        "Drop-path probability, ramped linearly from 0.",
        **d,
    )
    flags.DEFINE_integer("cutout", CUTOUT, "Cutout length (0: off).", **d)
    flags.DEFINE_float(
        "label_smoothing",
        0.0,
        "Label smoothing of the training loss (ImageNet: 0.1).",
        **d,
    )
    flags.DEFINE_integer(
        "seed", 0, "Seed of data, initialisation, drop-path.", **d
    )
    flags.DEFINE_list(
        "seeds",
        [],
        "Several seeds: one run per seed in "
        "model_dir/seed_<s>, plus summary.json (mean, std).",
        **d,
    )
    flags.DEFINE_bool(
        "deterministic",
        False,
        "Turn on TensorFlow op "
        "determinism (a resumed run then ends with the same "
        "weights as an uninterrupted one).",
        **d,
    )
    flags.DEFINE_bool(
        "grappler",
        False,
        "Keep TensorFlow's graph "
        "optimiser (off by default: it doubles the first "
        "step's compile time for no steady-state gain).",
        **d,
    )
    flags.DEFINE_bool(
        "op_tracebacks",
        False,
        graph_settings.OP_TRACEBACKS_HELP,
        **d,
    )
    flags.DEFINE_string(
        "strategy",
        "default",
        f"Distribution: one of {', '.join(distribute.STRATEGIES)} (see "
        "tf_amended_darts/core/distribute.py).",
        **d,
    )
    flags.DEFINE_integer(
        "num_gpus",
        0,
        "GPUs of --strategy=mirrored (0: all visible; CPU devices without "
        "GPUs).",
        **d,
    )
    flags.DEFINE_string(
        "dtype_policy",
        "float32",
        f"Keras dtype policy of the network: one of "
        f"{', '.join(DTYPE_POLICIES)} (mixed: float16/bfloat16 compute, "
        "float32 variables, batch-norm statistics and logits; "
        "mixed_float16 adds dynamic loss scaling).",
        **d,
    )
    flags.DEFINE_bool("tensorboard", True, "Write TensorBoard logs.", **d)
    flags.DEFINE_integer(
        "verbose",
        2,
        "Keras fit verbosity (1: progress "
        "bar, 2: one line per epoch, 0: silent).",
        **d,
    )
    flags.DEFINE_integer(
        "keep_checkpoints",
        2,
        "Epoch checkpoints kept, and step checkpoints kept.",
        **d,
    )
    flags.DEFINE_integer(
        "checkpoint_every_steps",
        0,
        "Also write a step checkpoint every this many steps of an epoch "
        "(0: only at epoch ends and on SIGTERM / SIGINT).",
        **d,
    )


@dataclasses.dataclass(frozen=True)
class RetrainConfig:
    """A validated re-training configuration (see `define_flags`)."""

    genotype: str
    model_dir: str
    dataset: str = "cifar10"
    data_dir: str = None
    manual_dir: str = None
    download: bool = False
    image_size: int = 0
    epochs: int = EPOCHS
    batch_size: int = BATCH_SIZE
    steps_per_epoch: int = 0
    learning_rate: float = LEARNING_RATE
    learning_rate_min: float = LEARNING_RATE_MIN
    lr_schedule: str = "cosine"
    momentum: float = MOMENTUM
    weight_decay: float = WEIGHT_DECAY
    grad_clip: float = GRAD_CLIP
    layers: int = network.CIFAR_LAYERS
    init_channels: int = network.CIFAR_INIT_CHANNELS
    auxiliary: bool = True
    auxiliary_weight: float = AUXILIARY_WEIGHT
    drop_path_prob: float = DROP_PATH_PROB
    cutout: int = CUTOUT
    label_smoothing: float = 0.0
    seed: int = 0
    seeds: tuple = ()
    deterministic: bool = False
    grappler: bool = False
    op_tracebacks: bool = False
    dtype_policy: str = "float32"
    tensorboard: bool = True
    verbose: int = 2
    keep_checkpoints: int = 2
    checkpoint_every_steps: int = 0
    strategy: str = "default"
    num_gpus: int = 0

    def __post_init__(self):
        validate(self)

    def load_genotype(self):
        """The `genotype.Genotype` named by ``--genotype``."""
        return _load_genotype(self.genotype)

    def to_dict(self):
        return dataclasses.asdict(self)

    def to_json(self):
        return json.dumps(self.to_dict(), indent=1, sort_keys=True)

    @classmethod
    def from_json(cls, text):
        """The config written by `to_json` (unknown keys are an error)."""
        values = json.loads(text)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"Unknown re-training config keys: {unknown}")
        values["seeds"] = tuple(values.get("seeds") or ())
        return cls(**values)


def _load_genotype(value):
    accepted = f"{GENOTYPE_FILE_HINT}{', '.join(G.published_names())}"
    if not value:
        _fail("genotype", accepted, value)
    try:
        return G.load(value)
    except OSError as err:
        raise ValueError(
            f"Invalid --genotype={value!r}: {err}. Accepted values: {accepted}."
        ) from None
    except ValueError as err:
        raise ValueError(f"Invalid --genotype={value!r}: {err}") from None


def parse_seeds(seeds):
    """``seeds`` (ints or decimal strings) as a tuple of ints >= 0."""
    out = []
    for s in seeds or ():
        try:
            value = int(s)
        except (TypeError, ValueError):
            _fail("seeds", "a comma-separated list of integers >= 0", seeds)
        if value < 0:
            _fail("seeds", "a comma-separated list of integers >= 0", seeds)
        out.append(value)
    if len(set(out)) != len(out):
        _fail("seeds", "distinct integers", seeds)
    return tuple(out)


def validate(c):
    """Raises ValueError naming the first invalid flag."""
    if not c.model_dir:
        _fail("model_dir", "a directory path", c.model_dir)
    if c.dataset not in data.DATASETS:
        _fail("dataset", ", ".join(data.DATASETS), c.dataset)
    if c.lr_schedule not in LR_SCHEDULES:
        _fail("lr_schedule", ", ".join(LR_SCHEDULES), c.lr_schedule)
    if c.dtype_policy not in DTYPE_POLICIES:
        _fail("dtype_policy", ", ".join(DTYPE_POLICIES), c.dtype_policy)
    for name in ("epochs", "batch_size", "layers", "init_channels"):
        if getattr(c, name) < 1:
            _fail(name, "an integer >= 1", getattr(c, name))
    for name in ("steps_per_epoch", "image_size", "cutout", "seed"):
        if getattr(c, name) < 0:
            _fail(name, "an integer >= 0 (0: default/off)", getattr(c, name))
    if c.layers < 3:
        _fail(
            "layers",
            "an integer >= 3 (reduction cells at 1/3 and 2/3 of the depth)",
            c.layers,
        )
    if c.dataset == "imagenet" and c.init_channels % 2:
        _fail(
            "init_channels",
            "an even integer for --dataset=imagenet "
            "(FactorizedReduce halves it)",
            c.init_channels,
        )
    if not c.learning_rate > 0:
        _fail("learning_rate", "a number > 0", c.learning_rate)
    for name in (
        "learning_rate_min",
        "weight_decay",
        "grad_clip",
        "auxiliary_weight",
    ):
        if getattr(c, name) < 0:
            _fail(name, "a number >= 0", getattr(c, name))
    if c.learning_rate_min > c.learning_rate:
        _fail(
            "learning_rate_min",
            f"a number <= --learning_rate={c.learning_rate}",
            c.learning_rate_min,
        )
    for name in ("momentum", "drop_path_prob", "label_smoothing"):
        if not 0.0 <= getattr(c, name) < 1.0:
            _fail(name, "a number in [0, 1)", getattr(c, name))
    parse_seeds(c.seeds)
    if c.verbose not in (0, 1, 2):
        _fail("verbose", "0, 1, 2", c.verbose)
    if c.keep_checkpoints < 1:
        _fail("keep_checkpoints", "an integer >= 1", c.keep_checkpoints)
    if c.checkpoint_every_steps < 0:
        _fail(
            "checkpoint_every_steps",
            "an integer >= 0 (0: epoch ends and signals only)",
            c.checkpoint_every_steps,
        )
    distribute.validate(c.strategy, c.num_gpus)
    _load_genotype(c.genotype)


def from_flags(fv=flags.FLAGS):
    """A `RetrainConfig` from parsed flag values."""
    kwargs = {}
    for field in dataclasses.fields(RetrainConfig):
        value = fv[field.name].value
        if field.name == "seeds":
            value = parse_seeds(value)
        kwargs[field.name] = value
    return RetrainConfig(**kwargs)


# Field defaults, for a config.json written before a field existed.
DEFAULTS = {
    f.name: f.default
    for f in dataclasses.fields(RetrainConfig)
    if f.default is not dataclasses.MISSING
}
