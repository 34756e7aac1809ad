"""How close softpick's training gradient is to the exact one, and where it is not: model level.

Usage (from the repository root):

    python benchmarks/grad_fidelity.py                 # CPU: the 4 x 128 toy of cpu_variants, every variant
    python benchmarks/grad_fidelity.py --gpu           # GPU: the 340M config at 2 x 2048, < 3 minutes on an H100
    python benchmarks/grad_fidelity.py --variants softpick,softmax --steps 200 --json out.json

For each variant a model is built (seed 0, fp32 master weights) and trained ``--steps`` steps on the
embedded corpus the way the trainer runs (bf16 autocast, AdamW); at step 0 (init) and after the
steps, on one held-out batch (validation documents, packed windows), the gradient of the loss is
taken four ways from the same weights:

- ``bf16``: under bf16 autocast with the attention impl the trainer would use (``--impl``; on the CPU
  the naive op, which reads the bf16 q, k, v, computes in fp32 and returns a bf16 o: it stands for the
  bf16 kernels);
- ``bf16, fp32 attn``: the same, but q, k, v go to the naive op in fp32, outside autocast
  (exact fp32 attention inside a bf16 model);
- ``fp32``: no autocast, naive attention (TF32 off);
- ``fp64``: a float64 copy, naive attention: the reference.

Table 1: per parameter family (q_proj, k_proj, ... summed over layers), cosine similarity and norm
ratio |g| / |g_ref| of bf16 vs fp32, bf16 vs fp64, fp32 vs fp64 and bf16-with-fp32-attention vs fp64.
Tables 2-4 (where it lives), from the gradient w.r.t. each layer's attention queries dq (row i of dq
depends only on row i of the scores): the relative error ||dq - dq_ref|| / ||dq_ref|| of bf16 vs
fp64 and its share of the total error, by query position, by the softpick denominator of the row
den = sum_j |e^{s_j} - 1| (fp64 scores, visible keys; the same quantity for softmax rows, as a
control), and by layer; with the share of each bin's visible scores whose sign differs between the
bf16 and the fp64 computation ("on the other side of the relu's kink") and |s| of the score nearest 0.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import functools
import json
import math
import time
from collections import defaultdict
from pathlib import Path

import torch

from softpick.models import modeling_softpick
from softpick.models.configuration_softpick import SoftpickConfig
from softpick.models.modeling_softpick import SoftpickAttention, SoftpickForCausalLM

ROOT = Path(__file__).resolve().parent.parent
VARIANTS = {
    "softpick": {"attn_type": "softpick"},
    "softmax": {"attn_type": "softmax"},
    "softmax_plus_one": {"attn_type": "softmax_plus_one"},
    "sink": {"attn_type": "sink"},
    "softpick_ssmax": {"attn_type": "softpick", "ssmax": True},
    "softmax_ssmax": {"attn_type": "softmax", "ssmax": True},
    "softmax_gate": {"attn_type": "softmax", "output_gate": "elementwise"},
    "softpick_gate": {"attn_type": "softpick", "output_gate": "headwise"},
    "sigmoid": {"attn_type": "sigmoid"},
}
TOY = dict(model_type="softpick_transformer", vocab_size=2048, hidden_size=128, intermediate_size=384,
           num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=512,
           initializer_range=0.02, bos_token_id=1, eos_token_id=2, pad_token_id=3)
FAMILIES = ("q_proj", "k_proj", "v_proj", "o_proj", "g_proj", "gate_proj", "up_proj", "down_proj", "sinks",
            "ssmax_scale", "input_layernorm", "post_attention_layernorm", "embed_tokens", "norm", "lm_head")
POSITION_EDGES = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096)
DEN_EDGES = (1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0, 1e3)


def family(name: str) -> str:
    parts = name.split(".")
    for part in reversed(parts[:-1]):
        if part in FAMILIES:
            return part
    return parts[-2] if parts[-1] in ("weight", "bias") else parts[-1]


# -- attention taps ---------------------------------------------------------------------------------
class Tap:
    """Wraps the model's attention ops: records each layer's q, k (and the gradient reaching q), and
    optionally runs the attention in fp32 outside autocast (exact fp32 attention)."""

    def __init__(self, layers: int):
        self.layers, self.fp32 = layers, False
        self.q: list[torch.Tensor] = []
        self.k: list[torch.Tensor] = []
        self.dq: dict[int, torch.Tensor] = {}
        self.scale: float | None = None

    def reset(self, fp32: bool = False) -> None:
        self.fp32, self.q, self.k, self.dq = fp32, [], [], {}

    def wrap(self, op):
        def tapped(q, k, v, spec, **kwargs):
            if len(self.q) < self.layers:  # the first forward; recomputation (checkpointing) is not recorded
                index = len(self.q)
                self.q.append(q.detach())
                self.k.append(k.detach())
                self.scale = spec.scale
                if q.requires_grad:
                    q.register_hook(lambda g, i=index: self.dq.__setitem__(i, g.detach()))
            return (exact_fp32(op) if self.fp32 else op)(q, k, v, spec, **kwargs)

        return tapped


def exact_fp32(op):
    """The attention op run exactly in fp32: q, k, v (and a sink) upcast, the naive op, autocast off;
    o comes back in q's dtype. Inside a bf16-autocast model this is "exact fp32 attention"."""

    def fp32(q, k, v, spec, **kwargs):
        dtype = q.dtype
        with torch.autocast(q.device.type, enabled=False):
            kwargs = {**kwargs, "impl": "naive"}
            if kwargs.get("sink") is not None:
                kwargs["sink"] = kwargs["sink"].float()
            return op(q.float(), k.float(), v.float(), spec, **kwargs).to(dtype)

    return fp32


