"""Attention speed: our softpick and softmax kernels (Hopper CuTe and Triton) vs cuDNN SDPA and FlashAttention-4.

Usage (on a CUDA machine, from the repository root):

    python benchmarks/attention.py [--json out.json] [--shapes 4x4096x16x64 2x8192x8x128 ...] [--kernels]

Prints one row per (shape, implementation): forward and forward+backward times in ms (medians of
``triton.testing.do_bench``, after one untimed call that runs the autotuner), TFLOP/s and the peak
memory that forward+backward allocates above the inputs, and the seconds the first call took
(compile + autotune; a warm Triton cache makes it shorter). bf16, causal, layout [B, T, H, D].

FLOPs (causal, counting the two matmuls QK^T and PV at 2 FLOPs per multiply-add, half the square):
forward = 2 * B * H * T^2 * D; forward+backward = 3.5 x forward (backward = 2.5 x: four matmuls
plus the recomputed QK^T). A varlen batch counts sum_i 2 * H * L_i^2 * D over its documents.
The varlen row packs documents of the lengths in ``VARLEN_DOCS`` into one row; SDPA has no varlen
form, so only our kernels (and flash-attn's varlen function, if installed) run it, with the longest
document given (``max_seqlen``), so no call reads cu_seqlens on the host.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import time

import torch
import triton

from softpick.ops.attention import softmax_attention, softpick_attention
from softpick.ops.attention.cute import cute_attention
from softpick.ops.attention.triton.training import parallel_attention
from softpick.ops.softpick.naive import DEFAULT_EPS

SHAPES = ["4x4096x16x64", "2x8192x8x128", "1x16384x16x64", "varlen"]
VARLEN_DOCS = [7000, 4096, 2048, 1500, 1024, 512, 204]  # sums to 16384 tokens
VARLEN_H, VARLEN_D = 16, 64


def _flash_attn():
    """flash-attn 2 (``flash_attn_func``), if installed; None otherwise."""
    try:
        import flash_attn
    except ImportError:
        return None
    return flash_attn if hasattr(flash_attn, "flash_attn_func") else None


def _fa4():
    """FlashAttention-4's CuTe-DSL kernels (``flash_attn.cute``), if installed; None otherwise."""
    try:
        import flash_attn.cute as fa4
    except ImportError:
        return None
    return fa4


def _first(out):
    return out[0] if isinstance(out, tuple) else out


def _ours(variant: str, sink: torch.Tensor | None = None, impl: str | None = None):
    """Our kernels (``impl`` None: the dispatcher's pick, the Hopper kernels on H100/H200): dense batches
    through the public op; a varlen batch with its longest document given, as a compiled model calls it
    (the public op's eager checks read cu_seqlens on the host, a GPU sync per call that would be timed too)."""
    public = softpick_attention if variant == "softpick" else softmax_attention
    extra = {} if sink is None else {"sink": sink}

    def run(q, k, v, cu, n):
        if cu is None:
            return public(q, k, v, impl=impl, **extra)
        if impl == "triton" or _cute_problem(q) is not None:
            return parallel_attention(q, k, v, variant=variant, scale=None, causal=True, cu_seqlens=cu,
                                      eps=DEFAULT_EPS, sink=sink, max_seqlen=n)
        return cute_attention(q, k, v, variant=variant, scale=None, causal=True, cu_seqlens=cu, eps=DEFAULT_EPS,
                              sink=sink, max_seqlen=n)

    return run


def _cute_problem(q: torch.Tensor) -> str | None:
    from softpick.ops.attention import cute

    return cute.supports(q, q, q, variant="softpick", attention_mask=None, sink=None)


def _cudnn_sdpa(q, k, v, cu, n):
    from torch.nn.attention import SDPBackend, sdpa_kernel

    with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
        return softmax_attention(q, k, v, impl="sdpa")


