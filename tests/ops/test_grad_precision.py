"""benchmarks/grad_precision.py: the bf16 backward's one precision limit, reproduced in float32 kernels."""

import pytest

from kernel_env import DEVICE, load_benchmark  # skips the module without CUDA or the interpreter

grad_precision = load_benchmark("grad_precision")


@pytest.mark.skipif(DEVICE == "cuda", reason="on a GPU the inputs' bf16 rounding moves the score off s0")
def test_one_key_row_near_zero_amplifies_the_rounding_of_o_only():
    """A row that sees one key at score 1e-3: delta from o rounded to bf16 puts dq off by order 1 (the
    1/den amplification), delta from the exact o keeps the kernels within 1e-3 of float64."""
    s_row, (rounded, exact), ref = grad_precision.one_key_row(1e-3)
    assert abs(s_row - 1e-3) < 1e-6
    err = [(got[0].double() - ref[0]).abs().max().item() for got in (rounded, exact)]
    assert err[0] > 0.3 and err[1] < 1e-3, err
