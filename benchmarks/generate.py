"""Generation speed (issues 7, 21, 25): new tokens/s of our softpick model against HF ``LlamaForCausalLM``,
per decoding step: wall and GPU time, kernels, and the bytes it moves against the GPU's copy bandwidth.

Models: random weights, bf16, the paper's 340M shape (configs/softpick_transformer_340M.json; a case may
name another config: ``1x1024@1B`` is configs/softpick_transformer_1B.json); Llama gets the same fields
(SDPA). Each case is (batch, prompt tokens) with ``--new`` greedy new tokens (no stop token). Paths:

- ``softpick fast``: :func:`softpick.models.fast_generate.fast_generate`, the default: the decoding step
  compiled (torch.compile, our KV-cache attention as a custom op) and replayed in CUDA graphs;
- ``softpick fast (combo kernels)``: the same with inductor's horizontal fusion of independent kernels
  (``combo_kernels``, experimental in torch), to see what it saves;
- ``softpick fast (no compile)``: the same loop, the eager step in CUDA graphs (the pre-issue-25 loop);
- ``softpick generate (static cache)``: ``model.generate(cache_implementation="static")`` of our model,
  which runs fast_generate (``softpick.models.fast_generate.static_cache_generate``);
- ``softpick generate (HF static loop)``: the same call through transformers' loop (its StaticCache,
  the forward compiled by transformers, mode reduce-overhead): what the route above avoids;
- ``HF Llama generate (static cache)``: the same call on ``LlamaForCausalLM``;
- ``softpick generate (eager)``, ``HF Llama generate (eager)``: the dynamic cache, no compile.

The static-cache paths get one ``StaticCache`` per case, reset before each call (so every call has the
compiled shapes). For every path, after warm-up calls (compile, autotune, capture):

- ``new tok/s``: batch x new / wall time of the whole call (prefill included), CUDA-synchronised;
- ``decode tok/s``: batch / ms/step, the rate of the decoding steps alone (the figure issue 25 targets);
- ``ms/step``: (wall(new) - wall(1)) / (new - 1), the decoding step alone;
- ``GPU ms/step``: (gpu(n) - gpu(1)) / (n - 1) for n = ``--profiled-new``, gpu(n) the summed device time
  of every kernel, memcpy and memset of a call (torch.profiler, CUPTI; kernels replayed from CUDA graphs
  included), i.e. the time the GPU is busy per step; ``kernels/step`` the same difference of event counts;
- ``GB/s``: the bytes a step must read (every weight but the embedding table, plus the valid K and V of
  every layer at the mean context of the call) / ms/step, and ``of copy`` that against the
  device-to-device copy bandwidth measured in the same run (bytes read + written / time of
  ``dst.copy_(src)`` on 2 GiB).

``--top-kernels N`` prints the N kernels of the largest device time in one profiled call per path and
case (what bounds a step). Kernel table (``--kernel``): :func:`~softpick.ops.attention.triton.kv_cache.
decode_attention` alone, K+V bytes read per call / time.

    python3 benchmarks/generate.py --json out.json                               # issue 25's cases
    python3 benchmarks/generate.py --case 1x1024 --new 32 --paths "softpick fast"   # a quick look
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import time
from collections import Counter
from pathlib import Path

import torch

import softpick  # noqa: F401  (registers softpick_transformer)
from softpick.models.fast_generate import fast_generate

ROOT = Path(__file__).resolve().parent.parent
KV_BUDGET_GIB = 40.0
"""Skip kernel-table (batch, context) pairs whose K and V would exceed this."""

PATHS = {
    "softpick fast": "softpick",
    "softpick fast (combo kernels)": "softpick",
    "softpick fast (no compile)": "softpick",
    "softpick generate (static cache)": "softpick",
    "softpick generate (HF static loop)": "softpick",
    "HF Llama generate (static cache)": "llama",
    "softpick generate (eager)": "softpick",
    "HF Llama generate (eager)": "llama",
}
"""Path name -> the model it runs."""

DEFAULT_PATHS = ("softpick fast", "softpick generate (static cache)", "softpick generate (HF static loop)",
                 "HF Llama generate (static cache)")

ONLY_FIRST_CASE = ("softpick generate (static cache)", "softpick generate (HF static loop)",
                   "softpick fast (no compile)", "softpick fast (combo kernels)")
"""Paths run on the first case only unless --all-cases (each compile per shape costs device time)."""


def config_path(name: str | None, default: Path) -> Path:
    return default if name is None else ROOT / "configs" / f"softpick_transformer_{name}.json"


def build_model(kind: str, config_file: Path, device: str, dtype: torch.dtype) -> torch.nn.Module:
    from transformers import AutoConfig, AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

    fields = json.loads(config_file.read_text())
    fields.pop("model_type")
    torch.manual_seed(0)
    if kind == "softpick":
        config = AutoConfig.for_model("softpick_transformer", **{**fields, "attn_type": "softpick", "attn_impl": None})
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    else:
        config = LlamaConfig(**{k: v for k, v in fields.items() if k not in ("attn_type", "attn_impl", "softpick_eps")})
        config._attn_implementation = "sdpa"
        model = LlamaForCausalLM(config).to(dtype)
    return model.to(device).eval()


def generate_call(path: str, model, ids: torch.Tensor, new: int):
    """A function n <= new -> the generated ids [B, T + n] of ``path`` (greedy, exactly n new tokens)."""
    if path.startswith("softpick fast"):
        from softpick.models import fast_generate as fast

        compiled = path != "softpick fast (no compile)"
        options = dict(fast.COMPILE_OPTIONS)
        if "combo" in path:
            options["options"] = {**options["options"], "combo_kernels": True}

        def call(n):
            default, fast.COMPILE_OPTIONS = fast.COMPILE_OPTIONS, options
            try:
                return fast_generate(model, ids, max_new_tokens=n, eos_token_id=None, compile=compiled)
            finally:
                fast.COMPILE_OPTIONS = default
        return call
    mask = torch.ones_like(ids)
    if path == "softpick generate (static cache)":
        from softpick.models import fast_generate as fast

        def routed(n):  # the compiled step for every n (the profiled calls are shorter than the threshold)
            default, fast.COMPILE_MIN_NEW_TOKENS = fast.COMPILE_MIN_NEW_TOKENS, 1
            try:
                return model.generate(ids, attention_mask=mask, max_new_tokens=n, do_sample=False,
                                      eos_token_id=None, pad_token_id=0, cache_implementation="static")
            finally:
                fast.COMPILE_MIN_NEW_TOKENS = default
        return routed
    if "static" in path:
        from transformers import StaticCache

        from softpick.models import CACHE_FIELD

        cache = StaticCache(config=model.config, max_cache_len=ids.shape[1] + new)

        def call(n):
            cache.reset()
            return model.generate(ids, attention_mask=mask, max_new_tokens=n, min_new_tokens=n, do_sample=False,
                                  pad_token_id=0, **{CACHE_FIELD: cache})
        return call
    return lambda n: model.generate(ids, attention_mask=mask, max_new_tokens=n, min_new_tokens=n, do_sample=False,
                                    pad_token_id=0)


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def wall_seconds(fn) -> float:
    sync()
    start = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - start


def device_events(fn) -> list[tuple[str, float]] | None:
    """(name, us) of every kernel / memcpy / memset fn() ran on the GPU, from torch.profiler; None without CUDA."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    if not torch.cuda.is_available():
        return None
    sync()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        sync()
    return [(e.name, e.time_range.elapsed_us()) for e in prof.events() if e.device_type == DeviceType.CUDA]


