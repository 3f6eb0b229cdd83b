"""Flags of the baselines on the search launcher, and their validated config.

The paper compares Amended-DARTS with PC-DARTS, P-DARTS and R-DARTS
(Tables 1-3, appendix C.3); each runs through ``launchers/search.py`` on
the same engine, data and run directory, with these flags on top of the
search flags (`search_config`). Defaults leave the search unchanged. Each
value's source is in ../shared/baselines.md; the paper's settings are in
``flags/pc_darts*.cfg``, ``flags/p_darts*.cfg``, ``flags/r_darts*.cfg``.

Flags are defined by `define_flags(flag_values)`, never at import; the
config is built from any `FlagValues`. Every check names the flag and the
accepted values.
"""

import dataclasses
import json

from absl import flags

from tf_amended_darts.core import hessian_eigen
from tf_amended_darts.jobs.errors import fail as _fail

EARLY_STOP_MODES = ("none", "es", "ada")

# R-DARTS src/search/args.py defaults (--window, --report_freq_hessian,
# --delta, --factor, --es_start_epoch); ../shared/baselines.md section 3.
ES_WINDOW = 5
ES_DELTA = 4
ES_FACTOR = 1.3
ES_START_EPOCH = 10
HESSIAN_EVERY = 2
# R-DARTS scripts/DARTS-ADA_search.sh: --mul_factor 10,
# --max_weight_decay 0.03.
ADA_MUL_FACTOR = 10.0
ADA_MAX_WEIGHT_DECAY = 0.03


def define_flags(fv=flags.FLAGS):
    """Defines the baselines' flags on ``fv``."""
    d = dict(flag_values=fv)
    # -- PC-DARTS ---------------------------------------------------------
    flags.DEFINE_integer(
        "partial_channels", 1,
        "PC-DARTS partial channel connections: 1/K of the channels go "
        "through each mixed edge, the rest bypass it, then a channel "
        "shuffle (K = 4 on CIFAR); 1: off.", **d)
    flags.DEFINE_bool(
        "edge_normalization", False,
        "PC-DARTS edge normalisation: per-node softmax betas scale each "
        "edge and weigh it in the derivation.", **d)
    flags.DEFINE_integer(
        "arch_warmup_epochs", 0,
        "Epochs (per stage) of weight training before the first "
        "architecture step (PC-DARTS 15, P-DARTS 10); 0: from the start.",
        **d)
    flags.DEFINE_float(
        "arch_grad_clip", 0.0,
        "Global-norm clip of the architecture gradient (P-DARTS 5); 0: off.",
        **d)
    # -- P-DARTS ----------------------------------------------------------
    flags.DEFINE_list(
        "progressive_layers", [],
        "P-DARTS: cells of each stage's supernet, e.g. 5,11,17; empty: "
        "one ordinary search.", **d)
    flags.DEFINE_list(
        "progressive_ops", [],
        "P-DARTS: operators per edge in each stage, e.g. 8,5,3 (the weakest "
        "dropped between stages; one, never none, kept after the last).",
        **d)
    flags.DEFINE_list(
        "progressive_skip_dropout", [],
        "P-DARTS: dropout rate on skip-connections per stage, e.g. "
        "0.0,0.4,0.7 (decayed within a stage); empty: none.", **d)
    flags.DEFINE_integer(
        "max_skip_connects", -1,
        "P-DARTS: at most this many skip_connect in the final normal cell "
        "(the paper's M = 2); -1: no constraint.", **d)
    flags.DEFINE_bool(
        "progressive_carry_alpha", False,
        "P-DARTS: start each stage's logits of the kept operators from the "
        "previous stage's (the reference starts every stage afresh).", **d)
    # -- R-DARTS ----------------------------------------------------------
    flags.DEFINE_integer(
        "hessian_every", 0,
        "R-DARTS: the dominant eigenvalue of the validation Hessian over "
        "alpha every this many epochs and at the last (metrics.csv column "
        "hessian_eigenvalue); 0: off.", **d)
    flags.DEFINE_integer(
        "hessian_iterations", hessian_eigen.POWER_ITERATIONS,
        "Most Hessian-vector products per power iteration.", **d)
    flags.DEFINE_float(
        "hessian_tolerance", hessian_eigen.POWER_TOLERANCE,
        "Power iteration stops at residual <= tolerance * |eigenvalue|.", **d)
    flags.DEFINE_string(
        "early_stop", "none",
        f"R-DARTS: one of {', '.join(EARLY_STOP_MODES)} (es: DARTS-ES, stop "
        "and keep the genotype from before the eigenvalue grew; ada: "
        "DARTS-ADA, roll back and raise the weight decay).", **d)
    flags.DEFINE_integer(
        "es_window", ES_WINDOW, "Eigenvalues in the local average.", **d)
    flags.DEFINE_integer(
        "es_delta", ES_DELTA,
        "Local averages between the two compared ones.", **d)
    flags.DEFINE_float(
        "es_factor", ES_FACTOR,
        "Stop when the newest local average / the one es_delta before "
        "exceeds this.", **d)
    flags.DEFINE_integer(
        "es_start_epoch", ES_START_EPOCH,
        "No stop at an epoch (0-based) before this.", **d)
    flags.DEFINE_float(
        "ada_mul_factor", ADA_MUL_FACTOR,
        "DARTS-ADA: weight decay multiplier per trigger.", **d)
    flags.DEFINE_float(
        "ada_max_weight_decay", ADA_MAX_WEIGHT_DECAY,
        "DARTS-ADA: the weight decay is raised while it stays <= this.", **d)


