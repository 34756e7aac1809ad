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

Where scores are large (hundreds) a few gradient entries of a bf16 kernel sit farther from float64 than
any fixed tolerance fits, because the kernel must round P, o and dS to bf16 for its tensor-core
products, and dS = e^{s - lse} ([s > 0] dP - sign(s) delta) cancels dP against delta = rowsum(o * dO)
taken from the rounded o. ``bf16_operand_reference`` computes the exact function with exactly those
roundings and nothing else, in float64: its distance from the exact result is the least error a bf16
kernel can have on these inputs. ``assert_close(..., floor=...)`` then allows each tensor
``FLOOR_FACTOR`` times that error (norm-wise and in its worst entry) where that exceeds the fixed
tolerance: the rule is "within the fixed tolerance, or at most twice the error the bf16 operands
force", never a hand-picked allowance per case.
"""

import importlib.util
import os
from pathlib import Path

import pytest
import torch

from softpick.ops.attention.naive import visible_keys
from softpick.ops.softpick.naive import DEFAULT_EPS

if not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip("needs CUDA or the Triton interpreter", allow_module_level=True)

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
DTYPE = torch.bfloat16 if torch.cuda.is_available() else torch.float32
TOLERANCES = {  # dtype -> (ratio: norm-wise, rtol: element-wise, atol: absolute floor of both)
    torch.bfloat16: (1e-2, 2e-2, 2e-2),
    torch.float32: (1e-5, 1e-4, 1e-5),
}
RATIO, RTOL, ATOL = TOLERANCES[DTYPE]
FLOOR_FACTOR = 2.0
"""A kernel may be this many times as far from float64 as ``bf16_operand_reference`` (module docstring)."""


def _rms(x: torch.Tensor) -> float:
    return x.double().square().mean().sqrt().item() if x.numel() else 0.0


def _excess(ref: torch.Tensor, out: torch.Tensor, rtol: float, atol: float) -> torch.Tensor:
    """|out - ref| over each entry's element-wise tolerance, flattened (> 1: over it)."""
    diff = (out.double() - ref).abs().flatten()
    return diff / (atol + rtol * ref.abs().flatten().clamp(min=_rms(ref)))


def assert_close(name: str, ref: torch.Tensor, out: torch.Tensor, rtol: float = RTOL, atol: float = ATOL,
                 ratio: float = RATIO, floor: torch.Tensor | None = None) -> None:
    """Fail unless ``out`` matches ``ref`` norm-wise and element-wise (module docstring); prints the
    max abs error, the norm-wise relative error and the worst entry either way. ``floor``: the output
    of ``bf16_operand_reference`` for the same tensor; the allowed errors become at least
    ``FLOOR_FACTOR`` times its own (norm-wise and worst entry)."""
    assert out.shape == ref.shape, f"{name}: shape {tuple(out.shape)}, reference {tuple(ref.shape)}"
    assert torch.isfinite(out).all(), f"{name}: non-finite values"
    ref, out = ref.double(), out.double()
    diff = (out - ref).abs().flatten()
    ref_rms, err_rms = _rms(ref), _rms(diff)
    excess = _excess(ref, out, rtol, atol)
    allowed_rms, allowed_excess, floor_msg = atol + ratio * ref_rms, 1.0, ""
    if floor is not None and diff.numel():
        floor_rms, floor_excess = _rms(floor.double() - ref), _excess(ref, floor, rtol, atol).max().item()
        allowed_rms = max(allowed_rms, FLOOR_FACTOR * floor_rms)
        allowed_excess = max(1.0, FLOOR_FACTOR * floor_excess)
        floor_msg = (f"; bf16-operand floor: rms err {floor_rms:.3e}, worst entry {floor_excess:.2f} of its tolerance, "
                     f"so allowed rms {allowed_rms:.3e} and worst {allowed_excess:.2f}")
    worst = int(excess.argmax()) if diff.numel() else 0
    at = tuple(int(i) for i in torch.unravel_index(torch.tensor(worst), ref.shape)) if diff.numel() else ()
    msg = (f"{name}: max abs err {diff.max().item() if diff.numel() else 0.0:.3e}; "
           f"norm-wise rms err {err_rms:.3e} vs rms ref {ref_rms:.3e} (relative {err_rms / max(ref_rms, 1e-30):.3e}, "
           f"allowed {atol:g} + {ratio:g} * rms ref); element-wise worst at {at}: "
           f"ref {ref.flatten()[worst].item() if diff.numel() else 0.0:.6g}, out {out.flatten()[worst].item() if diff.numel() else 0.0:.6g}, "
           f"{excess.max().item() if diff.numel() else 0.0:.2f} of its tolerance (atol {atol:g} + rtol {rtol:g} * max(|ref|, rms ref)), "
           f"{int((excess > 1).sum())} of {diff.numel()} entries over{floor_msg}")
    print(msg)
    assert err_rms <= allowed_rms, f"norm-wise: {msg}"
    assert bool((excess <= allowed_excess).all()), f"element-wise: {msg}"


