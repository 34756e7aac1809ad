"""kernel_env.assert_close: the comparison every kernel test goes through catches what it should."""

import pytest
import torch

from kernel_env import assert_close  # skips the module without CUDA or the interpreter


def _outlier_tensor() -> torch.Tensor:
    """1000 entries of 0.01 and one of 10: the max is 10, the rms about 0.32."""
    ref = torch.full((1001,), 0.01, dtype=torch.float64)
    ref[0] = 10.0
    return ref


def test_small_entries_are_checked_despite_one_large_one():
    """A 5% error on every small entry: max |err| 5e-4 is under rtol * max |ref| = 1e-3 (the old rule
    passed it), but each entry is held to atol + rtol * max(|ref|, rms) = 4.2e-5 and fails."""
    ref = _outlier_tensor()
    out = ref.clone()
    out[1:] *= 1.05
    with pytest.raises(AssertionError, match="element-wise"):
        assert_close("small entries", ref, out, rtol=1e-4, atol=1e-5, ratio=1.0)


def test_norm_wise_error_is_checked():
    """Noise of 1% everywhere is within an element-wise rtol of 2e-2 but over a norm-wise ratio of 1e-3."""
    ref = torch.randn(64, 64, dtype=torch.float64)
    out = ref * (1 + 0.01 * torch.randn_like(ref).clamp(-1.5, 1.5))
    assert_close("loose", ref, out, rtol=2e-2, atol=0.0, ratio=1e-1)
    with pytest.raises(AssertionError, match="norm-wise"):
        assert_close("tight", ref, out, rtol=2e-2, atol=0.0, ratio=1e-3)


def test_rounding_of_small_entries_within_the_rms_floor_passes(capsys):
    """Errors that follow the size of the summed terms (rtol * rms on an entry near 0) pass, and the
    message gives the errors."""
    ref = _outlier_tensor()
    out = ref + 1e-5 * torch.linspace(-1, 1, ref.numel(), dtype=torch.float64)
    assert_close("rounding", ref, out, rtol=1e-4, atol=1e-6, ratio=1e-4)
    printed = capsys.readouterr().out
    assert "rounding: max abs err 1.000e-05" in printed and "0 of 1001 entries over" in printed


def test_shape_and_non_finite_values_fail():
    ref = torch.zeros(4)
    with pytest.raises(AssertionError, match="shape"):
        assert_close("shape", ref, torch.zeros(5))
    with pytest.raises(AssertionError, match="non-finite"):
        assert_close("nan", ref, torch.tensor([0.0, float("nan"), 0.0, 0.0]))


@pytest.mark.parametrize("variant", ["softpick", "softmax"])
@pytest.mark.parametrize("causal, cu", [(True, None), (False, None), (True, [0, 1, 9, 20])])
def test_bf16_operand_reference_is_the_exact_gradient_without_rounding(variant, causal, cu):
    """The floor's explicit backward (dS = e^{s-lse}([s>0] dP - sign(s) delta) for softpick) is the
    autograd gradient of the naive op when it rounds nothing, large scores and GQA included."""
    from kernel_env import bf16_operand_reference
    from softpick.ops.attention.naive import naive_attention

    g = torch.Generator().manual_seed(0)
    q = (torch.randn(1, 20, 4, 16, generator=g) * 8).double().requires_grad_()
    k, v = (torch.randn(1, 20, 2, 16, generator=g).double().requires_grad_() for _ in range(2))
    do = torch.randn(1, 20, 4, 16, generator=g).double()
    cu_t = None if cu is None else torch.tensor(cu, dtype=torch.int32)
    o = naive_attention(q, k, v, variant=variant, causal=causal, cu_seqlens=cu_t)
    exact = (o, *torch.autograd.grad(o, (q, k, v), do))
    mine = bf16_operand_reference(q.detach(), k.detach(), v.detach(), do, variant=variant, causal=causal,
                                  cu_seqlens=cu_t, operand_dtype=None)
    for name, a, b in zip(("o", "dq", "dk", "dv"), exact, mine):
        torch.testing.assert_close(b, a, rtol=1e-9, atol=1e-12, msg=name)
    rounded = bf16_operand_reference(q.detach(), k.detach(), v.detach(), do, variant=variant, causal=causal,
                                     cu_seqlens=cu_t)
    assert all(0 < (r - a).norm() < 3e-2 * a.norm() for r, a in zip(rounded, exact))  # bf16 rounding, no more


def test_floor_widens_only_to_twice_the_forced_error():
    """With a floor (the error bf16 operands force), an output passes up to FLOOR_FACTOR times the
    floor's error, norm-wise and in its worst entry, and fails beyond it."""
    from kernel_env import FLOOR_FACTOR

    g = torch.Generator().manual_seed(1)
    ref = torch.randn(4096, generator=g, dtype=torch.float64)
    noise = torch.randn(4096, generator=g, dtype=torch.float64)
    floor = ref + 0.05 * noise  # far over the fixed bf16/fp32 tolerances
    with pytest.raises(AssertionError):
        assert_close("no floor", ref, floor)
    assert_close("at the floor", ref, ref + 0.05 * FLOOR_FACTOR * 0.99 * noise, floor=floor)
    with pytest.raises(AssertionError):
        assert_close("past the floor", ref, ref + 0.05 * FLOOR_FACTOR * 1.1 * noise, floor=floor)
