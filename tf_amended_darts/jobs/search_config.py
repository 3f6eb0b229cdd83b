"""Flags of the search launcher and the validated config built from them.

Flags are defined by `define_flags(flag_values)`, never at import, and the
config is built from any `FlagValues` so tests can pass their own. Every
check names the flag and the accepted values.

Hyper-parameter consistency (``--consistency``; paper 2.4 and B.1,
../shared/method.md section 6): the search network trains with what the
re-training network uses (`CONSISTENCY`: DARTS' CIFAR re-training recipe):
20 cells, C = 36, Cutout 16, drop-path ramped linearly to 0.2 over the
search epochs and the auxiliary head with loss weight 0.4. A flag given
explicitly (command line or flagfile) wins over the consistency value, so
``--consistency --layers=8 --init_channels=16`` searches S1's 8-cell
supernet with the re-training regularisers (the Table 1 setting). The
paper's "Dropout" is drop-path here: DARTS' CIFAR network has no other
dropout.
"""

import dataclasses
import json

from absl import flags

from tf_amended_darts.core import (
    bilevel,
    distribute,
    fidelity,
    graph_settings,
    hparams,
)
from tf_amended_darts.jobs import precision
from tf_amended_darts.jobs import retrain_config as R
from tf_amended_darts.jobs.errors import fail as _fail
from tf_amended_darts.nn.drop_path import DROP_PATH_PROB
from tf_amended_darts.nn.recompute import check_hvp
from tf_amended_darts.vision import data
from tf_amended_darts.vision import network as N
from tf_amended_darts.vision import search_space as S

# The re-training values that --consistency brings into the search
# ([darts] cnn/train.py, the paper's CIFAR-10 re-training: network.py and
# retrain_config.py name their sources), and the values without it.
CONSISTENCY = {
    "layers": N.CIFAR_LAYERS,
    "init_channels": N.CIFAR_INIT_CHANNELS,
    "cutout": R.CUTOUT,
    "drop_path_prob": DROP_PATH_PROB,
    "auxiliary": True,
    "auxiliary_weight": R.AUXILIARY_WEIGHT,
}
# Search precision (precision.search_policy_check has the measurements):
# second-order products stay float32; mixed_float16 would need loss scaling
# in both steps of the bi-level engine, which it does not have.
SEARCH_DTYPE_POLICIES = ("float32", "mixed_bfloat16")

# --malloc_threshold_kb's default: glibc's mmap and trim thresholds that
# the search sets at start-up (jobs/search.py, return_freed_memory).
MALLOC_THRESHOLD_KB = 64

# Flags a run may resume with changed (run_dir.check): logging and
# monitoring (the fidelity cadence), checkpoint cadence, the stop rule,
# where the data lives, how the work is distributed and compiled; --epochs
# only upward. Any other difference changes the model or the data.
RESUMABLE = (
    "data_dir",
    "verbose",
    "tensorboard",
    "keep_checkpoints",
    "checkpoint_every_steps",
    "strategy",
    "num_gpus",
    "grappler",
    "op_tracebacks",
    "recompute_cells",
    "malloc_threshold_kb",
    "deterministic",
    "fidelity_every",
    "fidelity_cg_iterations",
    "stop_when_stable",
)
UPWARD = ("epochs",)

WITHOUT_CONSISTENCY = {
    "layers": 0,
    "init_channels": 0,
    "cutout": 0,
    "drop_path_prob": 0.0,
    "auxiliary": False,
    "auxiliary_weight": R.AUXILIARY_WEIGHT,
}


