"""The Hopper (CuTe-DSL) kernels against float64 naive attention on the GPU: forward and every gradient.

The bf16 and fp16 grid of ``benchmarks/gpu_check.py`` (odd lengths, T = 1, GQA, varlen with length-1
documents, queries shorter than keys, all-negative rows, large scores and scores of ~1e4, head dims 64 /
128 / 256; causal and full; softpick, softmax, softmax+1 and a learnable sink with its gradient),
through ``impl="cute"``, with gpu_check's tolerances (and its Triton oracle for shared bf16 limits).
Needs an sm_90 GPU with ``softpick[hopper]``; elsewhere the module is skipped (the CPU checks of these
kernels are in test_cute_compile.py).
"""

from __future__ import annotations

import zlib

import pytest
import torch

from kernel_env import load_benchmark

if not torch.cuda.is_available():
    pytest.skip("needs a CUDA GPU", allow_module_level=True)

from softpick.ops.attention import cute  # noqa: E402

_probe = torch.empty(1, 1, 1, 64, device="cuda", dtype=torch.bfloat16)
_reason = cute.supports(_probe, _probe, _probe, variant="softpick", attention_mask=None, sink=None)
if _reason is not None:
    pytest.skip(f"the Hopper kernels cannot run here: {_reason}", allow_module_level=True)

gpu_check = load_benchmark("gpu_check")
CASES = [c for c in gpu_check.CASES if gpu_check.supported(c, "cute")]


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
@pytest.mark.parametrize("causal", [True, False], ids=["causal", "full"])
@pytest.mark.parametrize("variant", gpu_check.VARIANTS)
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_cute_matches_float64(case, variant, causal, dtype):
    torch.manual_seed(zlib.crc32(f"{case[0]}-{variant}-{causal}-{dtype}".encode()))
    row = gpu_check.check_case(case, variant, causal, getattr(torch, dtype), torch.device("cuda"), "cute")
    assert row["ok"], gpu_check._row_line(row)


@pytest.mark.gpu
def test_cute_compiles_fullgraph():
    result = gpu_check.check_compile(torch.device("cuda"), "cute")
    assert result["ok"], result
