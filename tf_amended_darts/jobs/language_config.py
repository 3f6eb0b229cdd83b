"""Flags and validated configs of the language task (``--task=ptb``).

The search and re-training launchers keep their flags; this module adds
``--task`` and the language-only flags (``--bptt``, ``--emsize``,
``--nhid``, the dropouts, ...), each defined by a function, never at
import. Shared flags keep their meaning (``--model_dir --epochs
--batch_size --arch_grad --eta --hvp --seed --data_dir --deterministic``
...), but under ``--task=ptb`` a shared flag that was not given (command
line or flagfile) takes the reference's recurrent value
(`SEARCH_DEFAULTS`, `TRAIN_DEFAULTS`), not the CNN one: batch 256, SGD
learning rate 20 without momentum, clip 0.25, ...; and a CNN-only flag
given explicitly (``--space``, ``--cutout``, ...) is an error that names
it. Every check names the flag and the accepted values.

``--consistency`` (the paper's second change, ../shared/method.md
section 9) makes the search use the evaluation's weight decay (8e-7) and
dropout rates (the embedding dropout 0.1; the others are equal already);
flags given explicitly win.

Sources: [darts] github.com/quark0/darts ``rnn/train_search.py`` (search)
and ``rnn/train.py`` (evaluation); [amended] the paper, section 3.3.
"""

import dataclasses
import json

from absl import flags

from tf_amended_darts.core import bilevel, hparams
from tf_amended_darts.jobs.errors import fail as _fail
from tf_amended_darts.jobs.search_config import (
    MALLOC_THRESHOLD_KB,
    check_malloc_threshold_kb,
)
from tf_amended_darts.language import asgd, corpus, space

TASKS = ("vision", "ptb")

# --- Search ([darts] rnn/train_search.py defaults) --------------------------
SEARCH_DEFAULTS = {
    "dataset": "ptb",
    "batch_size": 256,  # --batch_size
    "epochs": 50,  # --epochs
    "weight_lr": 20.0,  # --lr (constant; rescaled by seq_len / bptt)
    "momentum": 0.0,  # torch.optim.SGD(lr, weight_decay): no momentum
    "weight_decay": 5e-7,  # --wdecay (coupled L2)
    "grad_clip": 0.25,  # --clip (global norm)
    "arch_lr": 3e-3,  # --arch_lr
    "arch_beta1": 0.9,  # rnn/architect.py: torch Adam default betas
    "arch_beta2": 0.999,
    "arch_weight_decay": 1e-3,  # --arch_wdecay
    "arch_init_scale": hparams.ARCH_INIT_SCALE,  # model_search.py 1e-3 randn
    "nodes": space.STEPS,
}
SEARCH_MODEL = {
    "bptt": 35,  # --bptt
    "emsize": 300,  # --emsize
    "nhid": 300,  # --nhid
    "dropout": 0.75,  # --dropout (output, locked)
    "dropouth": 0.25,  # --dropouth (hidden, variational)
    "dropoutx": 0.75,  # --dropoutx (cell input, variational)
    "dropouti": 0.2,  # --dropouti (embedding output, locked)
    "dropoute": 0.0,  # --dropoute (whole words)
    "tar_beta": 1e-3,  # --beta (temporal activation regularisation)
}
# --- Evaluation ([darts] rnn/train.py defaults) -----------------------------
TRAIN_DEFAULTS = {
    "dataset": "ptb",
    "batch_size": 64,  # --batch_size
    "epochs": 8000,  # --epochs
    "learning_rate": 20.0,  # --lr
    "weight_decay": 8e-7,  # --wdecay
    "grad_clip": 0.25,  # --clip
}
TRAIN_MODEL = dict(SEARCH_MODEL, emsize=850, nhid=850, dropoute=0.1)
MAX_SEQ_LEN_DELTA = 20  # [darts] rnn/train.py --max_seq_len_delta
EVAL_BATCH_SIZE = 10  # [darts] rnn/train*.py eval_batch_size
TEST_BATCH_SIZE = 1  # [darts] rnn/train.py test_batch_size
# What --consistency brings from the evaluation into the search.
CONSISTENCY = {
    "weight_decay": TRAIN_DEFAULTS["weight_decay"],
    **{k: TRAIN_MODEL[k] for k in ("dropout", "dropouth", "dropoutx",
                                   "dropouti", "dropoute")},
}

