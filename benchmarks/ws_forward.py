"""Prototype for issue 4: a warp-specialized causal attention forward with TMA loads, against ours.

Triton 3.6's Hopper pass splits a key loop marked ``warp_specialize=True`` into producer and consumer
warps (USETMAXREG and mbarriers in the SASS) when the loop loads through tensor descriptors and the
kernel runs 4 warps; it leaves our pointer-based forward as it is (benchmarks/RESULTS.md). This
script times such a forward, built on the library's own ``online_step`` (the same softpick and
softmax math), before any of it moves into ``softpick/ops``. Dense causal batches only, layout
[B, T, H, D], T a multiple of the query tile.

    python benchmarks/ws_forward.py [--shapes 4x4096x16x64 2x8192x8x128] [--json out.json]

Prints, per shape and attention type, forward ms and TFLOP/s of: our forward (autotuned); the
prototype as our forward is built (unmasked blocks, then the diagonal) at 4 and 8 warps; the
prototype with one key loop that masks every block, without and with warp specialization; SDPA
for softmax; and each output's largest difference from ours.
"""

from __future__ import annotations

import argparse
import json

import torch
import triton
import triton.language as tl

from softpick.ops.attention import softmax_attention, softpick_attention
from softpick.ops.softpick.naive import DEFAULT_EPS
from softpick.ops.attention.triton_fwd import NEG_BIG, online_step


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
    desc_q = tl.make_tensor_descriptor(q, shape=[N, H * D], strides=[H * D, 1], block_shape=[BM, D])
    desc_k = tl.make_tensor_descriptor(k, shape=[N, H * D], strides=[H * D, 1], block_shape=[BN, D])
    desc_v = tl.make_tensor_descriptor(v, shape=[N, H * D], strides=[H * D, 1], block_shape=[BN, D])
    desc_o = tl.make_tensor_descriptor(o, shape=[N, H * D], strides=[H * D, 1], block_shape=[BM, D])
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
            b_o, b_acc, b_m = online_step(b_s, b_v, b_o, b_acc, b_m, visible, qk_scale, True, SOFTPICK)
    else:  # the blocks every row sees, unmasked, then the diagonal (as our forward)
        for start_n in tl.range(0, start_m, BN):
            b_k = desc_k.load([row + start_n, col])
            b_v = desc_v.load([row + start_n, col])
            b_s = tl.dot(b_q, b_k.T)
            b_o, b_acc, b_m = online_step(b_s, b_v, b_o, b_acc, b_m, b_s, qk_scale, False, SOFTPICK)
        for start_n in range(start_m, start_m + BM, BN):
            b_k = desc_k.load([row + start_n, col])
            b_v = desc_v.load([row + start_n, col])
            visible = o_m[:, None] >= (start_n + tl.arange(0, BN))[None, :]
            b_s = tl.where(visible, tl.dot(b_q, b_k.T), float("-inf"))
            b_o, b_acc, b_m = online_step(b_s, b_v, b_o, b_acc, b_m, visible, qk_scale, True, SOFTPICK)
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
        q, k, v, o, B * T, T, H, scale * 1.4426950408889634, eps,
        D=D, BM=bm, BN=bn, SOFTPICK=softpick, ONE_LOOP=one_loop, WS=warp_specialize, num_warps=num_warps, num_stages=2,
    )
    return o


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shapes", nargs="+", default=["4x4096x16x64", "2x8192x8x128"], help="BxTxHxD")
    parser.add_argument("--json", default=None, help="write the rows to this file")
    args = parser.parse_args(argv)
    triton.set_allocator(lambda size, alignment, stream: torch.empty(size, dtype=torch.int8, device="cuda"))
    rows = []
    print(f"{'shape':<16} {'attention':<9} {'impl':<20} {'fwd ms':>8} {'TFLOP/s':>8} {'max |diff|':>11}")
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
            for label, one_loop, ws, warps in [("two loops, 4 warps", False, False, 4), ("two loops, 8 warps", False, False, 8),
                                               ("one loop, 4 warps", True, False, 4), ("one loop, ws", True, True, 4)]:
                cases[label] = lambda o=one_loop, w=ws, n=warps: ws_forward(
                    q, k, v, softpick=softpick, one_loop=o, warp_specialize=w, num_warps=n)
            if not softpick:
                cases["sdpa"] = lambda: softmax_attention(q, k, v, impl="sdpa")
            for impl, fn in cases.items():
                out = fn()
                diff = (out.float() - ref.float()).abs().max().item()
                ms = triton.testing.do_bench(fn, warmup=25, rep=200, return_mode="median")
                rows.append({"shape": shape, "attention": name, "impl": impl, "fwd_ms": ms,
                             "tflops": flops / ms / 1e9, "max_abs_diff": diff})
                print(f"{shape:<16} {name:<9} {impl:<20} {ms:8.3f} {flops / ms / 1e9:8.1f} {diff:11.2e}", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": torch.cuda.get_device_name(), "triton": triton.__version__, "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
