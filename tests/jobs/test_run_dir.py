"""A run directory belongs to one configuration."""

import dataclasses
import json
import os

import pytest
from absl import flags

from tf_amended_darts.jobs import (
    errors,
    retrain_config,
    run_dir,
    search,
    search_config,
)
from tf_amended_darts.jobs.run_dir import ConfigMismatchError

OLD = {"model_dir": "a", "init_channels": 8, "layers": 5, "epochs": 3,
       "verbose": 1, "operators": ["skip_connect", "none"]}


def _write(d, values):
    os.makedirs(d, exist_ok=True)
    (d / run_dir.CONFIG_FILE).write_text(json.dumps(values))


def test_a_new_directory_and_the_same_config_pass(tmp_path):
    assert run_dir.check(tmp_path / "new", OLD) == []
    _write(tmp_path, OLD)
    same = dict(OLD, model_dir="elsewhere",
                operators=("skip_connect", "none"))  # tuple as stored list
    assert run_dir.check(tmp_path, same) == []


def test_model_flags_that_differ_are_named_old_to_new(tmp_path):
    _write(tmp_path, OLD)
    before = sorted(os.listdir(tmp_path))
    new = dict(OLD, init_channels=12, layers=8, verbose=2,
               operators=["none"])
    with pytest.raises(ConfigMismatchError) as info:
        run_dir.check(tmp_path, new, resumable=("verbose",))
    message = str(info.value)
    assert "\n" not in message
    for part in ("--init_channels 8 -> 12", "--layers 5 -> 8",
                 "--operators skip_connect,none -> none",
                 "Rerun with that run's flags", "a new --model_dir",
                 "nothing was written"):
        assert part in message
    assert "verbose" not in message
    assert sorted(os.listdir(tmp_path)) == before
    # A usage error for the launchers: exit status 2.
    assert errors.exit_status(info.value) == errors.EXIT_USAGE


def test_epochs_upward_and_resumable_flags_are_recorded(tmp_path):
    _write(tmp_path, OLD)
    new = dict(OLD, epochs=5, verbose=0)
    changes = run_dir.check(tmp_path, new, resumable=("verbose",),
                            upward=("epochs",))
    assert changes == [("epochs", 3, 5), ("verbose", 1, 0)]
    run_dir.record(tmp_path, json.dumps(new), changes)
    assert json.loads((tmp_path / "config.json").read_text()) == new
    log = (tmp_path / run_dir.CHANGES_FILE).read_text().splitlines()
    assert len(log) == 1
    assert log[0].endswith("resumed with --epochs 3 -> 5, --verbose 1 -> 0")
    with pytest.raises(ConfigMismatchError,
                       match=r"--epochs 5 -> 2 \(only upward\)"):
        run_dir.check(tmp_path, dict(new, epochs=2), upward=("epochs",))


def test_fields_added_later_compare_with_their_default(tmp_path):
    _write(tmp_path, OLD)
    new = dict(OLD, checkpoint_every_steps=0)
    assert run_dir.check(tmp_path, new,
                         defaults={"checkpoint_every_steps": 0}) == []
    with pytest.raises(ConfigMismatchError, match="--cutout 0 -> 16"):
        run_dir.check(tmp_path, dict(OLD, cutout=16), defaults={"cutout": 0})


def test_an_unreadable_config_is_named(tmp_path):
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ConfigMismatchError, match="config.json cannot be"):
        run_dir.check(tmp_path, OLD)


def _search_flags(args):
    fv = flags.FlagValues()
    search_config.define_flags(fv)
    fv(["search"] + args)
    return fv


SEARCH = ["--dataset=digits", "--space=s3", "--layers=3",
          "--init_channels=8", "--epochs=2"]


def test_search_launcher_stops_before_writing(tmp_path):
    from launchers import search as launcher

    d = tmp_path / "run"
    config = search_config.from_flags(
        _search_flags(SEARCH + [f"--model_dir={d}"]))
    run_dir.record(d, config.to_json())
    (d / "flags.txt").write_text("--init_channels=8\n")
    before = {p: (d / p).read_bytes() for p in os.listdir(d)}
    fv = _search_flags(SEARCH + [f"--model_dir={d}", "--init_channels=12",
                                 "--epochs=4", "--verbose=0"])
    with pytest.raises(ConfigMismatchError) as info:
        launcher.run_search(fv)
    assert "--init_channels 8 -> 12" in str(info.value)
    assert "epochs" not in str(info.value) and "verbose" not in str(
        info.value)
    assert {p: (d / p).read_bytes() for p in os.listdir(d)} == before
    # --epochs upward and --verbose are allowed.
    allowed = search_config.from_flags(
        _search_flags(SEARCH + [f"--model_dir={d}", "--epochs=4",
                                "--verbose=0", "--checkpoint_every_steps=5"]))
    assert search.check_run_dir(allowed) == [
        ("checkpoint_every_steps", 0, 5), ("epochs", 2, 4), ("verbose", 1, 0)]


def test_retrain_compares_the_genotype_by_its_cells(tmp_path):
    from tf_amended_darts.jobs import retrain
    from tf_amended_darts.vision import genotype as G

    d = tmp_path / "run"
    config = retrain_config.RetrainConfig(
        genotype="DARTS_V2", model_dir=str(d), dataset="digits", layers=3,
        init_channels=4)
    run_dir.record(d, config.to_json())
    G.save(config.load_genotype(), str(d / "genotype.json"))
    copy = tmp_path / "copy.json"
    G.save(config.load_genotype(), str(copy))
    # The same cells through another path: the same run.
    same = dataclasses.replace(config, genotype=str(copy))
    assert retrain.check_run_dir(same) == []
    with pytest.raises(ConfigMismatchError, match="another genotype"):
        retrain.check_run_dir(dataclasses.replace(config,
                                                  genotype="DARTS_V1"))
    with pytest.raises(ConfigMismatchError, match="--init_channels 4 -> 6"):
        retrain.check_run_dir(dataclasses.replace(config, init_channels=6))
