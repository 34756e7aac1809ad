"""benchmarks/ws_attention.py's prototype kernels (tensor-descriptor loads, optional warp specialization)
compute the same attention and the same dk, dv as the naive op, in every form the benchmark times."""

import pytest
import torch

from softpick.ops.attention import softmax_attention, softpick_attention

from kernel_env import DEVICE, DTYPE, assert_close, load_benchmark  # skips the module without CUDA or the interpreter


@pytest.fixture(scope="module")
def prototype():
    module = load_benchmark("ws_attention")
    if DEVICE == "cuda":
        import triton

        triton.set_allocator(lambda size, alignment, stream: torch.empty(size, dtype=torch.int8, device="cuda"))
    return module


def _inputs():
    gen = torch.Generator().manual_seed(0)
    return [torch.randn(2, 256, 2, 64, generator=gen).to(DEVICE, DTYPE) for _ in range(4)]


@pytest.mark.parametrize("softpick", [True, False], ids=["softpick", "softmax"])
def test_prototype_forward_matches_naive(prototype, softpick):
    q, k, v, _ = _inputs()
    ref = (softpick_attention if softpick else softmax_attention)(q.float(), k.float(), v.float(), impl="naive")
    for one_loop, ws in [(False, False), (True, False), (True, True)]:
        out = prototype.ws_forward(q, k, v, softpick=softpick, one_loop=one_loop, warp_specialize=ws)
        assert_close(f"one_loop={one_loop} ws={ws}", ref, out)
    with pytest.raises(ValueError, match="warp_specialize needs one_loop"):
        prototype.ws_forward(q, k, v, softpick=softpick, one_loop=False, warp_specialize=True)


@pytest.mark.parametrize("softpick", [True, False], ids=["softpick", "softmax"])
def test_prototype_dkdv_matches_naive_and_ours(prototype, softpick):
    q, k, v, do = _inputs()
    leaves = [t.float().requires_grad_() for t in (q, k, v)]
    attention = softpick_attention if softpick else softmax_attention
    attention(*leaves, impl="naive").backward(do.float())
    lse, delta = prototype.saved_for_backward(q, k, v, do, softpick=softpick)
    ours = prototype.ours_dkdv(q, k, v, do, lse, delta, softpick=softpick)
    for ws in (False, True):
        dk, dv = prototype.ws_dkdv(q, k, v, do, lse, delta, softpick=softpick, warp_specialize=ws)
        assert_close(f"dk ws={ws}", leaves[1].grad, dk)
        assert_close(f"dv ws={ws}", leaves[2].grad, dv)
    assert_close("our dk", leaves[1].grad, ours[0])
    assert_close("our dv", leaves[2].grad, ours[1])