def step_bytes(model, batch: int, context: int, new: int) -> int:
    """Bytes one decoding step must read: every parameter but the input embedding table (a few rows of it
    are read), plus the valid K and V of every layer at the call's mean context."""
    embed = model.get_input_embeddings().weight
    weights = sum(p.numel() * p.element_size() for p in model.parameters() if p is not embed)
    config = model.config
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    kv_per_token = 2 * config.num_hidden_layers * config.num_key_value_heads * head_dim * embed.element_size()
    return weights + batch * (context + new // 2) * kv_per_token


@torch.no_grad()
def measure(path: str, model, batch: int, context: int, new: int, vocab: int, profiled: int, top: int) -> dict:
    ids = torch.randint(3, vocab, (batch, context), device=model.device)
    gen = generate_call(path, model, ids, new)
    profiled = min(new, profiled)
    start = time.perf_counter()
    gen(new)  # warm-up: compiles, autotunes, captures
    first_s = time.perf_counter() - start
    gen(profiled), gen(1)
    wall_new, wall_one = wall_seconds(lambda: gen(new)), wall_seconds(lambda: gen(1))
    events_new, events_one = device_events(lambda: gen(profiled)), device_events(lambda: gen(1))
    step = (wall_new - wall_one) / (new - 1)
    result = {"new_tok_s": batch * new / wall_new, "decode_tok_s": batch / step, "ms_per_step": step * 1e3,
              "first_call_s": first_s, "prefill_plus_one_s": wall_one,
              "gb_s": step_bytes(model, batch, context, new) / step / 1e9}
    if events_new is not None and events_one is not None:
        gpu_step = (sum(us for _, us in events_new) - sum(us for _, us in events_one)) / (profiled - 1) / 1e6
        result.update(gpu_ms_per_step=gpu_step * 1e3, host_ms_per_step=(step - gpu_step) * 1e3,
                      kernels_per_step=(len(events_new) - len(events_one)) / (profiled - 1))
        if top:
            by_name: Counter = Counter()
            for events, sign in ((events_new, 1), (events_one, -1)):
                for name, us in events:
                    by_name[name] += sign * us / (profiled - 1)
            result["top_kernels"] = [(name[:100], us) for name, us in by_name.most_common(top)]
    return result


def copy_bandwidth() -> float:
    """GB/s of a device-to-device copy (bytes read + written), 2 GiB."""
    from triton.testing import do_bench

    src = torch.empty(2 << 30, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    seconds = do_bench(lambda: dst.copy_(src)) / 1e3
    del src, dst
    torch.cuda.empty_cache()
    return 2 * (2 << 30) / seconds / 1e9


@torch.no_grad()
def kernel_bandwidth(contexts: list[int], batches: list[int], heads: int, head_dim: int, copy_gbs: float) -> list[dict]:
    """K+V read bandwidth of the decode kernel (plain, and reading kv_len from the device) and of SDPA."""
    from triton.testing import do_bench

    from softpick.ops.attention.triton.kv_cache import decode_attention

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


def parse_case(text: str) -> tuple[int, int, str | None]:
    """"32x1024" -> (32, 1024, None); "1x1024@1B" -> (1, 1024, "1B")."""
    shape, _, config = text.partition("@")
    batch, context = (int(x) for x in shape.lower().split("x"))
    return batch, context, config or None


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", type=Path, default=ROOT / "configs" / "softpick_transformer_340M.json")
    p.add_argument("--case", nargs="+", default=["1x1024", "32x1024", "32x8192", "1x1024@1B"],
                   help="BATCHxPROMPT_TOKENS[@CONFIG], CONFIG naming configs/softpick_transformer_CONFIG.json")
    p.add_argument("--new", type=int, default=128, help="new tokens per call")
    p.add_argument("--profiled-new", type=int, default=17,
                   help="new tokens of the profiled calls that give the GPU time per step (fewer events to parse)")
    p.add_argument("--paths", default=None, help=f"comma-separated subset of {list(PATHS)}; default {DEFAULT_PATHS}")
    p.add_argument("--all-cases", action="store_true", help=f"also run {ONLY_FIRST_CASE} beyond the first case")
    p.add_argument("--top-kernels", type=int, default=0, help="print the N largest kernels per path and case")
    p.add_argument("--kernel", action="store_true", help="also the decode attention kernel's bandwidth table")
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
    paths = list(DEFAULT_PATHS) if args.paths is None else [s.strip() for s in args.paths.split(",")]
    unknown = [s for s in paths if s not in PATHS]
    if unknown:
        raise SystemExit(f"unknown path(s) {unknown}; choose from {list(PATHS)}")
    cases = [parse_case(c) for c in args.case]
    dtype = torch.bfloat16 if args.device == "cuda" else torch.float32
    copy_gbs = copy_bandwidth() if args.device == "cuda" else None
    print(f"copy bandwidth: {_fmt(copy_gbs, 0)} GB/s (read + write)\n")
    print(f"{args.new} new tokens per call (greedy); host ms/step = ms/step - GPU ms/step; GB/s = bytes a step "
          "reads / ms/step\n")
    print("| path | config | batch | prompt | new tok/s | decode tok/s | ms/step | GPU ms/step | host ms/step | "
          "kernels/step | GB/s | of copy | first call s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    rows, models = [], {}
    for index, (batch, context, config_name) in enumerate(cases):
        config_file = config_path(config_name, args.config)
        vocab = json.loads(config_file.read_text())["vocab_size"]
        for path in paths:
            if index > 0 and path in ONLY_FIRST_CASE and not args.all_cases:
                continue
            key = (PATHS[path], config_file)
            if key not in models:
                for old in list(models):
                    if old[1] != config_file:
                        del models[old]  # one config's models on the GPU at a time
                torch.cuda.empty_cache()
                models[key] = build_model(PATHS[path], config_file, args.device, dtype)
            model = models[key]
            label = config_file.stem.removeprefix("softpick_transformer_")
            try:
                r = measure(path, model, batch, context, args.new, vocab, args.profiled_new, args.top_kernels)
            except Exception as error:  # one failing path must not cost the rest of the run
                print(f"| {path} | {label} | {batch} | {context} | failed: {type(error).__name__}: "
                      f"{str(error)[:300]} |||||||||", flush=True)
                rows.append({"path": path, "config": label, "batch": batch, "context": context,
                             "error": repr(error)[:1000]})
                continue
            finally:
                model.__dict__.pop("_softpick_decode_session", None)  # free the fast loop's cache
                torch.cuda.empty_cache()
            fraction = None if copy_gbs is None else r["gb_s"] / copy_gbs
            rows.append({"path": path, "config": label, "batch": batch, "context": context, "new": args.new,
                         "copy_gb_s": copy_gbs, **r})
            print(f"| {path} | {label} | {batch} | {context} | {r['new_tok_s']:,.0f} | {r['decode_tok_s']:,.0f} | "
                  f"{r['ms_per_step']:.3f} | "
                  f"{_fmt(r.get('gpu_ms_per_step'), 3)} | {_fmt(r.get('host_ms_per_step'), 3)} | "
                  f"{_fmt(r.get('kernels_per_step'), 0)} | {r['gb_s']:,.0f} | {_fmt(fraction)} | "
                  f"{r['first_call_s']:.1f} |", flush=True)
            for name, us in r.get("top_kernels", []):
                print(f"|   {us:9.1f} us/step | {name} |", flush=True)
    models.clear()
    torch.cuda.empty_cache()
    kernel_rows = []
    if args.kernel and args.device == "cuda":
        config = json.loads(args.config.read_text())
        heads = config.get("num_key_value_heads") or config["num_attention_heads"]
        head_dim = config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]
        kernel_rows = kernel_bandwidth(args.kernel_context, args.kernel_batch, heads, head_dim, copy_gbs)
        print("\n| attention | batch | context | us | K+V GB/s | copy GB/s | fraction |")
        print("|---|---|---|---|---|---|---|")
        for r in kernel_rows:
            print(f"| {r['variant']} | {r['batch']} | {r['context']} | {r['us']:.1f} | {r['kv_gb_s']:.0f} | "
                  f"{r['copy_gb_s']:.0f} | {r['fraction_of_copy']:.2f} |", flush=True)
    if args.json:
        args.json.write_text(json.dumps({"commit": commit, "device": device_name, "copy_gb_s": copy_gbs,
                                         "models": rows, "kernel": kernel_rows}, indent=1))


if __name__ == "__main__":
    main()