def define_flags(fv=flags.FLAGS):
    """Defines the search flags on ``fv``."""
    d = dict(flag_values=fv)
    flags.DEFINE_string(
        "model_dir",
        None,
        "Run directory (resumes if it holds a checkpoint).",
        **d,
    )
    flags.DEFINE_string(
        "dataset", "cifar10", f"One of {', '.join(data.DATASETS)}.", **d
    )
    flags.DEFINE_string(
        "data_dir",
        None,
        "TFDS data directory; for fashion_mnist the folder of its idx "
        "files (default: vision/fashion_mnist.DEFAULT_DIR).",
        **d,
    )
    flags.DEFINE_integer("image_size", 0, "Image side; 0: the dataset's.", **d)
    flags.DEFINE_float(
        "train_portion",
        hparams.TRAIN_PORTION,
        "Share of the training set used for search-train.",
        **d,
    )
    flags.DEFINE_integer(
        "batch_size",
        hparams.SEARCH_BATCH_SIZE,
        "Global batch size of each half (split evenly over the replicas).",
        **d,
    )
    flags.DEFINE_integer(
        "epochs",
        hparams.SEARCH_EPOCHS,
        "Search epochs (per stage for --edges=searched).",
        **d,
    )
    flags.DEFINE_integer(
        "steps_per_epoch", 0, "Cap on steps per epoch; 0: the whole split.", **d
    )
    flags.DEFINE_string("space", "s1", f"One of {', '.join(S.SPACES)}.", **d)
    flags.DEFINE_string(
        "edges", "pruned", f"One of {', '.join(S.EDGE_LAYOUTS)}.", **d
    )
    flags.DEFINE_integer("layers", 0, "Cells; 0: the space's.", **d)
    flags.DEFINE_integer("init_channels", 0, "C; 0: the space's.", **d)
    flags.DEFINE_integer(
        "nodes",
        0,
        "Intermediate nodes per cell, all concatenated into the cell "
        "output; 0: the space's (4).",
        **d,
    )
    flags.DEFINE_list("operators", [], "Override the space's operators.", **d)
    flags.DEFINE_string(
        "arch_grad", "amended", f"One of {', '.join(bilevel.ARCH_GRADS)}.", **d
    )
    flags.DEFINE_float("eta", hparams.ETA, "Amending coefficient (>= 0).", **d)
    flags.DEFINE_string(
        "hvp", "exact", f"One of {', '.join(bilevel.HVP_MODES)}.", **d
    )
    flags.DEFINE_float("weight_lr", hparams.WEIGHT_LR, "Initial SGD lr.", **d)
    flags.DEFINE_float(
        "weight_lr_min",
        hparams.WEIGHT_LR_MIN,
        "Final SGD lr of the cosine schedule.",
        **d,
    )
    flags.DEFINE_float(
        "momentum", hparams.WEIGHT_MOMENTUM, "SGD momentum.", **d
    )
    flags.DEFINE_float(
        "weight_decay", hparams.WEIGHT_DECAY, "Coupled L2 on weights.", **d
    )
    flags.DEFINE_float(
        "grad_clip",
        hparams.GRAD_CLIP_NORM,
        "Global-norm clip of weight gradients.",
        **d,
    )
    flags.DEFINE_float("arch_lr", hparams.ARCH_LR, "Adam lr.", **d)
    flags.DEFINE_float("arch_beta1", hparams.ARCH_BETA_1, "Adam beta1.", **d)
    flags.DEFINE_float("arch_beta2", hparams.ARCH_BETA_2, "Adam beta2.", **d)
    flags.DEFINE_float(
        "arch_weight_decay",
        hparams.ARCH_WEIGHT_DECAY,
        "Coupled L2 on architecture parameters.",
        **d,
    )
    flags.DEFINE_float(
        "arch_init_scale",
        hparams.ARCH_INIT_SCALE,
        "Logits start at scale * N(0, 1); 0: equal weights.",
        **d,
    )
    flags.DEFINE_integer("cutout", 0, "Cutout length (0: off).", **d)
    flags.DEFINE_bool(
        "consistency",
        False,
        "Search with the re-training network's depth, width, Cutout, "
        "drop-path and auxiliary head (paper 2.4, B.1); flags given "
        "explicitly win (search_config.CONSISTENCY).",
        **d,
    )
    flags.DEFINE_bool(
        "auxiliary",
        False,
        "Auxiliary head after cell 2 * layers // 3 (needs 32x32 images).",
        **d,
    )
    flags.DEFINE_float(
        "auxiliary_weight",
        R.AUXILIARY_WEIGHT,
        "Weight of the auxiliary loss (train and validation losses).",
        **d,
    )
    flags.DEFINE_float(
        "drop_path_prob",
        0.0,
        "Drop-path probability reached at the last search epoch (ramped "
        "linearly from 0 per stage, as re-training does); 0: off.",
        **d,
    )
    flags.DEFINE_integer(
        "seed", 0, "Seed of data, initialisation, dropout.", **d
    )
    flags.DEFINE_bool(
        "deterministic",
        False,
        "Turn on TensorFlow op "
        "determinism (same flags + seed -> same genotype).",
        **d,
    )
    flags.DEFINE_bool("tensorboard", True, "Write TensorBoard logs.", **d)
    flags.DEFINE_integer(
        "verbose",
        1,
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
    flags.DEFINE_string(
        "strategy",
        "default",
        "Distribution: one of "
        f"{', '.join(distribute.STRATEGIES)} (see "
        "tf_amended_darts/core/distribute.py).",
        **d,
    )
    flags.DEFINE_integer(
        "num_gpus",
        0,
        "GPUs of --strategy=mirrored (0: "
        "all visible; CPU devices without GPUs).",
        **d,
    )
    flags.DEFINE_string(
        "dtype_policy",
        "float32",
        f"One of {', '.join(SEARCH_DTYPE_POLICIES)}; mixed_bfloat16 with "
        "--arch_grad=first_order only (README, Mixed precision).",
        **d,
    )
    flags.DEFINE_integer(
        "stop_when_stable",
        0,
        "End a search (each stage) once the derived genotype has not "
        "changed for this many epochs (--epochs is the upper bound); 0: "
        "run all --epochs (jobs/stopping.py).",
        **d,
    )
    flags.DEFINE_integer(
        "fidelity_every",
        0,
        "Every this many epochs, log the cosines of the second_order and "
        "amended second-order terms with the true g2 = -D H^-1 v (CG) on a "
        "fixed batch pair; 0: off (jobs/monitors.py).",
        **d,
    )
    flags.DEFINE_integer(
        "fidelity_cg_iterations",
        fidelity.CG_ITERATIONS,
        "Conjugate-gradient iterations at most for the fidelity's H^-1 v.",
        **d,
    )
    flags.DEFINE_float(
        "fidelity_damping",
        0.0,
        "Least damping lambda of the fidelity's solve of (H + lambda I) x "
        "= v; raised where CG meets non-positive curvature (logged as "
        "cg_damping).",
        **d,
    )
    flags.DEFINE_bool(
        "grappler",
        False,
        "Keep TensorFlow's graph optimiser on: minutes more for the "
        "first step and no faster later ones on the S1 supernet, but a "
        "lower peak memory for --hvp=exact (README, Benchmarks). Off by "
        "default.",
        **d,
    )
    flags.DEFINE_bool(
        "op_tracebacks",
        False,
        graph_settings.OP_TRACEBACKS_HELP,
        **d,
    )
    flags.DEFINE_bool(
        "recompute_cells",
        False,
        "Recompute each cell in the architecture step's passes instead of "
        "keeping its activations (vision/recomputed_cells.py): the same "
        "values, less than half the peak memory of the second-order "
        "products (S1 amended exact, batch 32: 5.9 GB against 12.3), "
        "1.6-2.0x the time per step (README, Benchmarks). Random draws "
        "(drop-path, the noise operator) repeat in the recomputations. "
        "Not with --hvp=forward nor on several replicas.",
        **d,
    )
    flags.DEFINE_integer(
        "malloc_threshold_kb",
        MALLOC_THRESHOLD_KB,
        "glibc's mmap and trim thresholds (KiB), set at start-up so that "
        "freed activations go back to the system: a lower peak memory "
        "(~10%). 0 leaves glibc's own dynamic thresholds: on the 2-core "
        "CPU host S1 first_order ran 2.3x faster per step for 8% more "
        "peak memory (README, Benchmarks). Linux with glibc only.",
        **d,
    )


@dataclasses.dataclass(frozen=True)
class SearchConfig:
    """A validated search configuration (see `define_flags`)."""

    model_dir: str
    dataset: str = "cifar10"
    data_dir: str = None
    image_size: int = 0
    train_portion: float = hparams.TRAIN_PORTION
    batch_size: int = hparams.SEARCH_BATCH_SIZE
    epochs: int = hparams.SEARCH_EPOCHS
    steps_per_epoch: int = 0
    space: str = "s1"
    edges: str = "pruned"
    layers: int = None
    init_channels: int = None
    nodes: int = 0
    operators: tuple = ()
    arch_grad: str = "amended"
    eta: float = hparams.ETA
    hvp: str = "exact"
    weight_lr: float = hparams.WEIGHT_LR
    weight_lr_min: float = hparams.WEIGHT_LR_MIN
    momentum: float = hparams.WEIGHT_MOMENTUM
    weight_decay: float = hparams.WEIGHT_DECAY
    grad_clip: float = hparams.GRAD_CLIP_NORM
    arch_lr: float = hparams.ARCH_LR
    arch_beta1: float = hparams.ARCH_BETA_1
    arch_beta2: float = hparams.ARCH_BETA_2
    arch_weight_decay: float = hparams.ARCH_WEIGHT_DECAY
    arch_init_scale: float = hparams.ARCH_INIT_SCALE
    cutout: int = None
    consistency: bool = False
    auxiliary: bool = None
    auxiliary_weight: float = None
    drop_path_prob: float = None
    seed: int = 0
    deterministic: bool = False
    tensorboard: bool = True
    verbose: int = 1
    keep_checkpoints: int = 2
    checkpoint_every_steps: int = 0
    grappler: bool = False
    op_tracebacks: bool = False
    recompute_cells: bool = False
    malloc_threshold_kb: int = MALLOC_THRESHOLD_KB
    dtype_policy: str = "float32"
    strategy: str = "default"
    num_gpus: int = 0
    stop_when_stable: int = 0
    fidelity_every: int = 0
    fidelity_cg_iterations: int = fidelity.CG_ITERATIONS
    fidelity_damping: float = 0.0

    def __post_init__(self):
        # Fields left unset (None) take the consistency value with
        # --consistency, the search's own default without it.
        defaults = CONSISTENCY if self.consistency else WITHOUT_CONSISTENCY
        for name, value in defaults.items():
            if getattr(self, name) is None:
                object.__setattr__(self, name, value)
        validate(self)

    def search_space(self):
        """The `search_space.SearchSpace` with this config's overrides."""
        overrides = {}
        if self.layers:
            overrides["layers"] = self.layers
        if self.init_channels:
            overrides["init_channels"] = self.init_channels
        if self.operators:
            overrides["operators"] = tuple(self.operators)
        if self.nodes:
            overrides["steps"] = overrides["multiplier"] = self.nodes
        return S.get_space(self.space, **overrides)

    def to_json(self):
        return json.dumps(dataclasses.asdict(self), indent=1, sort_keys=True)


def check_malloc_threshold_kb(value):
    """Raises ValueError naming --malloc_threshold_kb unless ``value >= 0``
    (the search's and the language jobs' check)."""
    if value < 0:
        _fail(
            "malloc_threshold_kb",
            "an integer >= 0 (0: glibc's own thresholds)",
            value,
        )


def validate(c):
    """Raises ValueError naming the first invalid flag."""
    if not c.model_dir:
        _fail("model_dir", "a directory path", c.model_dir)
    if c.dataset not in data.DATASETS:
        _fail("dataset", ", ".join(data.DATASETS), c.dataset)
    if c.space.lower() not in S.SPACES:
        _fail("space", ", ".join(S.SPACES), c.space)
    if c.edges not in S.EDGE_LAYOUTS:
        _fail("edges", ", ".join(S.EDGE_LAYOUTS), c.edges)
    bilevel.validate_estimator(c.arch_grad, c.eta, c.hvp)
    if c.operators:
        try:
            S.check_operators(tuple(c.operators))
        except ValueError as e:
            raise ValueError(f"Invalid --operators: {e}") from None
    positive = ("batch_size", "epochs")
    for name in positive:
        if getattr(c, name) < 1:
            _fail(name, "an integer >= 1", getattr(c, name))
    for name in (
        "steps_per_epoch",
        "layers",
        "init_channels",
        "nodes",
        "image_size",
        "cutout",
        "seed",
        "stop_when_stable",
        "fidelity_every",
    ):
        if getattr(c, name) < 0:
            _fail(name, "an integer >= 0 (0: default/off)", getattr(c, name))
    check_malloc_threshold_kb(c.malloc_threshold_kb)
    if not isinstance(c.auxiliary, bool):
        _fail("auxiliary", "true or false", c.auxiliary)
    if not 0.0 <= c.drop_path_prob < 1.0:
        _fail("drop_path_prob", "a number in [0, 1)", c.drop_path_prob)
    check_hvp(c.recompute_cells, c.hvp)
    if c.auxiliary_weight < 0:
        _fail("auxiliary_weight", "a number >= 0", c.auxiliary_weight)
    if c.layers and c.layers < 3:
        _fail(
            "layers",
            "0 (the space's) or an integer >= 3 (two "
            "reduction cells at 1/3 and 2/3 of the depth)",
            c.layers,
        )
    if c.init_channels and c.init_channels % 2:
        _fail(
            "init_channels",
            "an even integer (FactorizedReduce halves it)",
            c.init_channels,
        )
    if not 0.0 < c.train_portion < 1.0:
        _fail("train_portion", "a number in (0, 1)", c.train_portion)
    for name in ("weight_lr", "arch_lr"):
        if not getattr(c, name) > 0:
            _fail(name, "a number > 0", getattr(c, name))
    for name in (
        "weight_lr_min",
        "weight_decay",
        "arch_weight_decay",
        "arch_init_scale",
        "grad_clip",
    ):
        if getattr(c, name) < 0:
            _fail(name, "a number >= 0", getattr(c, name))
    if c.weight_lr_min > c.weight_lr:
        _fail(
            "weight_lr_min",
            f"a number <= --weight_lr={c.weight_lr}",
            c.weight_lr_min,
        )
    for name in ("momentum", "arch_beta1", "arch_beta2"):
        if not 0.0 <= getattr(c, name) < 1.0:
            _fail(name, "a number in [0, 1)", getattr(c, name))
    if c.fidelity_cg_iterations < 1:
        _fail(
            "fidelity_cg_iterations",
            "an integer >= 1",
            c.fidelity_cg_iterations,
        )
    if not c.fidelity_damping >= 0:
        _fail("fidelity_damping", "a number >= 0", c.fidelity_damping)
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
    if c.dtype_policy not in SEARCH_DTYPE_POLICIES:
        _fail(
            "dtype_policy",
            f"{', '.join(SEARCH_DTYPE_POLICIES)} (mixed_float16 needs loss "
            "scaling, which the bi-level engine does not do)",
            c.dtype_policy,
        )
    precision.search_policy_check(c.dtype_policy, c.arch_grad, c.hvp)


def from_flags(fv=flags.FLAGS):
    """A `SearchConfig` from parsed flag values.

    Under ``--consistency`` the flags of `CONSISTENCY` that were not given
    (on the command line or in a flagfile) take the consistency values.
    """
    kwargs = {}
    for field in dataclasses.fields(SearchConfig):
        value = fv[field.name].value
        if field.name == "operators":
            value = tuple(value or ())
        if (
            fv.consistency
            and field.name in CONSISTENCY
            and not fv[field.name].present
        ):
            value = None
        kwargs[field.name] = value
    return SearchConfig(**kwargs)