def impls(varlen: bool, heads: int, variants: bool = False, triton_too: bool = True) -> dict:
    """name -> fn(q, k, v, cu_seqlens, max_len) -> o, all on [B, T, H, D] tensors, causal.

    "softpick" / "softmax" are what the dispatcher picks (the Hopper kernels where they run);
    "*-triton" force the Triton kernels. Anchors: "sdpa" (torch's pick), "cudnn" (SDPA's cuDNN backend),
    "fa4" (FlashAttention-4's CuTe kernels) and "flash-attn" (version 2), where installed.
    With ``variants``: softmax+1 (a constant 0 sink logit) and learnable per-head sinks (whose gradient
    the forward+backward timing includes), the sink-free baselines of issue 10.
    """
    out = {"softpick": _ours("softpick"), "softmax": _ours("softmax")}
    if triton_too:
        out["softpick-triton"] = _ours("softpick", impl="triton")
        out["softmax-triton"] = _ours("softmax", impl="triton")
    if variants:
        out["softmax+1"] = _ours("softmax", sink=torch.zeros(heads, device="cuda"))
        out["sink"] = _ours("softmax", sink=torch.zeros(heads, device="cuda", requires_grad=True))
    if not varlen:
        out["sdpa"] = lambda q, k, v, cu, n: softmax_attention(q, k, v, impl="sdpa")
        out["cudnn"] = _cudnn_sdpa
    fa4 = _fa4()
    if fa4 is not None:
        if varlen:
            out["fa4"] = lambda q, k, v, cu, n: _first(fa4.flash_attn_varlen_func(
                q[0], k[0], v[0], cu_seqlens_q=cu, cu_seqlens_k=cu, max_seqlen_q=n, max_seqlen_k=n, causal=True))
        else:
            out["fa4"] = lambda q, k, v, cu, n: _first(fa4.flash_attn_func(q, k, v, causal=True))
    fa = _flash_attn()
    if fa is not None:
        if varlen:
            out["flash-attn"] = lambda q, k, v, cu, n: fa.flash_attn_varlen_func(
                q[0], k[0], v[0], cu, cu, n, n, causal=True
            )
        else:
            out["flash-attn"] = lambda q, k, v, cu, n: fa.flash_attn_func(q, k, v, causal=True)
    return out


def kernel_times(fn, calls: int = 20) -> dict[str, float]:
    """GPU time per call of each kernel ``fn`` launches (ms, mean over ``calls`` calls under
    torch.profiler), by kernel name, longest first: where a forward+backward spends its time."""
    from torch.profiler import ProfilerActivity, profile

    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(calls):
            fn()
        torch.cuda.synchronize()
    times = {}
    for e in prof.key_averages():
        if e.device_type == torch.autograd.DeviceType.CUDA and e.self_device_time_total > 0:
            times[e.key] = times.get(e.key, 0.0) + e.self_device_time_total / 1e3 / calls
    return dict(sorted(times.items(), key=lambda kv: -kv[1]))


def bench_shape(
    shape: str, variants: bool = False, only: list[str] | None = None, kernels: bool = False, triton_too: bool = True
) -> list[dict]:
    device = torch.device("cuda")
    if shape == "varlen":
        B, T, H, D = 1, sum(VARLEN_DOCS), VARLEN_H, VARLEN_D
        lens = torch.tensor([0, *VARLEN_DOCS])
        cu = lens.cumsum(0).to(device=device, dtype=torch.int32)
        flops_fwd = sum(2 * H * L * L * D for L in VARLEN_DOCS)
        max_len = max(VARLEN_DOCS)
    else:
        B, T, H, D = (int(x) for x in shape.split("x"))
        cu, max_len = None, T
        flops_fwd = 2 * B * H * T * T * D
    q, k, v, do = (torch.randn(B, T, H, D, device=device, dtype=torch.bfloat16) for _ in range(4))
    q, k, v = (t.requires_grad_() for t in (q, k, v))
    rows = []
    for name, fn in impls(cu is not None, H, variants, triton_too).items():
        if only and name not in only:
            continue

        def fwd():
            return fn(q, k, v, cu, max_len)

        def fwd_bwd():
            return torch.autograd.grad(fn(q, k, v, cu, max_len), (q, k, v), do)

        t0 = time.perf_counter()
        fwd_bwd()  # autotune and compile outside the timing
        torch.cuda.synchronize()
        first_s = time.perf_counter() - t0
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        fwd_bwd()
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - base
        with torch.no_grad():
            ms_f = triton.testing.do_bench(fwd, warmup=25, rep=200, return_mode="median")
        ms_fb = triton.testing.do_bench(fwd_bwd, warmup=25, rep=200, return_mode="median")
        per_kernel = kernel_times(fwd_bwd) if kernels else None
        rows.append({
            "shape": shape if cu is None else f"varlen {B}x{T}x{H}x{D} docs={VARLEN_DOCS}",
            "impl": name,
            "fwd_ms": ms_f,
            "fwd_tflops": flops_fwd / ms_f * 1e-9,
            "fwdbwd_ms": ms_fb,
            "fwdbwd_tflops": 3.5 * flops_fwd / ms_fb * 1e-9,
            "peak_mib": peak / 2**20,
            "first_call_s": first_s,
            **({"kernels_ms": per_kernel} if kernels else {}),
        })
        print(_fmt(rows[-1]), flush=True)
    return rows