# Flags of the CNN launchers that have no meaning for --task=ptb.
VISION_ONLY_SEARCH = (
    "space", "edges", "layers", "init_channels", "operators", "image_size",
    "train_portion", "weight_lr_min", "cutout", "auxiliary",
    "auxiliary_weight", "drop_path_prob", "dtype_policy", "strategy",
    "num_gpus", "stop_when_stable", "fidelity_every",
    "fidelity_cg_iterations", "fidelity_damping", "recompute_cells",
)
VISION_ONLY_TRAIN = (
    "manual_dir", "download", "image_size", "learning_rate_min",
    "lr_schedule", "momentum", "layers", "init_channels", "auxiliary",
    "auxiliary_weight", "drop_path_prob", "cutout", "label_smoothing",
    "seeds", "strategy", "num_gpus", "dtype_policy",
)


LANGUAGE_HVP_MODES = ("exact", "finite_difference")


def define_task_flag(fv=flags.FLAGS):
    """``--task``: ``vision`` (default, the CNN task) or ``ptb``."""
    flags.DEFINE_enum(
        "task", "vision", list(TASKS),
        "vision: CNN cells (CIFAR-10, ...); ptb: the recurrent cell on "
        "Penn Treebank (or --dataset=pydoc offline).", flag_values=fv,
    )


def _define_model_flags(fv, model, train):
    d = dict(flag_values=fv)
    stage = "evaluation" if train else "search"
    flags.DEFINE_integer("bptt", model["bptt"], "Base sequence length of "
                         "truncated back-propagation (ptb).", **d)
    flags.DEFINE_integer("emsize", model["emsize"], f"Embedding width of the "
                         f"{stage} model (= --nhid; tied; ptb).", **d)
    flags.DEFINE_integer("nhid", model["nhid"], "Hidden width (ptb).", **d)
    for name, what in (
        ("dropout", "output (locked)"),
        ("dropouth", "hidden state (variational)"),
        ("dropoutx", "cell input (variational)"),
        ("dropouti", "embedding output (locked)"),
        ("dropoute", "embedding, whole words"),
    ):
        flags.DEFINE_float(name, model[name], f"Dropout of the {what} "
                           "(ptb).", **d)
    flags.DEFINE_float("tar_beta", model["tar_beta"], "Temporal activation "
                       "regularisation beta (ptb).", **d)
    flags.DEFINE_integer(
        "vocab_size", corpus.PTB_VOCAB_SIZE,
        "Vocabulary cap of --dataset=pydoc (PTB's is fixed; ptb).", **d)
    flags.DEFINE_integer("eval_batch_size", EVAL_BATCH_SIZE,
                         "Batch of the validation perplexity (ptb).", **d)
    flags.DEFINE_integer("eval_steps", 0, "Cap on the batches of each "
                         "perplexity evaluation; 0: whole split (ptb).", **d)


def define_search_flags(fv=flags.FLAGS):
    """``--task`` and the search's language-only flags."""
    define_task_flag(fv)
    _define_model_flags(fv, SEARCH_MODEL, train=False)


def define_train_flags(fv=flags.FLAGS):
    """``--task`` and the evaluation training's language-only flags."""
    define_task_flag(fv)
    _define_model_flags(fv, TRAIN_MODEL, train=True)
    d = dict(flag_values=fv)
    flags.DEFINE_integer("max_seq_len_delta", MAX_SEQ_LEN_DELTA,
                         "Longest sequence above --bptt (ptb).", **d)
    flags.DEFINE_integer("nonmono", asgd.NONMONO, "NT-ASGD patience, in "
                         "validation checks (ptb).", **d)
    flags.DEFINE_integer("test_batch_size", TEST_BATCH_SIZE,
                         "Batch of the test perplexity (ptb).", **d)


def _check_common(c):
    if not c.model_dir:
        _fail("model_dir", "a directory path", c.model_dir)
    if c.dataset not in corpus.DATASETS:
        _fail("dataset", ", ".join(corpus.DATASETS) + " (with --task=ptb)",
              c.dataset)
    for name in ("batch_size", "epochs", "bptt", "emsize", "nhid",
                 "eval_batch_size"):
        if getattr(c, name) < 1:
            _fail(name, "an integer >= 1", getattr(c, name))
    if c.emsize != c.nhid:
        _fail("emsize", f"equal to --nhid={c.nhid} (tied embedding)",
              c.emsize)
    if c.vocab_size < 3:
        _fail("vocab_size", "an integer >= 3", c.vocab_size)
    for name in ("steps_per_epoch", "eval_steps", "seed"):
        if getattr(c, name) < 0:
            _fail(name, "an integer >= 0 (0: default/off)", getattr(c, name))
    for name in ("dropout", "dropouth", "dropoutx", "dropouti", "dropoute"):
        if not 0.0 <= getattr(c, name) < 1.0:
            _fail(name, "a number in [0, 1)", getattr(c, name))
    for name in ("tar_beta", "weight_decay", "grad_clip"):
        if getattr(c, name) < 0:
            _fail(name, "a number >= 0", getattr(c, name))
    if c.verbose not in (0, 1, 2):
        _fail("verbose", "0, 1, 2", c.verbose)
    if c.keep_checkpoints < 1:
        _fail("keep_checkpoints", "an integer >= 1", c.keep_checkpoints)
    check_malloc_threshold_kb(c.malloc_threshold_kb)


