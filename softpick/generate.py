"""``softpick generate``: text from a saved model, streamed token by token, with the KV cache.

Usage::

    softpick generate outputs/demo-softpick/hf --prompt "Once upon a time"            # greedy, streamed
    softpick generate MODEL_DIR --prompt "A" --prompt "Another" --temperature 0.8 --top-p 0.9 --seed 1

One prompt streams its continuation to stdout as it is decoded; several prompts run as one batch
(left padding) and each continuation is printed when the batch is done. Any causal LM folder that
``from_pretrained`` loads works (softpick models once ``softpick`` is imported, which this does).
Softpick models decode with :func:`softpick.models.fast_generate.fast_generate` (a preallocated KV
cache; on CUDA the decoding step is compiled, which the first call of a batch size and length waits for
(stderr says so), and replayed as CUDA graphs; ``--no-compile`` and ``--no-graphs`` switch either off);
other models with ``model.generate``. The last line (to stderr) gives the tokens/s of the call.
"""

from __future__ import annotations

import argparse
import sys
import time

DTYPES = ("auto", "float32", "bfloat16", "float16")
"""``--dtype`` choices (torch is imported only to run, so ``-h`` answers at once)."""


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="softpick generate", description=__doc__.split("\n\n")[0])
    p.add_argument("model_dir", help="a save_pretrained folder (config.json, weights, tokenizer)")
    p.add_argument("--prompt", action="append", required=True, help="prompt text; repeat for a batch")
    p.add_argument("--tokenizer", default=None, help="tokenizer folder (default: MODEL_DIR)")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default); > 0 samples")
    p.add_argument("--top-k", type=int, default=None)
    p.add_argument("--top-p", type=float, default=None)
    p.add_argument("--seed", type=int, default=0, help="seed of the sampling")
    p.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    p.add_argument("--dtype", choices=DTYPES, default="auto",
                   help="auto: bfloat16 on CUDA, float32 on CPU")
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads for torch (torch.set_num_threads); default: torch's choice")
    p.add_argument("--no-graphs", action="store_true",
                   help="decode without CUDA graphs (same tokens, more host time per token)")
    p.add_argument("--no-compile", action="store_true",
                   help="decode with the eager step (no torch.compile wait; more kernels per token)")
    return p


def generate(args: argparse.Namespace) -> list[str]:
    """The continuations of ``args.prompt`` (prompt text not included)."""
    if args.max_new_tokens < 1:
        raise ValueError(f"--max-new-tokens must be at least 1, got {args.max_new_tokens}.")
    if not 0 <= args.temperature < float("inf"):  # nan too
        raise ValueError(f"--temperature must be >= 0, got {args.temperature}.")
    if args.top_p is not None and not 0 < args.top_p <= 1:
        raise ValueError(f"--top-p must be in (0, 1] (a probability mass), got {args.top_p}.")
    if args.top_k is not None and args.top_k < 1:
        raise ValueError(f"--top-k must be at least 1, got {args.top_k}.")
    if args.threads is not None and args.threads < 1:
        raise ValueError(f"--threads must be at least 1, got {args.threads}.")
    import torch

    import softpick  # noqa: F401  (registers softpick_transformer with the transformers Auto classes)
    from softpick.models.fast_generate import fast_generate, supports_fast_generate
    from softpick.models.loading import load_model_and_tokenizer

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if args.device is None:
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = (getattr(torch, args.dtype) if args.dtype != "auto"
             else torch.bfloat16 if str(args.device).startswith("cuda") else torch.float32)
    model, tokenizer = load_model_and_tokenizer(args.model_dir, args.tokenizer, args.device, dtype)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    inputs = tokenizer(args.prompt, return_tensors="pt", padding=True).to(args.device)
    sampling = args.temperature > 0
    options = dict(max_new_tokens=args.max_new_tokens, do_sample=sampling, pad_token_id=tokenizer.pad_token_id,
                   use_cache=True)
    if sampling:
        options.update(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p)
    streamer = None
    if len(args.prompt) == 1:
        from transformers import TextStreamer

        streamer = TextStreamer(tokenizer, skip_prompt=False, skip_special_tokens=True)
    torch.manual_seed(args.seed)
    start = time.perf_counter()
    with torch.no_grad():
        if supports_fast_generate(model):
            options.pop("use_cache")
            output = fast_generate(model, inputs.input_ids, inputs.attention_mask, streamer=streamer,
                                   graphs=False if args.no_graphs else None,
                                   compile=False if args.no_compile else None,
                                   notice=lambda line: print(f"[{line}]", file=sys.stderr, flush=True), **options)
        else:
            output = model.generate(**inputs, streamer=streamer, **options)
    seconds = time.perf_counter() - start
    new = output[:, inputs.input_ids.shape[1]:]
    texts = tokenizer.batch_decode(new, skip_special_tokens=True)
    if streamer is None:
        for prompt, text in zip(args.prompt, texts):
            print(prompt + text + "\n", flush=True)
    n_tokens = int((new != tokenizer.pad_token_id).sum()) if tokenizer.pad_token_id is not None else new.numel()
    print(f"[{n_tokens} new tokens in {seconds:.2f} s, {n_tokens / seconds:.1f} tokens/s, "
          f"{model.device}, {model.dtype}]", file=sys.stderr)
    return texts


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``softpick generate``."""
    args = parser().parse_args(argv)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # "Loading weights" would interleave with the streamed text
    try:
        generate(args)
    except (FileNotFoundError, ValueError) as error:
        print(f"softpick generate: {error}", file=sys.stderr)
        return 2
    except RuntimeError as error:  # torch.OutOfMemoryError too: the KV cache of --max-new-tokens does not fit
        if "allocate" not in str(error):
            raise
        print(f"softpick generate: --max-new-tokens {args.max_new_tokens} x {len(args.prompt)} prompt(s) needs more "
              f"memory than {args.device} has ({str(error).strip().splitlines()[0][:160]}); lower --max-new-tokens.",
              file=sys.stderr)
        return 2
    return 0
