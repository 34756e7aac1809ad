"""Inference speed (issue 7): prefill and decode tokens/s of softpick vs softmax vs HF Llama, and the
decode kernel's KV-read bandwidth.

Models (random weights, bf16, the paper's 340M shape from configs/): our softpick model (Triton
kernels), our softmax model on torch SDPA (``attn_impl="sdpa"``), our softmax model on our Triton
kernels, and ``transformers.LlamaForCausalLM`` with SDPA. For each batch size and context length:

- prefill: one forward of [B, context] tokens that fills a transformers ``DynamicCache``;
- decode: ``--steps`` single-token forwards over that cache (greedy), the time per step from CUDA
  events, tokens/s = B / step time; the cache is cropped back between repeats (median of 3);
- generate: ``model.generate`` of ``--steps`` new tokens from a context-long prompt, end to end.

Kernel table: :func:`softpick.ops.attention.triton.kv_cache.decode_attention` alone at long context, its
bytes of K and V read per call / time, against the device-to-device copy bandwidth measured in the
same run (bytes read + written / time of ``dst.copy_(src)`` on 4 GiB).

    python benchmarks/generate.py --json out.json                     # the full grid
    python benchmarks/generate.py --batch 1 --context 1024 --steps 8  # a quick look
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import time
from pathlib import Path

import torch

import softpick  # noqa: F401  (registers softpick_transformer)

ROOT = Path(__file__).resolve().parent.parent
KV_BUDGET_GIB = 40.0
"""Skip (batch, context) pairs whose KV cache would exceed this (the cache is copied as it grows)."""


def build_models(config_path: Path, device: str, dtype: torch.dtype) -> dict[str, torch.nn.Module]:
    from transformers import AutoConfig, AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

    fields = json.loads(config_path.read_text())
    fields.pop("model_type")
    models = {}
    for name, attn_type, impl in (("softpick (triton)", "softpick", None), ("softmax (sdpa)", "softmax", "sdpa"),
                                  ("softmax (triton)", "softmax", "triton")):
        config = AutoConfig.for_model("softpick_transformer", **{**fields, "attn_type": attn_type, "attn_impl": impl})
        torch.manual_seed(0)
        models[name] = AutoModelForCausalLM.from_config(config, dtype=dtype)
    llama = LlamaConfig(**{k: v for k, v in fields.items() if k not in ("attn_type", "attn_impl", "softpick_eps")})
    llama._attn_implementation = "sdpa"
    torch.manual_seed(0)
    models["HF Llama (sdpa)"] = LlamaForCausalLM(llama).to(dtype)
    return {name: m.to(device).eval() for name, m in models.items()}


def cuda_time(fn, repeats: int = 3) -> float:
    """Median seconds of fn() over ``repeats`` calls, CUDA events (wall clock on CPU)."""
    times = []
    for _ in range(repeats):
        if not torch.cuda.is_available():
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
            continue
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return statistics.median(times)


@torch.no_grad()
def measure(model, batch: int, context: int, steps: int, vocab: int) -> dict:
    from transformers import DynamicCache

    ids = torch.randint(3, vocab, (batch, context), device=model.device)
    cache_holder = {}

    def prefill():
        cache_holder["cache"] = DynamicCache(config=model.config)
        cache_holder["logits"] = model(ids, past_key_values=cache_holder["cache"], use_cache=True,
                                       logits_to_keep=1).logits

    prefill()  # warm-up: compile / autotune
    prefill_s = cuda_time(prefill)
    cache = cache_holder["cache"]
    next_ids = cache_holder["logits"][:, -1:].argmax(-1)

    def decode():
        token = next_ids
        for _ in range(steps):
            logits = model(token, past_key_values=cache, use_cache=True).logits
            token = logits[:, -1:].argmax(-1)
        cache.crop(-steps)  # drop the decoded tokens (a negative count works on old and new transformers)

    decode()  # warm-up
    decode_s = cuda_time(decode) / steps

    def gen():
        model.generate(ids, max_new_tokens=steps, min_new_tokens=steps, do_sample=False, use_cache=True,
                       pad_token_id=0)

    gen()
    generate_s = cuda_time(gen, repeats=1)
    del cache_holder, cache
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return {"prefill_tok_s": batch * context / prefill_s, "decode_tok_s": batch / decode_s,
            "decode_ms_per_step": decode_s * 1e3, "generate_new_tok_s": batch * steps / generate_s}


@torch.no_grad()
def kernel_bandwidth(contexts: list[int], batches: list[int], heads: int, head_dim: int,
                     splits: tuple[int, ...] = (0,)) -> list[dict]:
    """K+V read bandwidth of the decode kernel (each split count; 0 = the default choice) and of SDPA."""
    from triton.testing import do_bench

    from softpick.ops.attention.triton.kv_cache import decode_attention

    src = torch.empty(4 << 30, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    copy_s = do_bench(lambda: dst.copy_(src)) / 1e3
    copy_gbs = 2 * src.numel() / copy_s / 1e9
    del src, dst
    rows = []
    for batch in batches:
        for context in contexts:
            if 2 * batch * context * heads * head_dim * 2 / 2**30 > KV_BUDGET_GIB:
                continue
            k = torch.randn(batch, heads, context, head_dim, device="cuda", dtype=torch.bfloat16).transpose(1, 2)
            v = torch.randn_like(k)
            q = torch.randn(batch, 1, heads, head_dim, device="cuda", dtype=torch.bfloat16)
            for variant, n in [(variant, n) for variant in ("softpick", "softmax") for n in splits]:
                seconds = do_bench(lambda: decode_attention(q, k, v, variant=variant, scale=None, causal=True,
                                                            attention_mask=None, eps=1e-6, splits=n)) / 1e3
                gbs = 2 * k.numel() * k.element_size() / seconds / 1e9
                name = variant if n == 0 else f"{variant} splits={n}"
                rows.append({"variant": name, "batch": batch, "context": context, "us": seconds * 1e6,
                             "kv_gb_s": gbs, "copy_gb_s": copy_gbs, "fraction_of_copy": gbs / copy_gbs})
            sdpa_s = do_bench(lambda: torch.nn.functional.scaled_dot_product_attention(
                q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))) / 1e3
            gbs = 2 * k.numel() * k.element_size() / sdpa_s / 1e9
            rows.append({"variant": "sdpa softmax", "batch": batch, "context": context, "us": sdpa_s * 1e6,
                         "kv_gb_s": gbs, "copy_gb_s": copy_gbs, "fraction_of_copy": gbs / copy_gbs})
            del k, v
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", type=Path, default=ROOT / "configs" / "softpick_transformer_340M.json")
    p.add_argument("--batch", type=int, nargs="+", default=[1, 32])
    p.add_argument("--context", type=int, nargs="+", default=[1024, 8192, 32768])
    p.add_argument("--steps", type=int, default=32)
    p.add_argument("--models", default=None, help="comma-separated subset of the model names ('none': kernel table only)")
    p.add_argument("--skip-kernel", action="store_true")
    p.add_argument("--kernel-batch", type=int, nargs="+", default=[1, 8, 32], help="batch sizes of the kernel table")
    p.add_argument("--kernel-context", type=int, nargs="+", default=[8192, 32768, 131072])
    p.add_argument("--kernel-splits", type=int, nargs="+", default=[0],
                   help="key-split counts of the kernel table (0 = the default choice)")
    p.add_argument("--device", default="cuda", help="cuda; cpu only for a smoke test of the script")
    p.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float16", "float32"))
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args()
    commit = os.environ.get("SOFTPICK_COMMIT") or subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT).stdout.strip()
    device_name = torch.cuda.get_device_name() if args.device == "cuda" else "cpu"
    print(f"# {device_name}, torch {torch.__version__}, commit {commit or 'unknown'}", flush=True)
    from transformers import AutoConfig

    config = AutoConfig.for_model("softpick_transformer", **{
        k: v for k, v in json.loads(args.config.read_text()).items() if k != "model_type"})
    models = {} if args.models == "none" else build_models(args.config, args.device, getattr(torch, args.dtype))
    if args.models and args.models != "none":
        models = {n: m for n, m in models.items() if n in args.models.split(",")}
    kv_bytes_per_token = 2 * config.num_hidden_layers * config.num_key_value_heads * config.head_dim * 2
    rows = []
    print("| model | batch | context | prefill tok/s | decode tok/s | decode ms/step | generate new tok/s |")
    print("|---|---|---|---|---|---|---|")
    for batch in args.batch:
        for context in args.context:
            if batch * context * kv_bytes_per_token / 2**30 > KV_BUDGET_GIB:
                print(f"| (skipped: batch {batch} x context {context} needs more than {KV_BUDGET_GIB:.0f} GiB of "
                      "KV cache) |||||||", flush=True)
                continue
            for name, model in models.items():
                r = {"model": name, "batch": batch, "context": context,
                     **measure(model, batch, context, args.steps, config.vocab_size)}
                rows.append(r)
                print(f"| {name} | {batch} | {context} | {r['prefill_tok_s']:.0f} | {r['decode_tok_s']:.0f} | "
                      f"{r['decode_ms_per_step']:.2f} | {r['generate_new_tok_s']:.0f} |", flush=True)
    kernel_rows = []
    if not args.skip_kernel and args.device == "cuda":
        kernel_rows = kernel_bandwidth(args.kernel_context, args.kernel_batch, config.num_key_value_heads,
                                       config.head_dim, tuple(args.kernel_splits))
        print("\n| attention | batch | context | us | K+V GB/s | copy GB/s | fraction |")
        print("|---|---|---|---|---|---|---|")
        for r in kernel_rows:
            print(f"| {r['variant']} | {r['batch']} | {r['context']} | {r['us']:.1f} | {r['kv_gb_s']:.0f} | "
                  f"{r['copy_gb_s']:.0f} | {r['fraction_of_copy']:.2f} |")
    if args.json:
        args.json.write_text(json.dumps({"commit": commit, "models": rows, "kernel": kernel_rows}, indent=1))


if __name__ == "__main__":
    main()
