"""Where the kernel tests run and how close they must come: bf16 on a GPU, else fp32 in the Triton interpreter."""

import importlib.util
import os
from pathlib import Path

import pytest
import torch

if not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip("needs CUDA or the Triton interpreter", allow_module_level=True)

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
DTYPE = torch.bfloat16 if torch.cuda.is_available() else torch.float32
# fp32 in the interpreter is exact up to summation order; bf16 on a GPU is about 1e-2.
RTOL, ATOL = (2e-2, 2e-2) if DTYPE == torch.bfloat16 else (1e-4, 1e-5)


def assert_close(name: str, ref: torch.Tensor, out: torch.Tensor, rtol: float = RTOL, atol: float = ATOL) -> None:
    """max |out - ref| <= atol + rtol * max |ref|, with both numbers in the message."""
    assert torch.isfinite(out).all(), f"{name}: non-finite values"
    err = (out.float() - ref.float()).abs().max().item()
    scale = ref.float().abs().max().item()
    assert err <= atol + rtol * scale, f"{name}: max abs err {err:.3e}, max |ref| {scale:.3e}"


def load_benchmark(name: str):
    """The module of benchmarks/<name>.py, loaded from its file (benchmarks/ is not a package)."""
    path = Path(__file__).resolve().parents[2] / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
