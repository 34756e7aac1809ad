"""GPU correctness check of the fused attention kernels: bf16/fp16 against float64.

Usage (on a CUDA machine, from the repository root):

    python benchmarks/gpu_check.py [--impl triton|cute] [--variants softpick,softmax,...] [--json out.json]

For every case of a grid (odd T, T = 1, GQA, varlen with length-1 documents, queries shorter than keys,
head dims 16..256, all-negative rows, large scores and scores of ~1e4; causal and not; softpick, softmax,
softmax+1 and a learnable sink) it runs forward and backward of ``impl`` (Triton, or the Hopper CuTe
kernels, which take head dims 64/128/256 only) on bf16 and fp16 inputs and compares o, dq, dk, dv (and
d(sink)) with ``naive_attention`` run in float64 on the same (rounded) inputs, by ``|out - ref| / |ref|``
(Frobenius norms). bf16 operands put that between 1e-3 and 1e-2; the check fails above ``TOL`` or on
any non-finite value. For the Hopper kernels the Triton kernels run on the same inputs as the oracle:
a case also passes where the error is at most 1.5x theirs (a bf16 precision limit both share, such as
a one-key row's dq: delta = rowsum(o * do) from the 16-bit o, amplified by 1/den).
For softmax it also prints SDPA's error on the same inputs as a yardstick. Then it checks that
``torch.compile(fullgraph=True)`` runs forward + backward with no graph break and matches eager.
Exit status 1 if any check fails.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time

import torch

from softpick.ops.attention import softmax_attention, softpick_attention
from softpick.ops.attention.naive import naive_attention

TOL = {"o": 1.5e-2, "dq": 3e-2, "dk": 3e-2, "dv": 2e-2, "dsink": 3e-2}
VARIANTS = ("softpick", "softmax", "softmax+1", "sink")

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
    ("B2-T1500-H2-HQ4-D64-shortq", 2, 1500, 2, 4, 64, None, 1.0, "shortq"),
    ("B1-T700-H2-HQ2-D128-shortq", 1, 700, 2, 2, 128, None, 1.0, "shortq"),
    ("B1-T300-H2-HQ2-D64-huge", 1, 300, 2, 2, 64, None, 1.0, "huge"),
    ("B1-T2500-H2-HQ2-D256", 1, 2500, 2, 2, 256, None, 1.0, "random"),
]
"""kinds: random; negative (every score < 0); shortq (the last T // 3 queries against all T keys, a KV
cache's chunked prefill); huge (scores of ~1e4: q and k of scale 100)."""


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
    Tq = T // 3 if kind == "shortq" else T
    q = torch.randn(B, Tq, HQ, D, device=device) * mult
    k = torch.randn(B, T, H, D, device=device)
    if kind == "negative":  # every score < 0: softpick output and gradients are 0
        q, k = q.abs(), -k.abs()
    if kind == "huge":
        q, k = q * 100, k * 100
    v = torch.randn(B, T, H, D, device=device)
    do = torch.randn(B, Tq, HQ, D, device=device)
    return [t.to(dtype) for t in (q, k, v, do)]


def supported(case, impl: str) -> bool:
    """Whether ``impl`` takes the case (the Hopper kernels: head dims 64, 128, 256)."""
    return impl != "cute" or case[5] in (64, 128, 256)


def forward_backward(fn, q, k, v, do, sink, learn_sink: bool, **kwargs) -> tuple[torch.Tensor, ...]:
    """(o, dq, dk, dv[, d(sink)]) of ``fn`` on fresh leaf copies of q, k, v (and the sink when learnt)."""
    leaves = [t.detach().clone().requires_grad_() for t in (q, k, v)]
    if sink is not None:
        sink = sink.detach().clone().requires_grad_(learn_sink)
        kwargs["sink"] = sink
    o = fn(*leaves, **kwargs)
    return (o, *torch.autograd.grad(o, leaves + ([sink] if learn_sink else []), do.to(o.dtype)))


def errors(outs, refs, keys) -> dict[str, float]:
    return {key: rel_err(out, ref) for key, out, ref in zip(keys, outs, refs)}


def check_case(case, variant, causal, dtype, device, impl: str = "triton") -> dict:
    name, B, T, H, HQ, D, cu, mult, kind = case
    cu_t = None if cu is None else torch.tensor(cu, device=device, dtype=torch.int32)
    q, k, v, do = make_inputs(B, T, H, HQ, D, mult, kind, dtype, device)
    base = "softpick" if variant == "softpick" else "softmax"
    learn_sink = variant == "sink"
    sink = None
    if variant == "softmax+1":
        sink = torch.zeros(HQ, device=device)
    elif learn_sink:
        sink = torch.randn(HQ, device=device)
    fn = softpick_attention if base == "softpick" else softmax_attention
    o, *grads = forward_backward(fn, q, k, v, do, sink, learn_sink, causal=causal, cu_seqlens=cu_t, impl=impl)
    ref = forward_backward(naive_attention, q.double(), k.double(), v.double(), do, None if sink is None else sink.double(),
                           learn_sink, variant=base, causal=causal, cu_seqlens=cu_t)
    row = {"case": name, "variant": variant, "causal": causal, "dtype": str(dtype).split(".")[-1], "impl": impl}
    keys = ("o", "dq", "dk", "dv", "dsink")[: 1 + len(grads)]
    row.update(errors((o, *grads), ref, keys))
    if variant == "softmax" and cu is None:
        sdpa = forward_backward(softmax_attention, q, k, v, do, None, False, causal=causal, impl="sdpa")
        row["sdpa"] = errors(sdpa, ref, ("o", "dq", "dk", "dv"))
    needs_oracle = any(row[key] > TOL[key] for key in keys)
    if impl == "cute" and needs_oracle:  # the oracle on the same inputs: a limit shared with it is no kernel bug
        oracle = forward_backward(fn, q, k, v, do, sink, learn_sink, causal=causal, cu_seqlens=cu_t, impl="triton")
        row["triton"] = errors(oracle, ref, keys)
    if kind == "negative" and variant == "softpick":
        # exact zeros expected: o = 0 and all gradients 0
        row["exact_zero"] = bool(o.abs().max() == 0 and all(g.abs().max() == 0 for g in grads))
    # scores of ~1e4 make every row one-hot: bf16's rounding of q and k moves which key wins, so only o
    # and dv are well-conditioned there (SDPA's gradients are as far off); dq, dk must still be finite
    checked = ("o", "dv") if kind == "huge" else keys
    finite = all(math.isfinite(row[key]) for key in keys)
    oracle = row.get("triton", {})
    row["ok"] = finite and row.get("exact_zero", True) and all(
        row[key] <= TOL[key] or row[key] <= 1.5 * oracle.get(key, 0.0) for key in checked
    )
    return row


def check_compile(device, impl: str | None = None) -> dict:
    """torch.compile(fullgraph=True) forward + backward runs with no graph break and matches eager."""
    import torch._dynamo

    def step(q, k, v):
        o = softpick_attention(q, k, v, causal=True, impl=impl)
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
    parser.add_argument("--impl", default="triton", choices=("triton", "cute"))
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated, from {VARIANTS}")
    parser.add_argument("--dtypes", default="bfloat16,float16")
    parser.add_argument("--shard", default="0/1", help="I/N: run every N-th check starting at I (parallel processes)")
    args = parser.parse_args(argv)
    device = torch.device("cuda")
    print(f"device {torch.cuda.get_device_name()} torch {torch.__version__} impl {args.impl}", flush=True)
    rows = []
    shard, shards = (int(x) for x in args.shard.split("/"))
    index = -1
    cases = [c for c in CASES if (not args.cases or any(p in c[0] for p in args.cases)) and supported(c, args.impl)]
    for case in cases:
        for variant in args.variants.split(","):
            for causal in (True, False):
                for dtype in (getattr(torch, d) for d in args.dtypes.split(",")):
                    index += 1
                    if index % shards != shard:
                        continue
                    torch.manual_seed(index)
                    t0 = time.perf_counter()
                    row = check_case(case, variant, causal, dtype, device, args.impl)
                    row["seconds"] = time.perf_counter() - t0
                    rows.append(row)
                    print(_row_line(row), flush=True)
    comp = check_compile(device, args.impl)
    print(f"{'ok  ' if comp['ok'] else 'FAIL'} torch.compile fullgraph: {comp}", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"rows": rows, "compile": comp}, f, indent=1)
    failed = [r for r in rows if not r["ok"]] + ([comp] if not comp["ok"] else [])
    for r in failed[:40]:
        print("FAILED", _row_line(r) if "case" in r else r)
    print(f"{len(rows) + 1 - len(failed)} of {len(rows) + 1} checks passed")
    return 1 if failed else 0


def _row_line(row: dict) -> str:
    sdpa = row.get("sdpa")
    extra = " sdpa " + " ".join(f"{sdpa[k]:.1e}" for k in ("o", "dq", "dk", "dv")) if sdpa else ""
    errs = " ".join(f"{k} {row[k]:.1e}" for k in ("o", "dq", "dk", "dv", "dsink") if k in row)
    oracle = row.get("triton")
    extra += " triton " + " ".join(f"{oracle[k]:.1e}" for k in oracle) if oracle else ""
    return (f"{'ok  ' if row['ok'] else 'FAIL'} {row['case']:<30} {row['variant']:<9} causal={int(row['causal'])} "
            f"{row['dtype']:<8} {errs}{extra} ({row.get('seconds', 0):.1f}s)")


if __name__ == "__main__":
    sys.exit(main())
