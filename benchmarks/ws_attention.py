"""Prototype for issue 4: warp-specialized causal attention kernels with TMA loads, against ours.

Triton 3.6's Hopper pass splits a key (or query) loop marked ``warp_specialize=True`` into producer
and consumer warps (USETMAXREG and mbarriers in the SASS) when the loop loads through tensor
descriptors, the kernel runs 4 warps and it has one such loop; it leaves our pointer-based kernels
as they are (benchmarks/RESULTS.md). This script times two such kernels, built on the library's own
math (``online_step`` for the forward, ``probs_T`` and ``grad_scores_T`` for the backward), before any of
it moves into ``softpick/ops``: the forward, and the dk/dv half of the backward. Dense causal
batches, one key head per query head, layout [B, T, H, D], T a multiple of 128.

    python benchmarks/ws_attention.py [--shapes 4x4096x16x64 2x8192x8x128] [--json out.json]

Prints, per shape and attention type, ms and TFLOP/s of: our forward (autotuned); the prototype
forward as ours is built (unmasked blocks, then the diagonal) at 4 and 8 warps, and with one key
loop that masks every block, without and with warp specialization (key blocks of 64, and with
specialization also 32 and 128); SDPA's forward for softmax;
our dk/dv kernel (autotuned) and the prototype's (one masked query loop, without and with warp
specialization) on the same o, lse and delta; and each output's largest difference from ours.
FLOPs as benchmarks/attention.py: forward 2 B H T^2 D (causal), dk/dv 4 B H T^2 D (four matmuls,
half the square each).
"""

from __future__ import annotations

import argparse
import json

import torch
import triton
import triton.language as tl

from softpick.ops.attention import softmax_attention, softpick_attention
from softpick.ops.attention import parallel
from softpick.ops.attention.triton_bwd import attention_bwd_dkdv_kernel, grad_scores_T, probs_T
from softpick.ops.attention.triton_fwd import LOG2E, NEG_BIG, doc_rows, online_step
from softpick.ops.softpick.naive import DEFAULT_EPS


@triton.jit
def ws_fwd_kernel(
    q, k, v, o, N, T, H, qk_scale, eps,
    D: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, SOFTPICK: tl.constexpr, ONE_LOOP: tl.constexpr,
    WS: tl.constexpr,
):
    """Grid (T // BM, B * H). q, k, v, o [B, T, H, D] seen as [N = B * T, H * D] for the descriptors.
    WS (warp specialization) needs ONE_LOOP: triton 3.6 fails to compile it with a second key loop."""
    i_m = tl.num_programs(0) - 1 - tl.program_id(0)
    i_b = tl.program_id(1) // H
    i_h = tl.program_id(1) % H
    desc_q = doc_rows(q, 0, N, H * D, BM, D)
    desc_k = doc_rows(k, 0, N, H * D, BN, D)
    desc_v = doc_rows(v, 0, N, H * D, BN, D)
    desc_o = doc_rows(o, 0, N, H * D, BM, D)
    row = i_b * T
    start_m = i_m * BM
    col = i_h * D
    b_q = desc_q.load([row + start_m, col])
    b_o = tl.zeros([BM, D], dtype=tl.float32)
    b_acc = tl.zeros([BM], dtype=tl.float32)
    if SOFTPICK:
        b_m = tl.zeros([BM], dtype=tl.float32)
    else:
        b_m = tl.full([BM], NEG_BIG, dtype=tl.float32)
    o_m = start_m + tl.arange(0, BM)
    if ONE_LOOP:  # every key block masked: the form the warp-specialization pass accepts
        for start_n in tl.range(0, start_m + BM, BN, warp_specialize=WS):
            b_k = desc_k.load([row + start_n, col])
            b_v = desc_v.load([row + start_n, col])
            visible = o_m[:, None] >= (start_n + tl.arange(0, BN))[None, :]
            b_s = tl.where(visible, tl.dot(b_q, b_k.T), float("-inf"))
            b_o, b_acc, b_m = online_step(b_s, b_v, b_o, b_acc, b_m, visible, qk_scale, True, SOFTPICK, False)
    else:  # the blocks every row sees, unmasked, then the diagonal (as our forward)
        for start_n in tl.range(0, start_m, BN):
            b_k = desc_k.load([row + start_n, col])
            b_v = desc_v.load([row + start_n, col])
            b_s = tl.dot(b_q, b_k.T)
            b_o, b_acc, b_m = online_step(b_s, b_v, b_o, b_acc, b_m, b_s, qk_scale, False, SOFTPICK, False)
        for start_n in range(start_m, start_m + BM, BN):
            b_k = desc_k.load([row + start_n, col])
            b_v = desc_v.load([row + start_n, col])
            visible = o_m[:, None] >= (start_n + tl.arange(0, BN))[None, :]
            b_s = tl.where(visible, tl.dot(b_q, b_k.T), float("-inf"))
            b_o, b_acc, b_m = online_step(b_s, b_v, b_o, b_acc, b_m, visible, qk_scale, True, SOFTPICK, False)
    if SOFTPICK:
        b_den = b_acc + eps * tl.math.exp2(-b_m)
    else:
        b_den = b_acc
    desc_o.store([row + start_m, col], (b_o / b_den[:, None]).to(o.dtype.element_ty))