@contextlib.contextmanager
def _attend_through(wrapper):
    """Every model of :mod:`softpick.models.modeling_softpick` calls ``wrapper(attend)`` instead of
    ``attend(q, k, v, spec, **kwargs)`` meanwhile."""
    saved = modeling_softpick.attend
    modeling_softpick.attend = wrapper(saved)
    try:
        yield
    finally:
        modeling_softpick.attend = saved


def fp32_attention():
    """Every model built from :mod:`softpick.models.modeling_softpick` attends in exact fp32 meanwhile."""
    return _attend_through(exact_fp32)


def tapped_ops(tap: Tap):
    return _attend_through(tap.wrap)


def set_impl(model: torch.nn.Module, impl: str | None) -> None:
    for module in model.modules():
        if isinstance(module, SoftpickAttention):
            module.attn_impl = impl


# -- data ------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=None)
def encoded(split: str) -> tuple[torch.Tensor, ...]:
    """[BOS] ids [EOS] of every document of an embedded-corpus split (tokenized once per process)."""
    from softpick.corpus import embedded_documents, embedded_tokenizer
    from softpick.corpus.tokenized import encode_documents

    return tuple(torch.as_tensor(ids) for ids in encode_documents(embedded_tokenizer(), embedded_documents(split)))


def windows(split: str, batch: int, seq: int, seed: int):
    """Endless batches [batch, seq] of the embedded corpus, documents packed as the trainer packs them."""
    docs = encoded(split)
    g = torch.Generator().manual_seed(seed)
    while True:
        order = torch.randperm(len(docs), generator=g).tolist()
        stream = torch.cat([docs[i] for i in order])
        usable = stream.numel() // (batch * seq) * batch * seq
        for chunk in stream[:usable].view(-1, batch, seq):
            yield chunk.long()


