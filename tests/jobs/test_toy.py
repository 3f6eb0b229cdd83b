"""The paper's toy problem searched by the unchanged bi-level engine."""

import csv
import os

import pytest
from absl import flags

from tf_amended_darts.core.optimizers import TorchAdam, TorchSGD
from tf_amended_darts.jobs import toy

WD_W, WD_A = 3e-4, 1e-3  # the engine's default coupled weight decays


def _run(arch_grad, eta, steps, hvp="exact"):
    return toy.run(
        arch_grad, eta, steps, hvp=hvp, w_init=-1.0, a_init=1.0,
        weight_optimizer=TorchSGD(0.05, coupled_weight_decay=WD_W,
                                  global_clipnorm=5.0),
        arch_optimizer=TorchAdam(0.01, coupled_weight_decay=WD_A))


def test_critical_eta_closed_form():
    assert toy.critical_eta() == 1 / 8
    eta = toy.critical_eta(WD_W, WD_A)
    c = 16 * eta - 2
    det = (2 + WD_W) * WD_A + c * (2 - WD_W)
    assert det == pytest.approx(0.0, abs=1e-15)
    assert eta < 1 / 8


@pytest.mark.parametrize("arch_grad", ["first_order", "second_order"])
def test_first_and_second_order_go_wild(arch_grad):
    rows = _run(arch_grad, 0.1, 300)
    a = [abs(r["a"]) for r in rows]
    assert a[-1] > 3 * a[0]
    later = zip(a[100::20], a[120::20], strict=False)  # a shifted copy
    assert all(x <= y + 1e-6 for x, y in later)
    assert rows[-1]["val_loss"] > 5 * rows[60]["val_loss"]


@pytest.mark.parametrize("hvp", ["exact", "finite_difference"])
def test_amended_with_large_eta_converges(hvp):
    rows = _run("amended", 0.5, 500, hvp=hvp)
    assert abs(rows[-1]["a"]) < 1e-2
    assert abs(rows[-1]["w"]) < 1e-2
    assert rows[-1]["val_loss"] < 1e-4


@pytest.mark.parametrize("side", [-1, 1])
def test_both_sides_of_the_critical_eta(side):
    # 3e-5 from the derived threshold: both probes lie below the naive 1/8,
    # so this also checks the weight-decay correction.
    eta = toy.critical_eta(WD_W, WD_A) + side * 3e-5
    assert eta < 1 / 8
    rows = _run("amended", eta, 400)
    if side < 0:
        assert abs(rows[-1]["a"]) > 3.0
    else:
        assert abs(rows[-1]["a"]) < 0.05


def test_launcher_writes_csv_and_png(tmp_path):
    from launchers import toy as launcher

    fv = flags.FlagValues()
    launcher.define_flags(fv)
    fv(["toy", "--arch_grad=first_order", "--eta=0.3", "--steps=20",
        f"--output_dir={tmp_path}"])
    launcher.main([], fv)
    with open(tmp_path / "trajectory.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 21  # step 0 (initial point) .. 20
    for col in ("step", "a", "w", "val_loss"):
        assert col in rows[0]
    assert [int(r["step"]) for r in rows] == list(range(21))
    w, a = float(rows[5]["w"]), float(rows[5]["a"])
    assert float(rows[5]["val_loss"]) == pytest.approx((2 * w - a) ** 2)
    assert "a_amended" in rows[0]
    with open(tmp_path / "trajectory.png", "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    assert not [p for p in os.listdir(tmp_path) if ".tmp" in p]