def ws_forward(q, k, v, *, softpick: bool, one_loop: bool, warp_specialize: bool, bm: int = 128, bn: int = 64,
               eps: float = DEFAULT_EPS, num_warps: int = 4):
    """The prototype's output [B, T, H, D] (scale 1/sqrt(D), causal)."""
    B, T, H, D = q.shape
    if T % bm:
        raise ValueError(f"T must be a multiple of {bm} here, got {T}.")
    if warp_specialize and not one_loop:
        raise ValueError("warp_specialize needs one_loop (triton 3.6 does not compile it with two key loops).")
    o = torch.empty_like(q)
    scale = D ** -0.5
    ws_fwd_kernel[(T // bm, B * H)](
        q, k, v, o, B * T, T, H, scale * parallel.LOG2E, eps,
        D=D, BM=bm, BN=bn, SOFTPICK=softpick, ONE_LOOP=one_loop, WS=warp_specialize, num_warps=num_warps, num_stages=2,
    )
    return o


@triton.jit
def ws_dkdv_kernel(
    q, k, v, do, lse, delta, dk, dv, N, T, H, qk_scale, scale,
    D: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, SOFTPICK: tl.constexpr, WS: tl.constexpr,
):
    """Grid (T // BN, B * H): one key block per program, one masked loop over the query blocks from the
    diagonal on. lse, delta [B, T, H] float32; the rest [B, T, H, D] seen as [N, H * D]."""
    i_n = tl.num_programs(0) - 1 - tl.program_id(0)
    i_b = tl.program_id(1) // H
    i_h = tl.program_id(1) % H
    desc_q = doc_rows(q, 0, N, H * D, BM, D)
    desc_do = doc_rows(do, 0, N, H * D, BM, D)
    desc_k = doc_rows(k, 0, N, H * D, BN, D)
    desc_v = doc_rows(v, 0, N, H * D, BN, D)
    row = i_b * T
    start_n = i_n * BN
    col = i_h * D
    b_k = desc_k.load([row + start_n, col])
    b_v = desc_v.load([row + start_n, col])
    b_dk = tl.zeros([BN, D], dtype=tl.float32)
    b_dv = tl.zeros([BN, D], dtype=tl.float32)
    o_n = start_n + tl.arange(0, BN)
    for start_m in tl.range(start_n, T, BM, warp_specialize=WS):
        b_q = desc_q.load([row + start_m, col])
        b_do = desc_do.load([row + start_m, col])
        o_m = start_m + tl.arange(0, BM)
        b_lse = tl.load(lse + (row + o_m) * H + i_h) * LOG2E
        b_delta = tl.load(delta + (row + o_m) * H + i_h)
        b_sT = tl.where(o_m[None, :] >= o_n[:, None], tl.dot(b_k, b_q.T) * qk_scale, float("-inf"))  # [BN, BM]
        b_c = tl.math.exp2(-b_lse)  # as our dk/dv kernel took it before it read it beside lse
        b_eT, b_pT = probs_T(b_sT, b_lse, b_c, b_do.dtype, SOFTPICK)
        b_dv = tl.dot(b_pT, b_do, b_dv)
        b_dsT = grad_scores_T(b_eT, b_c, tl.dot(b_v, b_do.T), b_delta, SOFTPICK)
        b_dk = tl.dot(b_dsT.to(b_q.dtype), b_q, b_dk)
    p_out = (row + o_n[:, None]) * (H * D) + col + tl.arange(0, D)[None, :]
    tl.store(dk + p_out, (b_dk * scale).to(dk.dtype.element_ty))
    tl.store(dv + p_out, b_dv.to(dv.dtype.element_ty))


def ws_dkdv(q, k, v, do, lse, delta, *, softpick: bool, warp_specialize: bool, bm: int = 64, bn: int = 64):
    """The prototype's (dk, dv) [B, T, H, D] from lse and delta [B, T, H] float32 (scale 1/sqrt(D), causal)."""
    B, T, H, D = q.shape
    if T % bn or bn % bm:
        raise ValueError(f"T must be a multiple of {bn} and {bn} of {bm} here, got T = {T}.")
    dk, dv = torch.empty_like(k), torch.empty_like(v)
    scale = D ** -0.5
    ws_dkdv_kernel[(T // bn, B * H)](
        q, k, v, do, lse, delta, dk, dv, B * T, T, H, scale * parallel.LOG2E, scale,
        D=D, BM=bm, BN=bn, SOFTPICK=softpick, WS=warp_specialize, num_warps=4, num_stages=2,
    )
    return dk, dv


def ours_dkdv(q, k, v, do, lse, delta, *, softpick: bool):
    """Our autotuned dk/dv kernel on the same inputs (as softpick.ops.attention.parallel launches it)."""
    T, H = q.shape[1], k.shape[2]
    dk, dv = torch.empty_like(k), torch.empty_like(v)
    scale = q.shape[-1] ** -0.5
    lse_c = torch.stack((lse * parallel.LOG2E, torch.exp(-lse)), -1) if softpick else lse  # as _bwd_rows
    attention_bwd_dkdv_kernel[lambda meta: (triton.cdiv(T, meta["BN"]), q.shape[0], H)](
        q, k, v, do, lse_c, delta, dk, dv, None, T, parallel.tune_len(T), scale * parallel.LOG2E, scale, G=1,
        **parallel._dims(q, k, v), SOFTPICK=softpick, CAUSAL=True, IS_VARLEN=False,
    )
    return dk, dv


def saved_for_backward(q, k, v, do, *, softpick: bool):
    """(lse, delta) [B, T, H] float32 as our forward and backward preprocess compute them."""
    o, lse = parallel._fwd(q, k, v, None, softpick, q.shape[-1] ** -0.5, True, DEFAULT_EPS)
    return lse, (o.float() * do.float()).sum(-1)


def _first_call(fn, rows: list, shape: str, attention: str, impl: str):
    """fn()'s result, or None after recording and printing why it failed (a prototype that does not
    compile on this GPU must not cost the rows after it)."""
    try:
        return fn()
    except Exception as error:  # noqa: BLE001 - any compile or launch failure is a result here
        message = f"{type(error).__name__}: {str(error).strip().splitlines()[-1][:200] if str(error).strip() else ''}"
        rows.append({"shape": shape, "attention": attention, "impl": impl, "error": message})
        print(f"{shape:<16} {attention:<9} {impl:<20} failed: {message}", flush=True)
        return None


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shapes", nargs="+", default=["4x4096x16x64", "2x8192x8x128"], help="BxTxHxD")
    parser.add_argument("--json", default=None, help="write the rows to this file")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        parser.error("this benchmark times CUDA kernels and no CUDA GPU is visible.")
    triton.set_allocator(lambda size, alignment, stream: torch.empty(size, dtype=torch.int8, device="cuda"))
    rows = []
    print(f"{'shape':<16} {'attention':<9} {'impl':<20} {'ms':>8} {'TFLOP/s':>8} {'max |diff|':>11}")
    for shape in args.shapes:
        B, T, H, D = map(int, shape.split("x"))
        gen = torch.Generator(device="cuda").manual_seed(0)
        q, k, v = (torch.randn(B, T, H, D, device="cuda", dtype=torch.bfloat16, generator=gen) for _ in range(3))
        flops = 2 * B * H * T * T * D
        for softpick in (True, False):
            name = "softpick" if softpick else "softmax"
            ours = softpick_attention if softpick else softmax_attention
            ref = ours(q, k, v, impl="triton")
            cases = {"ours": lambda: ours(q, k, v, impl="triton")}
            for label, one_loop, ws, warps, bn in [
                ("two loops, 4 warps", False, False, 4, 64), ("two loops, 8 warps", False, False, 8, 64),
                ("one loop, 4 warps", True, False, 4, 64), ("one loop, ws", True, True, 4, 64),
                ("one loop, ws, BN=128", True, True, 4, 128), ("one loop, ws, BN=32", True, True, 4, 32)]:
                cases[label] = lambda o=one_loop, w=ws, n=warps, b=bn: ws_forward(
                    q, k, v, softpick=softpick, one_loop=o, warp_specialize=w, num_warps=n, bn=b)
            if not softpick:
                cases["sdpa"] = lambda: softmax_attention(q, k, v, impl="sdpa")
            for impl, fn in cases.items():
                out = _first_call(fn, rows, shape, name, impl)
                if out is None:
                    continue
                diff = (out.float() - ref.float()).abs().max().item()
                ms = triton.testing.do_bench(fn, warmup=25, rep=200, return_mode="median")
                rows.append({"shape": shape, "attention": name, "impl": impl, "ms": ms,
                             "tflops": flops / ms / 1e9, "max_abs_diff": diff})
                print(f"{shape:<16} {name:<9} {impl:<20} {ms:8.3f} {flops / ms / 1e9:8.1f} {diff:11.2e}", flush=True)
            do = torch.randn_like(q)
            lse, delta = saved_for_backward(q, k, v, do, softpick=softpick)
            ref_dk, ref_dv = ours_dkdv(q, k, v, do, lse, delta, softpick=softpick)
            cases = {"ours dk/dv": lambda: ours_dkdv(q, k, v, do, lse, delta, softpick=softpick)}
            for ws in (False, True):
                cases[f"dk/dv, ws={ws}"] = lambda w=ws: ws_dkdv(q, k, v, do, lse, delta, softpick=softpick, warp_specialize=w)
            for impl, fn in cases.items():
                out = _first_call(fn, rows, shape, name, impl)
                if out is None:
                    continue
                dk, dv = out
                diff = max((dk.float() - ref_dk.float()).abs().max().item(), (dv.float() - ref_dv.float()).abs().max().item())
                ms = triton.testing.do_bench(fn, warmup=25, rep=200, return_mode="median")
                rows.append({"shape": shape, "attention": name, "impl": impl, "ms": ms,
                             "tflops": 2 * flops / ms / 1e9, "max_abs_diff": diff})
                print(f"{shape:<16} {name:<9} {impl:<20} {ms:8.3f} {2 * flops / ms / 1e9:8.1f} {diff:11.2e}", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": torch.cuda.get_device_name(), "triton": triton.__version__, "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
