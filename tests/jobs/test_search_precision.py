"""Search under a mixed-precision policy (--dtype_policy).

What is accepted comes from measured product errors (precision.py,
benchmarks/precision.md): mixed_bfloat16 with first_order only.
"""

import numpy as np
import pytest

from tests.helpers import SEARCH_TINY, flags_with, search_config_of
from tf_amended_darts.jobs import search

TINY = flags_with(SEARCH_TINY, tensorboard=False)
_config = search_config_of


@pytest.mark.parametrize("args,match", [
    (["--dtype_policy=float8"], "--dtype_policy.*float32, mixed_bfloat16"),
    (["--dtype_policy=mixed_float16", "--arch_grad=first_order"],
     "--dtype_policy.*loss scaling"),
    (["--dtype_policy=mixed_bfloat16", "--arch_grad=amended"],
     "--dtype_policy.*--arch_grad"),
    (["--dtype_policy=mixed_bfloat16", "--arch_grad=second_order"],
     "--dtype_policy.*--arch_grad"),
])
def test_inaccurate_or_unsupported_policies_are_refused(args, match, tmp_path):
    with pytest.raises(ValueError, match=match):
        _config(TINY + [f"--model_dir={tmp_path}"] + args)


def test_first_order_search_in_mixed_bfloat16(tmp_path):
    config = _config(TINY + [
        f"--model_dir={tmp_path}", "--dtype_policy=mixed_bfloat16",
        "--arch_grad=first_order",
    ])
    result = search.run_search(config, search.set_up(config))
    net = result.network
    assert net.dtype_policy.name == "mixed_bfloat16"
    assert {v.dtype for v in net.variables if "seed" not in v.path} == {
        "float32"
    }
    assert net.cells[0].compute_dtype == "bfloat16"
    assert net.stem_conv.compute_dtype == "bfloat16"
    x = np.zeros((2, 8, 8, 3), "float32")
    assert net(x, training=False).dtype == "float32"
    assert len(result.genotype.normal) == 8
    metrics = (tmp_path / "metrics.csv").read_text()
    assert "nan" not in metrics.lower()
