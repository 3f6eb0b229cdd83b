"""Every ptb flagfile parses into a valid config with the paper's values."""

import pytest
from absl import flags

from tests.helpers import REPO_ROOT
from tf_amended_darts.jobs import language_config as LC
from tf_amended_darts.jobs import retrain_config, search_config


def _search(name):
    fv = flags.FlagValues()
    search_config.define_flags(fv)
    LC.define_search_flags(fv)
    fv(["search", f"--flagfile=flags/{name}", "--model_dir=/tmp/x"])
    return LC.search_from_flags(fv)


@pytest.fixture(autouse=True)
def _root(monkeypatch):
    monkeypatch.chdir(REPO_ROOT)  # flagfiles include each other by path


@pytest.mark.parametrize("name,arch_grad,hvp,wd,dropoute", [
    ("ptb_search_amended.cfg", "amended", "finite_difference", 8e-7, 0.1),
    ("ptb_search_darts_first_order.cfg", "first_order", "exact", 5e-7, 0.0),
    ("ptb_search_darts_second_order.cfg", "second_order",
     "finite_difference", 5e-7, 0.0),
    ("ptb_quickstart.cfg", "amended", "exact", 5e-7, 0.0),
])
def test_search_flagfiles(name, arch_grad, hvp, wd, dropoute):
    c = _search(name)
    assert (c.arch_grad, c.hvp, c.weight_decay, c.dropoute) == (
        arch_grad, hvp, wd, dropoute)
    if name != "ptb_quickstart.cfg":
        assert (c.dataset, c.batch_size, c.bptt, c.nhid, c.epochs) == (
            "ptb", 256, 35, 300, 50)


@pytest.mark.parametrize("name", ["ptb_train.cfg",
                                  "ptb_train_quickstart.cfg"])
def test_train_flagfiles(name):
    fv = flags.FlagValues()
    retrain_config.define_flags(fv)
    LC.define_train_flags(fv)
    fv(["retrain", f"--flagfile=flags/{name}", "--model_dir=/tmp/x",
        "--genotype=DARTS_V2"])
    c = LC.train_from_flags(fv)
    if name == "ptb_train.cfg":
        assert (c.nhid, c.batch_size, c.weight_decay, c.dropoute,
                c.nonmono) == (850, 64, 8e-7, 0.1, 5)
