"""How bf16 rounding of o reaches softpick's gradients in rows with a tiny denominator.

Usage (from the repository root; on a CPU set TRITON_INTERPRET=1, and the kernels run in float32):

    python benchmarks/grad_precision.py

The backward takes delta = rowsum(o * do) from the stored 16-bit o, and softpick's
dS = e^(s - lse) ([s > 0] dP - sign(s) delta) scales delta by 1/den, den = sum_j |e^s_j - 1| + eps.
A row that sees one key with a score near 0 has den ~ |s|, so o's rounding becomes a gradient error
of order (2^-9 |o| |do|) / |s|. Two tables, errors as max |out - ref| against float64:

1. the inputs of tests/ops/test_attention_triton.py::test_every_backward_tile_matches_naive
   (seed 0; documents of 130, 1 and 169 tokens, GQA 4:2) through the public op, D = 128 and 256;
2. one-key rows made to score s0 (row 131 of the same batch, query head 0; s is the score left after
   the inputs' rounding to the kernels' dtype), with the backward kernels given delta from o rounded to
   bf16 and from the exact o.
"""

from __future__ import annotations

import torch

from softpick.ops.attention import softmax_attention, softpick_attention
from softpick.ops.attention.triton import training as parallel
from softpick.ops.attention.naive import naive_attention
from softpick.ops.attention.triton.training_bwd import attention_bwd_dkdv_kernel, attention_bwd_dq_kernel
from softpick.ops.softpick.naive import DEFAULT_EPS

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
DTYPE = torch.bfloat16 if DEVICE == "cuda" else torch.float32  # the interpreter's bf16 dot is wrong
CU = [0, 130, 131, 300]


def inputs(head_dim: int) -> tuple[torch.Tensor, ...]:
    """q [1, 300, 4, D], k, v [1, 300, 2, D], do like q, as the every-tile test draws them."""
    torch.manual_seed(0)
    q = torch.randn(1, 300, 4, head_dim, device=DEVICE).to(DTYPE)
    k, v = (torch.randn(1, 300, 2, head_dim, device=DEVICE).to(DTYPE) for _ in range(2))
    return q, k, v, torch.randn_like(q)


def reference(q, k, v, do, cu, variant: str) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
    """(o, (dq, dk, dv)) of the naive op in float64."""
    leaves = [t.double().requires_grad_() for t in (q, k, v)]
    o = naive_attention(*leaves, cu_seqlens=cu, variant=variant)
    return o.detach(), torch.autograd.grad(o, leaves, do.double())


def errors(got, ref) -> str:
    return " ".join(f"d{n} {(g.double() - r).abs().max().item():.2e}/{r.abs().max().item():.2f}" for n, g, r in zip("qkv", got, ref))


def public_op_table() -> None:
    cu = torch.tensor(CU, dtype=torch.int32, device=DEVICE)
    print(f"1. the every-tile test's inputs through the public op ({DTYPE}), error / max |ref|")
    for head_dim in (128, 256):
        q, k, v, do = inputs(head_dim)
        for variant, fn in (("softpick", softpick_attention), ("softmax", softmax_attention)):
            o_ref, ref = reference(q, k, v, do, cu, variant)
            leaves = [t.clone().requires_grad_() for t in (q, k, v)]
            o = fn(*leaves, cu_seqlens=cu, impl="triton")
            got = torch.autograd.grad(o, leaves, do)
            print(f"  D{head_dim} {variant:<8} o {(o.double() - o_ref).abs().max().item():.2e}  {errors(got, ref)}")


def one_key_row(s0: float, head_dim: int = 64) -> tuple[float, list[tuple[torch.Tensor, ...]], tuple[torch.Tensor, ...]]:
    """Row 131 (one visible key) of the batch made to score s0 in query head 0: (its score after the
    inputs' rounding to DTYPE, [(dq, dk, dv) of the backward kernels given delta from o rounded to bf16,
    the same from the exact o], the float64 reference gradients)."""
    cu = torch.tensor(CU, dtype=torch.int32, device=DEVICE)
    scale = head_dim**-0.5
    q, k, v, do = (t.float() for t in inputs(head_dim))
    key = k[0, 131, 0]  # query heads 0 and 1 read kv head 0
    q[0, 131, 0] -= (q[0, 131, 0] @ key - s0 / scale) / (key @ key) * key
    q, k, v, do = (t.to(DTYPE) for t in (q, k, v, do))
    s_row = (q[0, 131, 0].double() @ k[0, 131, 0].double()).item() * scale
    o_ref, ref = reference(q, k, v, do, cu, "softpick")
    _, lse = parallel._fwd(q, k, v, cu, parallel.NORM_CODES["softpick"], scale, True, DEFAULT_EPS)
    dims = parallel._dims(q, k, v)
    common = (cu, 300, parallel.tune_len(169), scale * parallel.LOG2E, scale)
    flags = dict(SOFTPICK=True, SIGMOID=False, CAUSAL=True, IS_VARLEN=True)
    grads = []
    for o in (o_ref.to(torch.bfloat16).float(), o_ref.float()):
        delta, lse_c = parallel._bwd_rows(o.contiguous(), do.float(), lse, True)
        dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
        attention_bwd_dkdv_kernel[lambda m: (-(-169 // m["BN"]), 3, 2)](
            q, k, v, do, lse_c, delta, dk, dv, *common, G=2, **dims, **flags
        )
        attention_bwd_dq_kernel[lambda m: (-(-169 // m["BM"]), 3, 4)](q, k, v, do, lse, delta, dq, *common, **dims, **flags)
        grads.append((dq, dk, dv))
    return s_row, grads, ref


def one_key_rows_table() -> None:
    print(f"2. row 131 (one key) at score s0, D = 64: backward kernels ({DTYPE}) with delta from")
    print("   o rounded to bf16 | from the exact o; error / max |ref|")
    for s0 in (1.0, 0.1, 0.01, 0.001):
        s_row, (rounded, exact), ref = one_key_row(s0)
        print(f"  s0 = {s0:<6g} (s = {s_row:+.2e}) {errors(rounded, ref)} | {errors(exact, ref)}")


if __name__ == "__main__":
    print({"device": torch.cuda.get_device_name() if DEVICE == "cuda" else "cpu (Triton interpreter)", "dtype": str(DTYPE)})
    public_op_table()
    one_key_rows_table()
