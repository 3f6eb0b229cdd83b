"""Flags of --task=ptb: PTB defaults for shared flags, explicit values win,
--consistency, and errors that name the flag."""

import pytest
from absl import flags

from tf_amended_darts.jobs import language_config as LC
from tf_amended_darts.jobs import retrain_config, search_config


def _search_flags(args):
    fv = flags.FlagValues()
    search_config.define_flags(fv)
    LC.define_search_flags(fv)
    fv(["search", "--model_dir=/tmp/x", "--task=ptb"] + args)
    return fv


def _train_flags(args):
    fv = flags.FlagValues()
    retrain_config.define_flags(fv)
    LC.define_train_flags(fv)
    fv(["retrain", "--model_dir=/tmp/x", "--genotype=DARTS_V2",
        "--task=ptb"] + args)
    return fv


def test_search_takes_the_reference_values_unless_given():
    c = LC.search_from_flags(_search_flags([]))
    assert (c.dataset, c.batch_size, c.bptt, c.emsize, c.nhid) == (
        "ptb", 256, 35, 300, 300)
    assert (c.weight_lr, c.momentum, c.weight_decay, c.grad_clip) == (
        20.0, 0.0, 5e-7, 0.25)
    assert (c.arch_lr, c.arch_beta1, c.arch_weight_decay) == (3e-3, 0.9,
                                                              1e-3)
    assert (c.dropout, c.dropouth, c.dropoutx, c.dropouti, c.dropoute) == (
        0.75, 0.25, 0.75, 0.2, 0.0)
    assert c.nodes == 8 and c.tar_beta == 1e-3 and c.arch_grad == "amended"
    c = LC.search_from_flags(_search_flags(["--batch_size=32", "--eta=0.3",
                                            "--dropoute=0.05"]))
    assert (c.batch_size, c.eta, c.dropoute) == (32, 0.3, 0.05)


def test_forward_over_reverse_products_are_refused_for_ptb():
    with pytest.raises(ValueError, match="--hvp='forward'.*finite_difference"):
        LC.search_from_flags(_search_flags(["--hvp=forward"]))
    c = LC.search_from_flags(_search_flags(["--hvp=finite_difference"]))
    assert c.hvp == "finite_difference"


def test_consistency_brings_the_evaluation_regularisers():
    c = LC.search_from_flags(_search_flags(["--consistency"]))
    assert c.weight_decay == 8e-7 and c.dropoute == 0.1
    c = LC.search_from_flags(_search_flags(["--consistency",
                                            "--weight_decay=1e-6"]))
    assert c.weight_decay == 1e-6 and c.dropoute == 0.1


def test_training_takes_the_reference_values():
    c = LC.train_from_flags(_train_flags([]))
    assert (c.batch_size, c.epochs, c.emsize, c.learning_rate,
            c.weight_decay, c.dropoute, c.nonmono, c.max_seq_len_delta) == (
        64, 8000, 850, 20.0, 8e-7, 0.1, 5, 20)
    c2 = LC.LanguageTrainConfig.from_json(c.to_json())
    assert c2 == c


@pytest.mark.parametrize("args,match", [
    (["--space=s2"], "--space has no meaning with --task=ptb"),
    (["--dataset=cifar10"], "--dataset='cifar10'.*ptb, pydoc"),
    (["--emsize=100"], "--emsize=100.*--nhid=300"),
    (["--dropoutx=1.0"], "--dropoutx"),
    (["--arch_grad=third"], "--arch_grad"),
    (["--bptt=0"], "--bptt"),
])
def test_search_errors_name_the_flag(args, match):
    with pytest.raises(ValueError, match=match):
        LC.search_from_flags(_search_flags(args))


@pytest.mark.parametrize("args,match", [
    (["--cutout=16"], "--cutout has no meaning"),
    (["--nonmono=0"], "--nonmono"),
    (["--test_batch_size=0"], "--test_batch_size"),
])
def test_training_errors_name_the_flag(args, match):
    with pytest.raises(ValueError, match=match):
        LC.train_from_flags(_train_flags(args))


def test_malloc_threshold_reaches_the_language_search():
    assert LC.search_from_flags(_search_flags([])).malloc_threshold_kb == 64
    c = LC.search_from_flags(_search_flags(["--malloc_threshold_kb=0"]))
    assert c.malloc_threshold_kb == 0
    with pytest.raises(ValueError, match="--malloc_threshold_kb=-2"):
        LC.search_from_flags(_search_flags(["--malloc_threshold_kb=-2"]))
    # Language training shares the search's set-up (and its default).
    assert LC.train_from_flags(_train_flags([])).malloc_threshold_kb == 64