def _fmt(r: dict) -> str:
    return (
        f"{r['shape'][:22]:<22} {r['impl']:<15} {r['fwd_ms']:8.3f} {r['fwd_tflops']:7.1f} "
        f"{r['fwdbwd_ms']:8.3f} {r['fwdbwd_tflops']:7.1f} {r['peak_mib']:9.1f} {r['first_call_s']:7.1f}"
    )


def _header() -> str:
    return f"{'shape':<22} {'impl':<15} {'fwd ms':>8} {'TFLOP/s':>7} {'f+b ms':>8} {'TFLOP/s':>7} {'peak MiB':>9} {'first s':>7}"


def _ratios(rows: list[dict]) -> list[str]:
    """Speed ratios (higher is better for the first name): softpick and our softmax against the anchors,
    softpick against our softmax, the Hopper kernels against Triton, the sink variants against softmax."""
    pairs = [("softpick", "fa4"), ("softpick", "cudnn"), ("softpick", "sdpa"), ("softpick", "softmax"),
             ("softmax", "fa4"), ("softmax", "cudnn"), ("softpick", "softpick-triton"),
             ("softpick-triton", "cudnn"), ("softpick-triton", "softmax-triton"),
             ("softmax+1", "softmax"), ("sink", "softmax")]
    out = []
    for shape in dict.fromkeys(r["shape"] for r in rows):
        by = {r["impl"]: r for r in rows if r["shape"] == shape}
        for a, b in pairs:
            if a in by and b in by:
                out.append(
                    f"{shape[:22]:<22} {a + '/' + b:<32} fwd {by[b]['fwd_ms'] / by[a]['fwd_ms']:.2f}x "
                    f"f+b {by[b]['fwdbwd_ms'] / by[a]['fwdbwd_ms']:.2f}x"
                )
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shapes", nargs="+", default=SHAPES, help="BxTxHxD or 'varlen'")
    parser.add_argument("--json", help="write rows and environment to this file")
    parser.add_argument("--variants", action="store_true", help="also time softmax+1 and learnable sinks")
    parser.add_argument("--impls", default=None, help="comma-separated subset, e.g. softpick,softmax")
    parser.add_argument("--kernels", action="store_true", help="also print each kernel's GPU time per forward+backward")
    parser.add_argument("--no-triton", action="store_true", help="leave out the forced-Triton rows")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        parser.error("this benchmark times CUDA kernels and no CUDA GPU is visible.")
    git = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    commit = os.environ.get("SOFTPICK_COMMIT") or git.stdout.strip() or "unknown"
    env = {
        "device": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "triton": triton.__version__,
        "flash_attn": getattr(_flash_attn(), "__version__", None),
        "fa4": getattr(_fa4(), "__version__", None),
        "softpick_kernels": "triton only" if _cute_problem(torch.empty(1, 1, 1, 64, device="cuda", dtype=torch.bfloat16)) else "cute (Hopper) by default",
        "commit": commit,
        "dtype": "bfloat16",
        "causal": True,
    }
    print(env, flush=True)
    print(_header(), flush=True)
    only = args.impls.split(",") if args.impls else None
    rows = [r for shape in args.shapes for r in bench_shape(shape, args.variants, only, args.kernels, not args.no_triton)]
    print("\n" + _header())
    for r in rows:
        print(_fmt(r))
    print("\n".join(["", *_ratios(rows)]))
    if args.kernels:
        print("\nGPU time per forward+backward by kernel (ms, torch.profiler):")
        for r in rows:
            print(f"  {r['shape'][:22]} {r['impl']}: " + ", ".join(f"{k[:40]} {ms:.3f}" for k, ms in r["kernels_ms"].items()))
    print("\nautotuned tiles (key: BK, BV, CAUSAL, SOFTPICK, dtypes):")
    from softpick.ops.attention.triton import training_bwd as triton_bwd, training_fwd as triton_fwd

    for kernel in (triton_fwd.attention_fwd_kernel, triton_bwd.attention_bwd_dkdv_kernel, triton_bwd.attention_bwd_dq_kernel):
        for key, config in kernel.cache.items():
            print(f"  {kernel.fn.__name__} {key[:4]} -> {config}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"env": env, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
