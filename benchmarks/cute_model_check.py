"""The 340M model trained a few steps on the Hopper CuTe kernels against the Triton kernels (issue 18).

Usage (on an H100/H200 with ``softpick[hopper]``, from the repository root):

    python benchmarks/cute_model_check.py [--steps 4] [--attn-types softpick,softmax] [--json out.json]

For each attention type it builds the paper's 340M config (bf16 weights, the same seed), runs
``--steps`` AdamW steps (lr 3e-4, eps 1e-15) on the same random token batches, once with
``attn_impl="triton"`` and once with ``attn_impl="cute"``, and prints each step's loss and gradient
norm for both and their differences. bf16 noise: the two kernels round differently, so the losses
agree to a few 1e-3 and drift slowly with the steps; a broken kernel is off by far more (or NaN).
Exit status 1 when a loss differs by more than ``--tol`` (relative) or is not finite.
"""

from __future__ import annotations

import argparse
import json
import math
import sys

import torch

from softpick.models import SoftpickConfig, SoftpickForCausalLM

CONFIG = "configs/softpick_transformer_340M.json"


def run(attn_type: str, impl: str, steps: int, batch: int, seq: int) -> list[dict]:
    config = SoftpickConfig.from_json_file(CONFIG)
    config.attn_type, config.attn_impl = attn_type, impl
    torch.manual_seed(0)
    model = SoftpickForCausalLM(config).to(device="cuda", dtype=torch.bfloat16)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-4, eps=1e-15, weight_decay=0.0)
    gen = torch.Generator(device="cuda").manual_seed(1)
    rows = []
    for step in range(steps):
        ids = torch.randint(0, config.vocab_size, (batch, seq), device="cuda", generator=gen)
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        grads = [p.grad.float() for p in model.parameters() if p.grad is not None]
        norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
        attn = [p.grad.float() for n, p in model.named_parameters() if ".self_attn.q_proj" in n]
        attn_norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in attn]))
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        rows.append({"step": step, "loss": loss.item(), "grad_norm": norm.item(), "q_proj_grad_norm": attn_norm.item()})
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--seq-len", type=int, default=2048)
    parser.add_argument("--attn-types", default="softpick,softmax")
    parser.add_argument("--tol", type=float, default=2e-2, help="largest relative loss difference allowed")
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    out, ok = {}, True
    for attn_type in args.attn_types.split(","):
        res = {impl: run(attn_type, impl, args.steps, args.batch_size, args.seq_len) for impl in ("triton", "cute")}
        out[attn_type] = res
        for t, c in zip(res["triton"], res["cute"]):
            rel = abs(c["loss"] - t["loss"]) / abs(t["loss"])
            good = math.isfinite(c["loss"]) and rel <= args.tol
            ok &= good
            print(f"{'ok  ' if good else 'FAIL'} {attn_type:<9} step {t['step']}: loss triton {t['loss']:.5f} "
                  f"cute {c['loss']:.5f} (rel {rel:.1e}); grad norm (fp32) triton {t['grad_norm']:.4f} "
                  f"cute {c['grad_norm']:.4f}; q_proj grad norm triton {t['q_proj_grad_norm']:.4f} "
                  f"cute {c['q_proj_grad_norm']:.4f}", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