def _ints(flag, values):
    try:
        out = tuple(int(v) for v in values)
    except (TypeError, ValueError):
        _fail(flag, "a comma-separated list of integers", values)
    return out


def _floats(flag, values):
    try:
        out = tuple(float(v) for v in values)
    except (TypeError, ValueError):
        _fail(flag, "a comma-separated list of numbers", values)
    return out


@dataclasses.dataclass(frozen=True)
class BaselineConfig:
    """A validated baseline configuration (see `define_flags`)."""

    partial_channels: int = 1
    edge_normalization: bool = False
    arch_warmup_epochs: int = 0
    arch_grad_clip: float = 0.0
    progressive_layers: tuple = ()
    progressive_ops: tuple = ()
    progressive_skip_dropout: tuple = ()
    max_skip_connects: int = -1
    progressive_carry_alpha: bool = False
    hessian_every: int = 0
    hessian_iterations: int = hessian_eigen.POWER_ITERATIONS
    hessian_tolerance: float = hessian_eigen.POWER_TOLERANCE
    early_stop: str = "none"
    es_window: int = ES_WINDOW
    es_delta: int = ES_DELTA
    es_factor: float = ES_FACTOR
    es_start_epoch: int = ES_START_EPOCH
    ada_mul_factor: float = ADA_MUL_FACTOR
    ada_max_weight_decay: float = ADA_MAX_WEIGHT_DECAY

    def __post_init__(self):
        for name, parse in (
            ("progressive_layers", _ints),
            ("progressive_ops", _ints),
            ("progressive_skip_dropout", _floats),
        ):
            object.__setattr__(
                self, name, parse(name, getattr(self, name) or ())
            )
        validate(self)

    @property
    def progressive(self):
        """Whether this is a P-DARTS run."""
        return bool(self.progressive_layers)

    @property
    def stages(self):
        """P-DARTS stages (0 when not progressive)."""
        return len(self.progressive_layers)

    def to_json(self):
        return json.dumps(dataclasses.asdict(self), indent=1, sort_keys=True)


def validate(c):
    """Raises ValueError naming the first invalid flag."""
    if c.partial_channels < 1:
        _fail("partial_channels", "an integer >= 1 (1: off)",
              c.partial_channels)
    for name in ("arch_warmup_epochs", "hessian_every", "es_start_epoch"):
        if getattr(c, name) < 0:
            _fail(name, "an integer >= 0", getattr(c, name))
    if c.arch_grad_clip < 0:
        _fail("arch_grad_clip", "a number >= 0 (0: off)", c.arch_grad_clip)
    if c.progressive or c.progressive_ops or c.progressive_skip_dropout:
        _validate_progressive(c)
    if c.max_skip_connects < -1:
        _fail("max_skip_connects", "-1 (off) or an integer >= 0",
              c.max_skip_connects)
    if c.hessian_iterations < 1:
        _fail("hessian_iterations", "an integer >= 1", c.hessian_iterations)
    if not c.hessian_tolerance > 0:
        _fail("hessian_tolerance", "a number > 0", c.hessian_tolerance)
    if c.early_stop not in EARLY_STOP_MODES:
        _fail("early_stop", ", ".join(EARLY_STOP_MODES), c.early_stop)
    if c.early_stop != "none":
        if not c.hessian_every:
            _fail("hessian_every",
                  f"an integer >= 1 with --early_stop={c.early_stop} (the "
                  "rule reads the eigenvalues)", c.hessian_every)
        if c.progressive:
            _fail("early_stop", "none with --progressive_layers",
                  c.early_stop)
    for name in ("es_window", "es_delta"):
        if getattr(c, name) < 1:
            _fail(name, "an integer >= 1", getattr(c, name))
    if not c.es_factor > 0:
        _fail("es_factor", "a number > 0", c.es_factor)
    if not c.ada_mul_factor > 1:
        _fail("ada_mul_factor", "a number > 1", c.ada_mul_factor)
    if not c.ada_max_weight_decay > 0:
        _fail("ada_max_weight_decay", "a number > 0", c.ada_max_weight_decay)


def _validate_progressive(c):
    n = len(c.progressive_layers)
    if not n:
        _fail("progressive_layers",
              "a list of cell counts (one per stage) with --progressive_ops",
              c.progressive_layers)
    if any(layers < 3 for layers in c.progressive_layers):
        _fail("progressive_layers",
              "integers >= 3 (two reduction cells per supernet)",
              c.progressive_layers)
    ops = c.progressive_ops
    if len(ops) != n or any(k < 2 for k in ops) or any(
        a <= b for a, b in zip(ops, ops[1:], strict=False)
    ):
        _fail("progressive_ops",
              f"{n} decreasing integers >= 2 (operators per edge in each "
              "stage of --progressive_layers)", ops)
    drops = c.progressive_skip_dropout
    if drops and (len(drops) != n or any(not 0 <= p < 1 for p in drops)):
        _fail("progressive_skip_dropout",
              f"empty or {n} numbers in [0, 1) (one per stage)", drops)
    if c.edge_normalization:
        _fail("progressive_layers",
              "empty with --edge_normalization (P-DARTS' final rule ranks "
              "edges by their operator weights alone)", c.progressive_layers)


def from_flags(fv=flags.FLAGS):
    """A `BaselineConfig` from parsed flag values.

    Flags not defined on ``fv`` (a `FlagValues` with the search flags only)
    take their defaults: the plain search.
    """
    return BaselineConfig(
        **{
            f.name: fv[f.name].value
            for f in dataclasses.fields(BaselineConfig)
            if f.name in fv
        }
    )
