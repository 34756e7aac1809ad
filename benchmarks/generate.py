"""Generation speed (issues 7, 21): new tokens/s of our softpick model (fast loop with CUDA graphs, the same
loop without graphs, ``generate``) against HF ``LlamaForCausalLM`` (``generate`` eager and with the static
cache, whose decoding step transformers compiles), ms per step split into GPU and host time, and the
decode attention kernel's KV-read bandwidth.

Models: random weights, bf16, the paper's 340M shape (configs/softpick_transformer_340M.json); Llama gets
the same fields (SDPA). Each case is (batch, prompt tokens) with ``--new`` greedy new tokens (no stop
token). For every path, after one warm-up call of each length (compiles, autotunes, captures graphs):

- ``new tok/s``: batch x new / wall time of the whole call (prefill included), CUDA-synchronised;
- ``ms/step``: (wall(new) - wall(1)) / (new - 1), the decoding step alone;
- ``GPU ms/step``: (gpu(17) - gpu(1)) / 16, gpu(n) the summed device time of every kernel, memcpy and
  memset of a call of n new tokens (torch.profiler, CUPTI; kernels replayed from CUDA graphs included),
  i.e. the time the GPU is busy per step;
- ``host ms/step``: ms/step - GPU ms/step, the time per step the GPU waits for the host.

Kernel table: :func:`softpick.ops.attention.triton.kv_cache.decode_attention` alone (and with the decode
loop's device length ``kv_len``), bytes of K and V read per call / time, against the device-to-device
copy bandwidth measured in the same run (bytes read + written / time of ``dst.copy_(src)`` on 4 GiB).

    python3 benchmarks/generate.py --json out.json                     # issue 21's cases, ~4 min on an H200
    python3 benchmarks/generate.py --case 1x1024 --new 16 --paths "softpick fast (graphs)"   # a quick look
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import time
from pathlib import Path

import torch

import softpick  # noqa: F401  (registers softpick_transformer)
from softpick.models.fast_generate import fast_generate

ROOT = Path(__file__).resolve().parent.parent
KV_BUDGET_GIB = 40.0
"""Skip kernel-table (batch, context) pairs whose K and V would exceed this."""

PATHS = {
    "softpick fast (graphs)": "softpick",
    "softpick fast (no graphs)": "softpick",
    "softpick generate (eager)": "softpick",
    "softpick generate (static cache)": "softpick",
    "HF Llama generate (eager)": "llama",
    "HF Llama generate (static cache)": "llama",
}
"""Path name -> the model it runs."""

ONLY_FIRST_CASE = ("softpick generate (static cache)",)
"""Paths run on the first case only by default (their compile per shape costs a minute of GPU time)."""


def build_models(config_path: Path, device: str, dtype: torch.dtype) -> dict[str, torch.nn.Module]:
    from transformers import AutoConfig, AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

    fields = json.loads(config_path.read_text())
    fields.pop("model_type")
    config = AutoConfig.for_model("softpick_transformer", **{**fields, "attn_type": "softpick", "attn_impl": None})
    torch.manual_seed(0)
    ours = AutoModelForCausalLM.from_config(config, dtype=dtype)
    llama_config = LlamaConfig(**{k: v for k, v in fields.items() if k not in ("attn_type", "attn_impl", "softpick_eps")})
    llama_config._attn_implementation = "sdpa"
    torch.manual_seed(0)
    llama = LlamaForCausalLM(llama_config).to(dtype)
    return {"softpick": ours.to(device).eval(), "llama": llama.to(device).eval()}


def generate_call(path: str, model, ids: torch.Tensor):
    """A function n -> the generated ids [B, T + n] of ``path`` (greedy, exactly n new tokens)."""
    mask = torch.ones_like(ids)
    if path.startswith("softpick fast"):
        graphs = path == "softpick fast (graphs)"
        return lambda n: fast_generate(model, ids, max_new_tokens=n, eos_token_id=None, graphs=graphs)
    extra = {"cache_implementation": "static"} if "static" in path else {}
    return lambda n: model.generate(ids, attention_mask=mask, max_new_tokens=n, min_new_tokens=n, do_sample=False,
                                    pad_token_id=0, **extra)


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def wall_seconds(fn) -> float:
    sync()
    start = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - start


def gpu_seconds(fn) -> float | None:
    """Summed device time (s) of every kernel / memcpy / memset fn() ran, from torch.profiler; None if unseen."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    if not torch.cuda.is_available():
        return None
    sync()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        sync()
    total_us = sum(e.time_range.elapsed_us() for e in prof.events() if e.device_type == DeviceType.CUDA)
    return total_us / 1e6 if total_us > 0 else None


@torch.no_grad()
def measure(path: str, model, batch: int, context: int, new: int, vocab: int, profiled: int) -> dict:
    ids = torch.randint(3, vocab, (batch, context), device=model.device)
    gen = generate_call(path, model, ids)
    # warm-up (compile, autotune, capture): the static cache's shape depends on the call's length
    for n in (new if "static" in path else min(new, profiled), 1):
        gen(n)
    wall_new, wall_one = wall_seconds(lambda: gen(new)), wall_seconds(lambda: gen(1))
    profiled = min(new, profiled)
    gpu_new, gpu_one = gpu_seconds(lambda: gen(profiled)), gpu_seconds(lambda: gen(1))
    step = (wall_new - wall_one) / (new - 1)
    gpu_step = None if gpu_new is None or gpu_one is None else (gpu_new - gpu_one) / (profiled - 1)
    return {"new_tok_s": batch * new / wall_new, "decode_tok_s": batch / step, "ms_per_step": step * 1e3,
            "gpu_ms_per_step": None if gpu_step is None else gpu_step * 1e3,
            "host_ms_per_step": None if gpu_step is None else (step - gpu_step) * 1e3,
            "prefill_plus_one_s": wall_one}


