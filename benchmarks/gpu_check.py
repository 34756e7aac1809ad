"""GPU correctness check of the fused Triton attention (issue 4): bf16/fp16 against float64.

Usage (on a CUDA machine, from the repository root):

    python benchmarks/gpu_check.py [--json out.json]

For every case of a grid (odd T, T = 1, GQA, varlen with length-1 documents, head dims 16..256,
all-negative rows, large scores; causal and not; softpick and softmax) it runs forward and backward
of ``impl="triton"`` on bf16 inputs (causal) or fp16 inputs (non-causal) and compares o, dq, dk, dv with ``naive_attention`` run in
float64 on the same (bf16-rounded) inputs, by ``|out - ref| / |ref|`` (Frobenius norms). bf16
operands put that between 1e-3 and 1e-2; the check fails above ``TOL`` or on any non-finite value.
For softmax it also prints SDPA's error on the same inputs as a yardstick. Then it checks that
``torch.compile(fullgraph=True)`` runs forward + backward with no graph break and matches eager.
Exit status 1 if any check fails.
"""

from __future__ import annotations

import argparse
import json
import sys

import torch

from softpick.ops.attention import softmax_attention, softpick_attention
from softpick.ops.attention.naive import naive_attention

TOL = {"o": 1.5e-2, "dq": 3e-2, "dk": 3e-2, "dv": 2e-2}

# (name, B, T, H, HQ, D, cu_seqlens, q multiplier, kind)
CASES = [
    ("B2-T63-H2-HQ4-D64", 2, 63, 2, 4, 64, None, 1.0, "random"),
    ("B1-T1-H1-HQ1-D64", 1, 1, 1, 1, 64, None, 1.0, "random"),
    ("B2-T1000-H2-HQ2-D128", 2, 1000, 2, 2, 128, None, 1.0, "random"),
    ("B1-T777-H1-HQ3-D256", 1, 777, 1, 3, 256, None, 1.0, "random"),
    ("B1-T300-H2-HQ2-D16", 1, 300, 2, 2, 16, None, 1.0, "random"),
    ("B1-T300-H2-HQ4-D48", 1, 300, 2, 4, 48, None, 1.0, "random"),
    ("B1-T300-H2-HQ2-D96", 1, 300, 2, 2, 96, None, 1.0, "random"),
    ("B1-T1030-H2-HQ4-D64-varlen", 1, 1030, 2, 4, 64, [0, 1, 200, 201, 713, 1029, 1030], 1.0, "random"),
    ("B1-T515-H2-HQ2-D128-varlen", 1, 515, 2, 2, 128, [0, 129, 130, 515], 1.0, "random"),
    ("B2-T200-H2-HQ2-D64-negative", 2, 200, 2, 2, 64, None, 1.0, "negative"),
    ("B2-T200-H2-HQ2-D64-large", 2, 200, 2, 2, 64, None, 12.0, "random"),
    ("B2-T2048-H4-HQ8-D128", 2, 2048, 4, 8, 128, None, 1.0, "random"),
]


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    """|out - ref| / max(|ref|, 1e-3 sqrt(n)) in float64 (Frobenius norms over n elements).

    The floor keeps an all-but-zero reference (softmax gradients at T = 1 are exactly 0) from
    turning rounding noise into a huge relative error; real gradients here have RMS >> 1e-3.
    """
    out, ref = out.double(), ref.double()
    if not torch.isfinite(out).all():
        return float("inf")
    den = max(ref.norm().item(), 1e-3 * ref.numel() ** 0.5)
    return (out - ref).norm().item() / den


def make_inputs(B, T, H, HQ, D, mult, kind, dtype, device):
    q = torch.randn(B, T, HQ, D, device=device) * mult
    k = torch.randn(B, T, H, D, device=device)
    if kind == "negative":  # every score < 0: softpick output and gradients are 0
        q, k = q.abs(), -k.abs()
    v = torch.randn(B, T, H, D, device=device)
    do = torch.randn(B, T, HQ, D, device=device)
    return [t.to(dtype) for t in (q, k, v, do)]


