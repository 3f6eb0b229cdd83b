"""Every baseline flagfile parses into valid configs (no run)."""

import glob
import os

import pytest
from absl import flags

from tests.helpers import REPO_ROOT
from tf_amended_darts.jobs import (
    baseline_config,
    random_search_config,
    search_config,
)

SEARCH = sorted(
    os.path.basename(p)
    for pattern in ("pc_darts*.cfg", "p_darts*.cfg", "r_darts*.cfg")
    for p in glob.glob(os.path.join(REPO_ROOT, "flags", pattern))
)
RANDOM = sorted(os.path.basename(p) for p in glob.glob(
    os.path.join(REPO_ROOT, "flags", "random_search*.cfg")))


def test_there_are_flagfiles_per_baseline():
    for prefix in ("pc_darts", "p_darts", "r_darts", "random_search"):
        names = SEARCH + RANDOM
        assert f"{prefix}_quickstart.cfg" in names
        assert f"{prefix}.cfg" in names


@pytest.mark.parametrize("name", SEARCH)
def test_search_baseline_flagfile(name, monkeypatch):
    monkeypatch.chdir(REPO_ROOT)
    fv = flags.FlagValues()
    search_config.define_flags(fv)
    baseline_config.define_flags(fv)
    fv(["search", f"--flagfile=flags/{name}", "--model_dir=unused"])
    config = search_config.from_flags(fv)
    extra = baseline_config.from_flags(fv)
    assert extra != baseline_config.BaselineConfig()
    if "quickstart" in name:
        assert config.dataset == "digits"
    if "_200" in name:
        epochs = config.epochs * max(extra.stages, 1)
        assert epochs >= 200


@pytest.mark.parametrize("name", RANDOM)
def test_random_search_flagfile(name, monkeypatch):
    monkeypatch.chdir(REPO_ROOT)
    fv = flags.FlagValues()
    random_search_config.define_flags(fv)
    fv(["random_search", f"--flagfile=flags/{name}", "--model_dir=unused"])
    config = random_search_config.from_flags(fv)
    assert config.trials >= 1