def bf16_operand_reference(q, k, v, do, *, variant: str, causal: bool, cu_seqlens: torch.Tensor | None = None,
                           eps: float = DEFAULT_EPS, operand_dtype: torch.dtype | None = torch.bfloat16
                           ) -> tuple[torch.Tensor, ...]:
    """(o, dq, dk, dv) of softpick or softmax attention in float64 with the roundings a bf16
    tensor-core kernel cannot avoid, and no others: the forward's unnormalised weights (e^{s-m}, or
    relu(e^{s-m} - e^{-m})) to bf16 before they meet V (o is divided by the denominator after the
    product, as in every online kernel), o to bf16 (the backward's delta = rowsum(o * dO) reads the stored
    o), the backward's normalised P to bf16 before P^T @ dO, dS to bf16 before dS @ K and dS^T @ Q, and
    every output to bf16. A one-key row shows why the forward's rounding matters: the kernel's o is v
    times bf16(num) / den, not v, and dS amplifies o's error by e^s / den. q, k, v, do: [B, T, HQ or H, D] on any device; returns float64 tensors.
    ``operand_dtype=None`` rounds nothing: the exact gradients, as autograd of the naive op gives them."""

    def _bf16(t: torch.Tensor) -> torch.Tensor:
        return t if operand_dtype is None else t.to(operand_dtype).double()
    B, T, HQ, D = q.shape
    G, scale = HQ // k.shape[2], D**-0.5
    q64, k64, v64, do64 = (t.double() for t in (q, k, v, do))
    kf, vf = (t.repeat_interleave(G, dim=2) for t in (k64, v64))  # [B, T, HQ, D]
    s = torch.einsum("bqhd,bkhd->bhqk", q64, kf) * scale  # [B, HQ, Tq, Tk]
    mask = visible_keys(B, T, T, causal=causal, cu_seqlens=cu_seqlens, attention_mask=None, device=q.device)
    seen = torch.ones_like(s, dtype=torch.bool) if mask is None else mask.expand_as(s)
    m = s.masked_fill(~seen, float("-inf")).amax(-1, keepdim=True)
    if variant == "softpick":  # online form with m >= 0 (scores of hundreds overflow e^s even in float64 sums)
        m = m.clamp(min=0.0)
        e, em = torch.exp(s - m), torch.exp(-m)
        den = ((e - em).abs() * seen).sum(-1, keepdim=True) + eps * em
        num = torch.relu(e - em) * seen
        grad_scale = e * seen / den  # e^{s - lse}
    else:
        m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
        num = torch.exp(s - m) * seen
        den = num.sum(-1, keepdim=True).clamp(min=torch.finfo(torch.float64).tiny)
    p = num / den
    o = _bf16(torch.einsum("bhqk,bkhd->bqhd", _bf16(num) / den, vf))
    p_b = _bf16(p)
    dv = _bf16(torch.einsum("bhqk,bqhd->bkhd", p_b, do64).unflatten(2, (-1, G)).sum(3))
    dp = torch.einsum("bqhd,bkhd->bhqk", do64, vf)
    delta = (o * do64).sum(-1).transpose(1, 2).unsqueeze(-1)  # [B, HQ, Tq, 1]
    if variant == "softpick":
        ds = grad_scale * ((s > 0) * dp - torch.sign(s) * delta)
    else:
        ds = p * (dp - delta)
    ds_b = _bf16(ds)
    dq = _bf16(torch.einsum("bhqk,bkhd->bqhd", ds_b, kf) * scale)
    dk = _bf16((torch.einsum("bhqk,bqhd->bkhd", ds_b, q64) * scale).unflatten(2, (-1, G)).sum(3))
    return o, dq, dk, dv


def load_benchmark(name: str):
    """The module of benchmarks/<name>.py, loaded from its file (benchmarks/ is not a package)."""
    path = Path(__file__).resolve().parents[2] / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