# -- one measurement --------------------------------------------------------------------------------
def gradients(model, ids, *, tap: Tap, autocast: bool, impl, fp32_attention: bool = False, checkpoint: bool = False):
    """({param name: grad as float64}, tap's q, k, dq per layer) of the loss on ``ids``."""
    model.zero_grad(set_to_none=True)
    set_impl(model, impl)
    tap.reset(fp32=fp32_attention)
    if checkpoint:
        model.gradient_checkpointing_enable({"use_reentrant": False})
    ctx = torch.autocast(ids.device.type, dtype=torch.bfloat16) if autocast else contextlib.nullcontext()
    with ctx:
        loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    if checkpoint:
        model.gradient_checkpointing_disable()
    grads = {n: p.grad.detach().double() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return grads, list(tap.q), list(tap.k), [tap.dq[i] for i in range(len(tap.q))], loss.item()


def compare(test: dict, ref: dict) -> dict[str, tuple[float, float]]:
    """{family: (cosine, |test| / |ref|)} over the parameters of each family."""
    dots, nt, nr = defaultdict(float), defaultdict(float), defaultdict(float)
    for name, r in ref.items():
        f, t = family(name), test[name].to(r.device)
        dots[f] += float((t * r).sum())
        nt[f] += float((t * t).sum())
        nr[f] += float((r * r).sum())
    return {f: (dots[f] / math.sqrt(nt[f] * nr[f]) if nt[f] * nr[f] > 0 else float("nan"),
                math.sqrt(nt[f] / nr[f]) if nr[f] > 0 else float("nan")) for f in nr}


def bin_index(values: torch.Tensor, edges) -> torch.Tensor:
    return torch.bucketize(values, torch.tensor(edges, dtype=values.dtype, device=values.device), right=True)


def where_it_lives(q_t, k_t, dq_t, q_r, k_r, dq_r, scale: float) -> dict:
    """Error of dq (test vs reference) by query position, by denominator bin and by layer.

    Per bin: rows, relative error ||dq - dq_ref|| / ||dq_ref||, share of all error energy, share of
    visible scores whose sign differs between test and reference, median |s| of each row's score nearest 0.
    """
    acc = {"position": defaultdict(lambda: [0, 0.0, 0.0, 0, 0, []]), "den": defaultdict(lambda: [0, 0.0, 0.0, 0, 0, []]),
           "layer": defaultdict(lambda: [0, 0.0, 0.0, 0, 0, []])}
    for layer, (qt, kt, gt, qr, kr, gr) in enumerate(zip(q_t, k_t, dq_t, q_r, k_r, dq_r)):
        B, T, HQ, D = qr.shape
        G = HQ // kr.shape[2]
        causal = torch.ones(T, T, dtype=torch.bool, device=qr.device).tril()
        for h in range(HQ):  # one head at a time: [B, T, T] in fp64
            s_r = torch.einsum("bik,bjk->bij", qr[:, :, h].double(), kr[:, :, h // G].double()) * scale
            s_t = torch.einsum("bik,bjk->bij", qt[:, :, h].float(), kt[:, :, h // G].float()) * scale
            den = ((s_r.exp() - 1).abs() * causal).sum(-1)  # [B, T]
            flips = (((s_t > 0) != (s_r > 0)) & causal).sum(-1)  # [B, T]
            nearest = s_r.abs().masked_fill(~causal, math.inf).amin(-1)  # [B, T]
            err = ((gt[:, :, h].double() - gr[:, :, h].double()) ** 2).sum(-1)  # [B, T]
            ref = (gr[:, :, h].double() ** 2).sum(-1)
            visible = causal.sum(-1).expand(B, T)
            pos = torch.arange(T, device=qr.device).expand(B, T)
            keys = {"position": bin_index(pos.double(), POSITION_EDGES), "den": bin_index(den, DEN_EDGES),
                    "layer": torch.full_like(pos, layer)}
            for kind, index in keys.items():
                for b in index.unique().tolist():
                    sel = index == b
                    a = acc[kind][b]
                    a[0] += int(sel.sum())
                    a[1] += float(err[sel].sum())
                    a[2] += float(ref[sel].sum())
                    a[3] += int(flips[sel].sum())
                    a[4] += int(visible[sel].sum())
                    a[5].append(nearest[sel].float().cpu())
    total = sum(a[1] for a in acc["layer"].values()) or 1.0
    out = {}
    for kind, bins in acc.items():
        rows = []
        for b in sorted(bins):
            n, e, r, f, v, near = bins[b]
            rows.append({"bin": label(kind, b), "rows": n, "rel_err": math.sqrt(e / r) if r > 0 else float("nan"),
                         "err_share": e / total, "sign_flips": f / v if v else 0.0,
                         "median_nearest_abs_s": float(torch.cat(near).median())})
        out[kind] = rows
    return out


def label(kind: str, b: int) -> str:
    if kind == "layer":
        return str(b)
    edges = POSITION_EDGES if kind == "position" else DEN_EDGES
    fmt = (lambda x: f"{int(x)}") if kind == "position" else (lambda x: f"{x:g}")
    lo = "0" if b == 0 else fmt(edges[b - 1])
    hi = "inf" if b == len(edges) else fmt(edges[b])
    return f"[{lo}, {hi})"


def measure(model, ids, tap: Tap, impl, checkpoint: bool, where: bool = True) -> dict:
    """Table 1 and (``where``) tables 2-4 for the current weights."""
    t0 = time.perf_counter()
    g16, q16, k16, dq16, loss16 = gradients(model, ids, tap=tap, autocast=True, impl=impl, checkpoint=checkpoint)
    g16a, *_ = gradients(model, ids, tap=tap, autocast=True, impl="naive", fp32_attention=True, checkpoint=checkpoint)
    g32, *_ = gradients(model, ids, tap=tap, autocast=False, impl="naive", checkpoint=checkpoint)
    ref = copy.deepcopy(model).double()
    g64, q64, k64, dq64, loss64 = gradients(ref, ids, tap=tap, autocast=False, impl="naive", checkpoint=checkpoint)
    del ref
    return {
        "loss_bf16": loss16, "loss_fp64": loss64,
        "families": {"bf16 vs fp32": compare(g16, g32), "bf16 vs fp64": compare(g16, g64),
                     "fp32 vs fp64": compare(g32, g64), "bf16+fp32 attn vs fp64": compare(g16a, g64)},
        "where": where_it_lives(q16, k16, dq16, q64, k64, dq64, tap.scale) if where else None,
        "seconds": time.perf_counter() - t0,
    }


def run_variant(name: str, base: dict, args, device) -> dict:
    config = SoftpickConfig(**{**base, **VARIANTS[name], "attn_impl": None})
    torch.manual_seed(args.seed)
    model = SoftpickForCausalLM(config).to(device)
    tap = Tap(config.num_hidden_layers)
    impl = None if args.impl == "auto" else args.impl
    heldout = next(windows("validation", args.batch, args.seq, seed=1)).to(device)
    train = windows("train", args.batch, args.seq, seed=args.seed)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.95), eps=1e-15, weight_decay=0.1)
    checkpoint = device.type == "cuda"
    where = name in args.where.split(",")
    results, losses, norms = {}, [], []
    with tapped_ops(tap):
        results[0] = measure(model, heldout, tap, impl, checkpoint, where)
        set_impl(model, impl)
        t0 = time.perf_counter()
        for step in range(1, args.steps + 1):
            warm = min(1.0, step / max(1, args.steps // 10))
            for group in opt.param_groups:
                group["lr"] = args.lr * warm
            tap.reset()
            ids = next(train).to(device)
            with torch.autocast(device.type, dtype=torch.bfloat16):
                loss = model(input_ids=ids, labels=ids).loss
            loss.backward()
            norms.append(float(torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)))
            losses.append(float(loss))
            opt.step()
            opt.zero_grad(set_to_none=True)
        train_s = time.perf_counter() - t0
        if args.steps:
            results[args.steps] = measure(model, heldout, tap, impl, checkpoint, where)
    return {"config": VARIANTS[name], "measurements": results, "train_loss": losses, "grad_norm": norms,
            "train_s": train_s}


# -- printing --------------------------------------------------------------------------------------
def print_where(name: str, step: int, where: dict) -> None:
    for kind, title in (("position", "query position"), ("den", "den = sum |e^s - 1|"), ("layer", "layer")):
        print(f"\n{name}, step {step}: dq bf16 vs fp64 by {title}")
        print(f"  {'bin':<14} {'rows':>8} {'rel err':>9} {'err share':>9} {'sign flips':>10} {'med min|s|':>10}")
        for r in where[kind]:
            print(f"  {r['bin']:<14} {r['rows']:>8} {r['rel_err']:>9.3g} {r['err_share']:>9.1%} "
                  f"{r['sign_flips']:>10.2e} {r['median_nearest_abs_s']:>10.2e}")


def print_table(all_results: dict, families=("q_proj", "k_proj", "v_proj", "o_proj", "down_proj", "embed_tokens")) -> None:
    print("\nTable 1: gradient cosine similarity (norm ratio |g| / |g_ref|) per parameter family")
    comparisons = ("bf16 vs fp32", "bf16 vs fp64", "fp32 vs fp64", "bf16+fp32 attn vs fp64")
    print(f"| variant | step | comparison | " + " | ".join(families) + " |")
    print("|---|---|---|" + "---|" * len(families))
    for name, res in all_results.items():
        for step, m in res["measurements"].items():
            for comp in comparisons:
                cells = []
                for f in families:
                    c, r = m["families"][comp].get(f, (float("nan"), float("nan")))
                    cells.append(f"{c:.4f} ({r:.2f}x)")
                print(f"| {name} | {step} | {comp} | " + " | ".join(cells) + " |")


def plot_where(results: dict, path: str) -> None:
    """Relative dq error (bf16 vs fp64) by query position, denominator and layer: one line per variant
    and measurement; the marker area shows each bin's share of the error."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kinds = (("position", "query position"), ("den", "den = sum_j |e^s_j - 1|"), ("layer", "layer"))
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    for name, res in results.items():
        for step, m in res["measurements"].items():
            if not m["where"]:
                continue
            for ax, (kind, title) in zip(axes, kinds):
                rows = [r for r in m["where"][kind] if math.isfinite(r["rel_err"])]
                line, = ax.plot([r["bin"] for r in rows], [r["rel_err"] for r in rows], label=f"{name}, step {step}",
                                ls="-" if int(step) == 0 else "--")
                ax.scatter([r["bin"] for r in rows], [r["rel_err"] for r in rows], s=[4 + 200 * r["err_share"] for r in rows],
                           color=line.get_color(), alpha=0.6)
    for ax, (kind, title) in zip(axes, kinds):
        ax.set(yscale="log", xlabel=title, ylabel="||dq_bf16 - dq_fp64|| / ||dq_fp64||")
        ax.tick_params(axis="x", labelrotation=45, labelsize=7)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle("Where bf16 and fp64 gradients disagree (marker area: share of the error)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--gpu", action="store_true", help="the 340M config at batch 2 x 2048 on CUDA (preset)")
    p.add_argument("--config", default=None, help="model config json (default: the 4 x 128 toy; 340M with --gpu)")
    p.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated, of {', '.join(VARIANTS)}")
    p.add_argument("--batch", type=int, default=None, help="rows per batch (default 8; 2 with --gpu)")
    p.add_argument("--seq", type=int, default=None, help="tokens per row (default 128; 2048 with --gpu)")
    p.add_argument("--steps", type=int, default=None, help="training steps before the second measurement (default 100; 20 with --gpu)")
    p.add_argument("--lr", type=float, default=None, help="peak AdamW lr (default 3e-3; 3e-4 with --gpu), 10%% warmup")
    p.add_argument("--impl", default="auto", help="attention impl of the bf16 pass: auto (the trainer's), naive, triton, cute")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a model config field (JSON value), e.g. --set num_hidden_layers=2 (repeatable)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (torch.set_num_threads)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--where", default="softpick,softmax", help="variants whose tables 2-4 are computed and printed")
    p.add_argument("--json", default=None, help="write every number here")
    p.add_argument("--plot", default=None, help="write the where-figure (PNG) here")
    p.add_argument("--replot", default=None, help="only draw --plot from a --json file written earlier")
    args = p.parse_args()
    if args.replot:
        plot_where(json.loads(Path(args.replot).read_text())["results"], args.plot)
        return
    device = torch.device("cuda" if args.gpu else "cpu")
    if args.gpu and not torch.cuda.is_available():
        raise SystemExit("--gpu needs CUDA.")
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    gpu = args.gpu
    args.batch = args.batch or (2 if gpu else 8)
    args.seq = args.seq or (2048 if gpu else 128)
    args.steps = 20 if gpu and args.steps is None else (100 if args.steps is None else args.steps)
    args.lr = args.lr or (3e-4 if gpu else 3e-3)
    config_path = args.config or (str(ROOT / "configs/softpick_transformer_340M.json") if gpu else None)
    base = dict(TOY) if config_path is None else json.loads(Path(config_path).read_text())
    for key in ("attn_type", "ssmax", "output_gate", "attn_impl"):
        base.pop(key, None)
    for assignment in args.set:
        key, _, value = assignment.partition("=")
        base[key] = json.loads(value)
    if args.threads:
        torch.set_num_threads(args.threads)
    header = {"device": torch.cuda.get_device_name() if gpu else "cpu", "config": config_path or "toy 4 x 128",
              "overrides": args.set,
              "batch": args.batch, "seq": args.seq, "steps": args.steps, "lr": args.lr, "impl": args.impl,
              "torch": torch.__version__}
    print(header, flush=True)
    start = time.perf_counter()
    results = {}
    for name in args.variants.split(","):
        if name not in VARIANTS:
            raise SystemExit(f"unknown variant {name!r}; choose from {', '.join(VARIANTS)}.")
        results[name] = run_variant(name, base, args, device)
        m = results[name]["measurements"]
        print(f"[{name}] done in {time.perf_counter() - start:.0f} s; q_proj cosine bf16 vs fp64: "
              + ", ".join(f"step {s} {v['families']['bf16 vs fp64']['q_proj'][0]:.4f}" for s, v in m.items()), flush=True)
    for name in args.where.split(","):
        if name in results:
            for step, m in results[name]["measurements"].items():
                print_where(name, step, m["where"])
    if args.json:
        Path(args.json).write_text(json.dumps({"header": header, "results": results}, indent=1))
    if args.plot:
        plot_where(results, args.plot)
    print(f"\ntotal {time.perf_counter() - start:.0f} s")
    print_table(results)


if __name__ == "__main__":
    main()