def check_case(case, variant, causal, dtype, device) -> dict:
    name, B, T, H, HQ, D, cu, mult, kind = case
    cu_t = None if cu is None else torch.tensor(cu, device=device, dtype=torch.int32)
    q, k, v, do = make_inputs(B, T, H, HQ, D, mult, kind, dtype, device)
    fn = softpick_attention if variant == "softpick" else softmax_attention
    qg, kg, vg = (t.clone().requires_grad_() for t in (q, k, v))
    o = fn(qg, kg, vg, causal=causal, cu_seqlens=cu_t, impl="triton")
    grads = torch.autograd.grad(o, (qg, kg, vg), do)
    q64, k64, v64 = (t.double().requires_grad_() for t in (q, k, v))
    o64 = naive_attention(q64, k64, v64, variant=variant, causal=causal, cu_seqlens=cu_t)
    grads64 = torch.autograd.grad(o64, (q64, k64, v64), do.double())
    row = {"case": name, "variant": variant, "causal": causal, "dtype": str(dtype).split(".")[-1]}
    for key, out, ref in zip(("o", "dq", "dk", "dv"), (o, *grads), (o64, *grads64)):
        row[key] = rel_err(out, ref)
    if variant == "softmax" and cu is None:
        qs, ks, vs = (t.clone().requires_grad_() for t in (q, k, v))
        os_ = softmax_attention(qs, ks, vs, causal=causal, impl="sdpa")
        gs = torch.autograd.grad(os_, (qs, ks, vs), do)
        row["sdpa"] = {key: rel_err(out, ref) for key, out, ref in zip(("o", "dq", "dk", "dv"), (os_, *gs), (o64, *grads64))}
    if kind == "negative" and variant == "softpick":
        # exact zeros expected: o = 0 and all gradients 0
        row["exact_zero"] = bool(o.abs().max() == 0 and all(g.abs().max() == 0 for g in grads))
    row["ok"] = all(row[key] <= TOL[key] for key in TOL) and row.get("exact_zero", True)
    return row


def check_compile(device) -> dict:
    """torch.compile(fullgraph=True) forward + backward runs with no graph break and matches eager."""
    import torch._dynamo

    def f(q, k, v, do):
        o = softpick_attention(q, k, v, causal=True)
        return torch.autograd.grad((o * do).sum(), (q, k, v))

    def step(q, k, v):
        o = softpick_attention(q, k, v, causal=True)
        return (o.float() ** 2).sum()

    q, k, v, do = make_inputs(2, 512, 2, 4, 64, 1.0, "random", torch.bfloat16, device)
    qg, kg, vg = (t.clone().requires_grad_() for t in (q, k, v))
    explain = torch._dynamo.explain(step)(qg, kg, vg)
    compiled = torch.compile(step, fullgraph=True)
    loss_c = compiled(qg, kg, vg)
    grads_c = torch.autograd.grad(loss_c, (qg, kg, vg))
    loss_e = step(qg, kg, vg)
    grads_e = torch.autograd.grad(loss_e, (qg, kg, vg))
    errs = [rel_err(a, b) for a, b in zip((loss_c, *grads_c), (loss_e, *grads_e))]
    return {
        "graph_breaks": explain.graph_break_count,
        "graphs": explain.graph_count,
        "rel_err_vs_eager": errs,
        "ok": explain.graph_break_count == 0 and max(errs) < 1e-3,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--json", help="write all rows to this file")
    parser.add_argument("--cases", nargs="+", help="run only cases whose name contains one of these")
    args = parser.parse_args(argv)
    device = torch.device("cuda")
    print(f"device {torch.cuda.get_device_name()} torch {torch.__version__}", flush=True)
    rows = []
    cases = [c for c in CASES if not args.cases or any(p in c[0] for p in args.cases)]
    for case in cases:
        for variant in ("softpick", "softmax"):
            for causal in (True, False):
                dtype = torch.bfloat16 if causal else torch.float16
                torch.manual_seed(len(rows))
                row = check_case(case, variant, causal, dtype, device)
                rows.append(row)
                sdpa = row.get("sdpa")
                extra = " sdpa " + " ".join(f"{sdpa[k]:.1e}" for k in ("o", "dq", "dk", "dv")) if sdpa else ""
                print(
                    f"{'ok  ' if row['ok'] else 'FAIL'} {row['case']:<30} {variant:<8} causal={int(causal)} "
                    f"{row['dtype']:<8} o {row['o']:.1e} dq {row['dq']:.1e} dk {row['dk']:.1e} dv {row['dv']:.1e}{extra}",
                    flush=True,
                )
    comp = check_compile(device)
    print(f"{'ok  ' if comp['ok'] else 'FAIL'} torch.compile fullgraph: {comp}", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"rows": rows, "compile": comp}, f, indent=1)
    failed = [r for r in rows if not r["ok"]] + ([comp] if not comp["ok"] else [])
    print(f"{len(rows) + 1 - len(failed)} of {len(rows) + 1} checks passed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
