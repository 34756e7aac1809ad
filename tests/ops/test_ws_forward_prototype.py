"""benchmarks/ws_forward.py's prototype forward (tensor-descriptor loads, optional warp specialization)
computes the same attention as the naive op, in every form the benchmark times."""

import importlib.util
from pathlib import Path

import pytest
import torch

from softpick.ops.attention import softmax_attention, softpick_attention
from kernel_env import DEVICE, DTYPE, assert_close  # skips the module without CUDA or the interpreter

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "ws_forward.py"


def _prototype():
    spec = importlib.util.spec_from_file_location("ws_forward", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("softpick", [True, False], ids=["softpick", "softmax"])
def test_prototype_matches_naive(softpick):
    ws_forward = _prototype().ws_forward
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 256, 2, 64, generator=gen).to(DEVICE, DTYPE) for _ in range(3))
    if DEVICE == "cuda":
        import triton

        triton.set_allocator(lambda size, alignment, stream: torch.empty(size, dtype=torch.int8, device="cuda"))
    ref = (softpick_attention if softpick else softmax_attention)(q.float(), k.float(), v.float(), impl="naive")
    for one_loop, ws in [(False, False), (True, False), (True, True)]:
        out = ws_forward(q, k, v, softpick=softpick, one_loop=one_loop, warp_specialize=ws)
        assert_close(f"one_loop={one_loop} ws={ws}", ref, out)
    with pytest.raises(ValueError, match="warp_specialize needs one_loop"):
        ws_forward(q, k, v, softpick=softpick, one_loop=False, warp_specialize=True)
