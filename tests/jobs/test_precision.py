"""The product-error measurement and the search's precision rule.

A tiny supernet (3 cells of 2 nodes, C = 4, 8x8, three operators, batch
4) keeps each measurement at seconds; benchmarks/precision.md has the real
table.
"""

import math

import pytest
from absl import flags

from tf_amended_darts.jobs import precision

TINY = dict(
    layers=3,
    init_channels=4,
    image_size=8,
    batch_size=4,
    operators=("max_pool_3x3", "skip_connect", "sep_conv_3x3"),
    seed=0,
    steps=2,
    multiplier=2,
)


@pytest.fixture(scope="module")
def float32_errors():
    return precision.product_errors("float32", "float64", **TINY)


def test_float32_against_float64_is_small_but_not_zero(float32_errors):
    errors = float32_errors
    assert set(precision.PRODUCTS) <= set(errors)
    for name in precision.PRODUCTS:
        value = errors[name]
        assert math.isfinite(value), name
        # Rounding is there (the two networks really differ in precision)
        # and small: float32 carries ~7 digits.
        assert 0.0 < value < 1e-3, (name, value)
        assert errors[name + "_norm"] > 0.0, name


def test_bfloat16_errors_are_finite_and_above_float32s(float32_errors):
    errors = precision.product_errors("mixed_bfloat16", "float32", **TINY)
    for name in precision.PRODUCTS:
        assert math.isfinite(errors[name]), name
    # bfloat16 keeps 8 bits of mantissa: its gradient errors dwarf
    # float32's rounding.
    assert errors["g1"] > 100 * float32_errors["g1"]


@pytest.mark.slow
def test_the_loss_scale_cancels_in_float32():
    # Scaling by a power of two is exact in binary floating point, so
    # float32 with S = 1024 computes the same products as float32 with S = 1
    # (up to the finite differences' eps, which depends on ||v||).
    plain = precision.product_errors("float32", "float64", **TINY)
    scaled = precision.product_errors(
        "float32", "float64", loss_scale=1024.0, **TINY
    )
    for name in ("g1", "v", "gw", "hv", "dhv"):
        assert scaled[name] == pytest.approx(plain[name], rel=1e-3), name


def test_bad_arguments_name_the_setting():
    with pytest.raises(ValueError, match="float16"):
        precision.product_errors("float16", **TINY)
    with pytest.raises(ValueError, match="loss_scale"):
        precision.product_errors("float32", loss_scale=0.0, **TINY)


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_search_policy_check_refuses_mixed_second_order_products(policy):
    for hvp in ("exact", "finite_difference"):
        precision.search_policy_check(policy, "first_order", hvp)
        for arch_grad in ("second_order", "amended"):
            with pytest.raises(ValueError) as err:
                precision.search_policy_check(policy, arch_grad, hvp)
            message = str(err.value)
            assert f"--dtype_policy={policy!r}" in message
            assert f"--arch_grad={arch_grad}" in message
            assert "first_order" in message


def test_search_policy_check_accepts_float32_and_names_bad_flags():
    for arch_grad in ("first_order", "second_order", "amended"):
        precision.search_policy_check("float32", arch_grad, "exact")
    with pytest.raises(ValueError, match="--dtype_policy='float16'"):
        precision.search_policy_check("float16", "first_order")
    with pytest.raises(ValueError, match="--arch_grad"):
        precision.search_policy_check("float32", "zeroth_order")


def test_launcher_rows_and_table():
    from launchers import precision as launcher

    assert launcher.parse_row("mixed_float16:float32:1024") == (
        "mixed_float16",
        "float32",
        1024.0,
        False,
        False,
    )
    assert launcher.parse_row("float32:float32:1:other_batches").other_batches
    row = launcher.parse_row("float32:float64:1:recompute:other_batches")
    assert row.recompute and row.other_batches
    for bad in ("mixed_float16:float32", "a:b:-1", "a:b:x", "a:b:1:c",
                "a:b:1:recompute:recompute"):
        with pytest.raises(ValueError, match="--rows"):
            launcher.parse_row(bad)
    fv = flags.FlagValues()
    launcher.define_flags(fv)
    fv(["precision"])
    assert fv.rows == list(launcher.DEFAULT_ROWS)
    runs = [{name: 0.5 for name in precision.PRODUCTS}] * 2
    text = launcher.table([
        (("mixed_bfloat16", "float32", 1.0, False, False), runs),
        (("float32", "float64", 1.0, False, True), runs),
    ])
    assert text.splitlines()[2].startswith("| mixed_bfloat16 | float32 | 1 |")
    assert text.splitlines()[3].startswith(
        "| float32 (recomputed cells) | float64 | 1 |")
    assert "5.0e-01 [5.0e-01]" in text


@pytest.mark.slow  # two eager float64 product sets: ~20 s
def test_recomputed_cells_compute_the_plain_networks_vectors(monkeypatch):
    # float64 against float64: the only difference is the recomputation,
    # which must change no vector beyond float64 rounding (the search's
    # --recompute_cells; tests/vision/test_recomputed_cells.py checks the
    # step itself).
    from tf_amended_darts.vision import recomputed_cells

    calls = []
    call = recomputed_cells.RecomputedCell.__call__

    def counted(self, *args, **kwargs):
        calls.append(1)
        return call(self, *args, **kwargs)

    monkeypatch.setattr(recomputed_cells.RecomputedCell, "__call__", counted)
    errors = precision.product_errors(
        "float64", "float64", recompute_cells=True, **TINY
    )
    assert calls  # the measured network did recompute its cells
    for name in precision.PRODUCTS:
        assert errors[name] < 1e-10, (name, errors[name])
        assert errors[name + "_norm"] > 0.0, name
