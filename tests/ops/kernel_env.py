"""Where the kernel tests run and how close they must come: bf16 on a GPU, else fp32 in the Triton interpreter.

``assert_close`` checks two things, as fla's ``assert_close`` does, and prints both errors:

- norm-wise: rms(out - ref) <= atol + ratio * rms(ref), the error of the tensor as a whole;
- element-wise: |out - ref| <= atol + rtol * max(|ref|, rms(ref)) for every entry. The floor at
  rms(ref) is there because an entry's rounding error follows the size of the terms summed into it,
  not the entry itself (a dq entry near 0 sums terms of the usual size); above that floor every entry
  is held to its own magnitude, so small entries are checked too, and no entry gets more room than
  atol + rtol * max |ref|.

Tolerances (``TOLERANCES``): in fp32 in the interpreter the kernels differ from the float64 reference
only by summation order, a few ulps; the observed worst over tests/ops is well inside them. In bf16
on a GPU the inputs are already rounded to 8 bits of mantissa, and benchmarks/gpu_check.py measures
norm-wise errors of 1.5e-3 to 6.1e-3 against float64 (benchmarks/RESULTS.md).
"""

import importlib.util
import os
from pathlib import Path

import pytest
import torch

if not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip("needs CUDA or the Triton interpreter", allow_module_level=True)

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
DTYPE = torch.bfloat16 if torch.cuda.is_available() else torch.float32
TOLERANCES = {  # dtype -> (ratio: norm-wise, rtol: element-wise, atol: absolute floor of both)
    torch.bfloat16: (1e-2, 2e-2, 2e-2),
    torch.float32: (1e-5, 1e-4, 1e-5),
}
RATIO, RTOL, ATOL = TOLERANCES[DTYPE]


def _rms(x: torch.Tensor) -> float:
    return x.double().square().mean().sqrt().item() if x.numel() else 0.0


def assert_close(name: str, ref: torch.Tensor, out: torch.Tensor, rtol: float = RTOL, atol: float = ATOL,
                 ratio: float = RATIO) -> None:
    """Fail unless ``out`` matches ``ref`` norm-wise and element-wise (module docstring); prints the
    max abs error, the norm-wise relative error and the worst entry either way."""
    assert out.shape == ref.shape, f"{name}: shape {tuple(out.shape)}, reference {tuple(ref.shape)}"
    assert torch.isfinite(out).all(), f"{name}: non-finite values"
    ref, out = ref.double(), out.double()
    diff = (out - ref).abs().flatten()
    ref_rms, err_rms = _rms(ref), _rms(diff)
    excess = diff / (atol + rtol * ref.abs().flatten().clamp(min=ref_rms))  # > 1: over the element-wise tolerance
    worst = int(excess.argmax()) if diff.numel() else 0
    at = tuple(int(i) for i in torch.unravel_index(torch.tensor(worst), ref.shape)) if diff.numel() else ()
    msg = (f"{name}: max abs err {diff.max().item() if diff.numel() else 0.0:.3e}; "
           f"norm-wise rms err {err_rms:.3e} vs rms ref {ref_rms:.3e} (relative {err_rms / max(ref_rms, 1e-30):.3e}, "
           f"allowed {atol:g} + {ratio:g} * rms ref); element-wise worst at {at}: "
           f"ref {ref.flatten()[worst].item() if diff.numel() else 0.0:.6g}, out {out.flatten()[worst].item() if diff.numel() else 0.0:.6g}, "
           f"{excess.max().item() if diff.numel() else 0.0:.2f} of its tolerance (atol {atol:g} + rtol {rtol:g} * max(|ref|, rms ref)), "
           f"{int((excess > 1).sum())} of {diff.numel()} entries over")
    print(msg)
    assert err_rms <= atol + ratio * ref_rms, f"norm-wise: {msg}"
    assert bool((excess <= 1).all()), f"element-wise: {msg}"


def load_benchmark(name: str):
    """The module of benchmarks/<name>.py, loaded from its file (benchmarks/ is not a package)."""
    path = Path(__file__).resolve().parents[2] / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