# Flags a language run may resume with changed (run_dir.check): logging,
# checkpoint retention, where the data lives, how the graph is built;
# --epochs only upward. Any other difference changes the model or the data
# (the same rule as the CNN jobs' search_config.RESUMABLE).
RESUMABLE = (
    "data_dir",
    "verbose",
    "tensorboard",
    "keep_checkpoints",
    "grappler",
    "op_tracebacks",
    "malloc_threshold_kb",
    "deterministic",
)
UPWARD = ("epochs",)


@dataclasses.dataclass(frozen=True)
class LanguageSearchConfig:
    """A validated recurrent-cell search (see the module docstring)."""

    model_dir: str
    dataset: str = "ptb"
    data_dir: str = None
    vocab_size: int = corpus.PTB_VOCAB_SIZE
    batch_size: int = SEARCH_DEFAULTS["batch_size"]
    bptt: int = SEARCH_MODEL["bptt"]
    epochs: int = SEARCH_DEFAULTS["epochs"]
    steps_per_epoch: int = 0
    emsize: int = SEARCH_MODEL["emsize"]
    nhid: int = SEARCH_MODEL["nhid"]
    nodes: int = space.STEPS
    arch_grad: str = "amended"
    eta: float = hparams.ETA
    hvp: str = "exact"
    weight_lr: float = SEARCH_DEFAULTS["weight_lr"]
    momentum: float = SEARCH_DEFAULTS["momentum"]
    weight_decay: float = None
    grad_clip: float = SEARCH_DEFAULTS["grad_clip"]
    arch_lr: float = SEARCH_DEFAULTS["arch_lr"]
    arch_beta1: float = SEARCH_DEFAULTS["arch_beta1"]
    arch_beta2: float = SEARCH_DEFAULTS["arch_beta2"]
    arch_weight_decay: float = SEARCH_DEFAULTS["arch_weight_decay"]
    arch_init_scale: float = SEARCH_DEFAULTS["arch_init_scale"]
    dropout: float = None
    dropouth: float = None
    dropoutx: float = None
    dropouti: float = None
    dropoute: float = None
    tar_beta: float = SEARCH_MODEL["tar_beta"]
    consistency: bool = False
    eval_batch_size: int = EVAL_BATCH_SIZE
    eval_steps: int = 0
    seed: int = 0
    deterministic: bool = False
    grappler: bool = False
    op_tracebacks: bool = False
    malloc_threshold_kb: int = MALLOC_THRESHOLD_KB
    tensorboard: bool = True
    verbose: int = 1
    keep_checkpoints: int = 2
    task: str = "ptb"

    def __post_init__(self):
        # Unset (None): the evaluation's value under --consistency, else
        # the search's own.
        for name in CONSISTENCY:
            if getattr(self, name) is None:
                value = (
                    CONSISTENCY[name]
                    if self.consistency
                    else SEARCH_DEFAULTS.get(name, SEARCH_MODEL.get(name))
                )
                object.__setattr__(self, name, value)
        _check_common(self)
        bilevel.validate_estimator(self.arch_grad, self.eta, self.hvp)
        if self.hvp not in LANGUAGE_HVP_MODES:
            # forward-over-reverse is verified on the CNN supernet only.
            _fail("hvp", " or ".join(LANGUAGE_HVP_MODES) + " under --task=ptb",
                  self.hvp)
        if self.nodes < 1:
            _fail("nodes", "an integer >= 1 (intermediate nodes)", self.nodes)
        for name in ("weight_lr", "arch_lr"):
            if not getattr(self, name) > 0:
                _fail(name, "a number > 0", getattr(self, name))
        for name in ("momentum", "arch_beta1", "arch_beta2"):
            if not 0.0 <= getattr(self, name) < 1.0:
                _fail(name, "a number in [0, 1)", getattr(self, name))
        for name in ("arch_weight_decay", "arch_init_scale"):
            if getattr(self, name) < 0:
                _fail(name, "a number >= 0", getattr(self, name))

    def to_json(self):
        return json.dumps(dataclasses.asdict(self), indent=1, sort_keys=True)