@torch.no_grad()
def kernel_bandwidth(contexts: list[int], batches: list[int], heads: int, head_dim: int) -> list[dict]:
    """K+V read bandwidth of the decode kernel (plain, and reading kv_len from the device) and of SDPA."""
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
            kv_len = torch.tensor([context], dtype=torch.int32, device="cuda")
            calls = {
                variant + suffix: (lambda variant=variant, n=n: decode_attention(
                    q, k, v, variant=variant, scale=None, causal=True, attention_mask=None, eps=1e-6, kv_len=n))
                for variant in ("softpick", "softmax") for suffix, n in (("", None), (" kv_len", kv_len))
            }
            calls["sdpa softmax"] = lambda: torch.nn.functional.scaled_dot_product_attention(
                q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
            for name, call in calls.items():
                seconds = do_bench(call) / 1e3
                gbs = 2 * k.numel() * k.element_size() / seconds / 1e9
                rows.append({"variant": name, "batch": batch, "context": context, "us": seconds * 1e6,
                             "kv_gb_s": gbs, "copy_gb_s": copy_gbs, "fraction_of_copy": gbs / copy_gbs})
            del k, v
    return rows


def _fmt(value, digits: int = 2) -> str:
    return "n/a" if value is None else f"{value:,.{digits}f}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", type=Path, default=ROOT / "configs" / "softpick_transformer_340M.json")
    p.add_argument("--case", nargs="+", default=["1x1024", "32x1024", "32x8192"], help="BATCHxPROMPT_TOKENS")
    p.add_argument("--new", type=int, default=128, help="new tokens per call")
    p.add_argument("--profiled-new", type=int, default=17,
                   help="new tokens of the profiled calls that give the GPU time per step (fewer events to parse)")
    p.add_argument("--paths", default=None, help=f"comma-separated subset of {list(PATHS)}")
    p.add_argument("--all-cases", action="store_true", help=f"also run {ONLY_FIRST_CASE} beyond the first case")
    p.add_argument("--skip-kernel", action="store_true")
    p.add_argument("--kernel-batch", type=int, nargs="+", default=[1, 8, 32])
    p.add_argument("--kernel-context", type=int, nargs="+", default=[8192, 32768, 131072])
    p.add_argument("--device", default="cuda", help="cuda; cpu only for a smoke test of the script")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args()
    import transformers

    commit = os.environ.get("SOFTPICK_COMMIT") or subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT).stdout.strip()
    device_name = torch.cuda.get_device_name() if args.device == "cuda" else "cpu"
    print(f"# {device_name}, torch {torch.__version__}, transformers {transformers.__version__}, "
          f"commit {commit or 'unknown'}", flush=True)
    paths = list(PATHS) if args.paths is None else [s.strip() for s in args.paths.split(",")]
    unknown = [s for s in paths if s not in PATHS]
    if unknown:
        raise SystemExit(f"unknown path(s) {unknown}; choose from {list(PATHS)}")
    cases = [tuple(int(x) for x in c.lower().split("x")) for c in args.case]
    dtype = torch.bfloat16 if args.device == "cuda" else torch.float32
    models = build_models(args.config, args.device, dtype) if paths else {}
    vocab = json.loads(args.config.read_text())["vocab_size"]
    rows = []
    print(f"\n{args.new} new tokens per call (greedy); host ms/step = ms/step - GPU ms/step\n")
    print("| path | batch | prompt | new tok/s | decode tok/s | ms/step | GPU ms/step | host ms/step |")
    print("|---|---|---|---|---|---|---|---|")
    for index, (batch, context) in enumerate(cases):
        for path in paths:
            if index > 0 and path in ONLY_FIRST_CASE and not args.all_cases:
                continue
            model = models[PATHS[path]]
            try:
                r = measure(path, model, batch, context, args.new, vocab, args.profiled_new)
            except Exception as error:  # one failing path must not cost the rest of the run
                print(f"| {path} | {batch} | {context} | failed: {type(error).__name__}: {str(error)[:200]} |||||",
                      flush=True)
                rows.append({"path": path, "batch": batch, "context": context, "error": repr(error)[:1000]})
                continue
            finally:
                model.__dict__.pop("_softpick_decode_session", None)  # free the fast loop's cache
                torch.cuda.empty_cache()
            rows.append({"path": path, "batch": batch, "context": context, "new": args.new, **r})
            print(f"| {path} | {batch} | {context} | {r['new_tok_s']:,.0f} | {r['decode_tok_s']:,.0f} | "
                  f"{r['ms_per_step']:.2f} | {_fmt(r['gpu_ms_per_step'])} | {_fmt(r['host_ms_per_step'])} |", flush=True)
    del models
    torch.cuda.empty_cache()
    kernel_rows = []
    if not args.skip_kernel and args.device == "cuda":
        config = json.loads(args.config.read_text())
        heads = config.get("num_key_value_heads") or config["num_attention_heads"]
        head_dim = config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]
        kernel_rows = kernel_bandwidth(args.kernel_context, args.kernel_batch, heads, head_dim)
        print("\n| attention | batch | context | us | K+V GB/s | copy GB/s | fraction |")
        print("|---|---|---|---|---|---|---|")
        for r in kernel_rows:
            print(f"| {r['variant']} | {r['batch']} | {r['context']} | {r['us']:.1f} | {r['kv_gb_s']:.0f} | "
                  f"{r['copy_gb_s']:.0f} | {r['fraction_of_copy']:.2f} |", flush=True)
    if args.json:
        args.json.write_text(json.dumps({"commit": commit, "models": rows, "kernel": kernel_rows}, indent=1))


if __name__ == "__main__":
    main()