@dataclasses.dataclass(frozen=True)
class LanguageTrainConfig:
    """A validated training of a recurrent genotype (NT-ASGD)."""

    genotype: str
    model_dir: str
    dataset: str = "ptb"
    data_dir: str = None
    vocab_size: int = corpus.PTB_VOCAB_SIZE
    batch_size: int = TRAIN_DEFAULTS["batch_size"]
    bptt: int = TRAIN_MODEL["bptt"]
    max_seq_len_delta: int = MAX_SEQ_LEN_DELTA
    epochs: int = TRAIN_DEFAULTS["epochs"]
    steps_per_epoch: int = 0
    emsize: int = TRAIN_MODEL["emsize"]
    nhid: int = TRAIN_MODEL["nhid"]
    learning_rate: float = TRAIN_DEFAULTS["learning_rate"]
    weight_decay: float = TRAIN_DEFAULTS["weight_decay"]
    grad_clip: float = TRAIN_DEFAULTS["grad_clip"]
    dropout: float = TRAIN_MODEL["dropout"]
    dropouth: float = TRAIN_MODEL["dropouth"]
    dropoutx: float = TRAIN_MODEL["dropoutx"]
    dropouti: float = TRAIN_MODEL["dropouti"]
    dropoute: float = TRAIN_MODEL["dropoute"]
    tar_beta: float = TRAIN_MODEL["tar_beta"]
    nonmono: int = asgd.NONMONO
    eval_batch_size: int = EVAL_BATCH_SIZE
    test_batch_size: int = TEST_BATCH_SIZE
    eval_steps: int = 0
    seed: int = 0
    deterministic: bool = False
    grappler: bool = False
    op_tracebacks: bool = False
    malloc_threshold_kb: int = MALLOC_THRESHOLD_KB
    tensorboard: bool = True
    verbose: int = 2
    keep_checkpoints: int = 2
    task: str = "ptb"

    def __post_init__(self):
        _check_common(self)
        if not self.genotype:
            _fail("genotype", "a published recurrent genotype name or a "
                  "genotype JSON path", self.genotype)
        if not self.learning_rate > 0:
            _fail("learning_rate", "a number > 0", self.learning_rate)
        if self.max_seq_len_delta < 0:
            _fail("max_seq_len_delta", "an integer >= 0",
                  self.max_seq_len_delta)
        if self.nonmono < 1:
            _fail("nonmono", "an integer >= 1", self.nonmono)
        if self.test_batch_size < 1:
            _fail("test_batch_size", "an integer >= 1", self.test_batch_size)

    def to_json(self):
        return json.dumps(dataclasses.asdict(self), indent=1, sort_keys=True)

    @classmethod
    def from_json(cls, text):
        values = json.loads(text)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"Unknown language training config keys: "
                             f"{unknown}")
        return cls(**values)


def _reject_vision_flags(fv, names):
    given = [n for n in names if n in fv and fv[n].present]
    if given:
        raise ValueError(
            f"--{given[0]} has no meaning with --task=ptb (a flag of the "
            f"CNN task). Remove it; the recurrent task's flags: --bptt, "
            "--emsize, --nhid, --dropout*, --tar_beta, --vocab_size, ..."
        )


def _values(fv, cls, defaults, skip=()):
    kwargs = {}
    for field in dataclasses.fields(cls):
        name = field.name
        if name in skip or name not in fv:
            continue
        flag = fv[name]
        if name in defaults and not flag.present:
            kwargs[name] = defaults[name]
        else:
            kwargs[name] = flag.value
    return kwargs


def search_from_flags(fv=flags.FLAGS):
    """A `LanguageSearchConfig` from parsed flags (``--task=ptb``)."""
    _reject_vision_flags(fv, VISION_ONLY_SEARCH)
    kwargs = _values(fv, LanguageSearchConfig, SEARCH_DEFAULTS)
    for name in CONSISTENCY:  # None: the consistency rule decides
        if name in fv and not fv[name].present:
            kwargs[name] = None
    kwargs["task"] = "ptb"
    return LanguageSearchConfig(**kwargs)


def train_from_flags(fv=flags.FLAGS):
    """A `LanguageTrainConfig` from parsed flags (``--task=ptb``)."""
    _reject_vision_flags(fv, VISION_ONLY_TRAIN)
    kwargs = _values(fv, LanguageTrainConfig, TRAIN_DEFAULTS)
    kwargs["task"] = "ptb"
    return LanguageTrainConfig(**kwargs)
