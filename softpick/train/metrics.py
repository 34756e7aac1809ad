"""Training metrics: FLOPs and MFU, a tqdm bar, metrics.jsonl, TensorBoard, wandb; profiler hooks.

MFU = achieved model FLOP/s per device / peak dense bf16 FLOP/s of that device. Model FLOPs per token
(forward + backward = 3x forward, matmuls only): ``6 * N`` for the N non-embedding parameters (the LM
head included) plus causal attention ``6 * L * HQ * D * T`` (QK^T and PV, half the T x T square is
computed; torchtitan's ``12 * L * H * D * T`` counts the full square). With varlen packing attention
is ``6 * L * HQ * D * sum(len_i^2) / T`` per token. Activation recomputation is not counted (it is
overhead, not model work). The peak comes from ``--metrics.peak_flops`` or a table by GPU name;
without either (e.g. on CPU) MFU is not reported, and a value above 100% (a wrong peak) is reported
as missing with a warning rather than printed.
"""

from __future__ import annotations

import json
import logging
import math
import resource
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import torch
from torch import nn

from softpick.train.config import ConfigError, JobConfig, Metrics, Profiling

logger = logging.getLogger("softpick.train")

PEAK_BF16_FLOPS = {
    "H200": 989e12, "H100 NVL": 835e12, "H100 PCIe": 756e12, "H100": 989e12, "H800": 989e12,
    "H20": 148e12, "GH200": 989e12, "B200": 2250e12, "B100": 1750e12, "A100": 312e12, "A800": 312e12,
    "A6000": 155e12, "L40S": 362e12, "L40": 181e12, "L4": 121e12, "A10": 125e12, "RTX 4090": 165e12,
    "RTX 3090": 71e12,
}
"""Vendor dense (no sparsity) bf16 tensor-core peaks; the first name found in the device name wins."""


def peak_flops(device: torch.device, override: float | None) -> float | None:
    """Peak bf16 FLOP/s of one device: the override, the table entry for the GPU name, or None."""
    if override is not None:
        return override
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, value in PEAK_BF16_FLOPS.items():
        if key in name:
            return value
    logger.warning("no peak FLOP/s known for %r; give --metrics.peak_flops to report MFU.", name)
    return None


def model_flops_shape(model_config: Any) -> tuple[int, int, int]:
    """(layers, query heads, head dim) of an HF config."""
    heads = model_config.num_attention_heads
    head_dim = getattr(model_config, "head_dim", None) or model_config.hidden_size // heads
    return model_config.num_hidden_layers, heads, head_dim


def non_embedding_params(model: nn.Module) -> int:
    """Parameters that take part in matmuls: all but the input embedding (call before sharding)."""
    embed = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    skip = {id(p) for p in embed.parameters()} if embed is not None else set()
    total = 0
    for p in model.parameters():
        if id(p) not in skip:
            total += p.numel()
    return total


def flops_per_token(n_params: int, layers: int, heads: int, head_dim: int, attn_tokens: float) -> float:
    """Training FLOPs per token; ``attn_tokens`` = mean attended length x 2 (T for a causal row of T)."""
    return 6.0 * n_params + 6.0 * layers * heads * head_dim * attn_tokens


def attention_span(batch: dict[str, torch.Tensor]) -> float:
    """T for fixed rows, sum(len_i^2)/T for varlen rows: the attn_tokens of :func:`flops_per_token`."""
    T = batch["input_ids"].shape[-1]
    if "cu_seqlens" not in batch:
        return float(T)
    lengths = batch["cu_seqlens"].diff().double()
    return float((lengths**2).sum() / T)


def peak_memory_gib(device: torch.device) -> float:
    """Peak allocated device memory (CUDA) or peak resident host memory (CPU), GiB."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def finite_or_none(value: Any) -> Any:
    """``value``, or None when it is a NaN/Inf float (JSON has no NaN)."""
    return None if isinstance(value, float) and not math.isfinite(value) else value


DASHBOARD_TAGS = {
    "loss": "loss_metrics/global_avg_loss", "grad_norm": "grad_norm", "lr": "lr", "tps": "throughput(tps)",
    "tflops": "tflops", "mfu": "mfu(%)", "memory_gib": "memory/max_allocated(GiB)", "tokens": "tokens_seen",
    "skipped": "skipped_steps",
}
"""metrics.jsonl key -> TensorBoard / wandb tag, named as torchtitan (and so flame) names them, so their
dashboards line up; ``mfu(%)`` is a percentage, as there. (The jsonl file keeps the short keys.)"""


def dashboard_values(values: dict[str, float]) -> dict[str, float]:
    """The numeric metrics of one step under their dashboard tags (MFU in percent)."""
    out = {}
    for key, value in values.items():
        out[DASHBOARD_TAGS.get(key, key)] = 100.0 * value if key == "mfu" else value
    return out


def drop_steps_after(path: Path, step: int) -> None:
    """Keep only the rows of the jsonl file ``path`` up to ``step`` (atomic rewrite; no file: nothing).

    A run resumed from the checkpoint of step N logs steps N+1... again; the rows the stopped run wrote
    past N are dropped, so each step is in the file once. Unreadable lines (a row cut by a crash) go too.
    """
    if not path.is_file():
        return
    kept, dropped = [], False
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                row = json.loads(line)
            except ValueError:
                dropped = True
                continue
            if isinstance(row, dict) and isinstance(row.get("step"), int) and row["step"] > step:
                dropped = True
                continue
            kept.append(line if line.endswith("\n") else line + "\n")
    if dropped:
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text("".join(kept), encoding="utf-8")
        tmp.replace(path)


WANDB_FIX = (
    "run `wandb login` once (or set WANDB_API_KEY), or set WANDB_MODE=offline to log locally (wandb sync later)."
)


def check_wandb() -> None:
    """ConfigError (one line) unless wandb is installed and can log without asking: ``WANDB_MODE``
    offline / disabled, ``WANDB_API_KEY`` or ``WANDB_IDENTITY_TOKEN_FILE``, or a key that ``wandb login``
    saved in the netrc file (``$NETRC`` or ~/.netrc) for the wandb host. Reads no network."""
    import netrc
    import os
    from urllib.parse import urlparse

    try:
        import wandb  # noqa: F401
    except ImportError:
        raise ConfigError("metrics.enable_wandb needs wandb: pip install wandb.") from None
    env = os.environ
    if env.get("WANDB_MODE", "").lower() in ("offline", "disabled", "dryrun") or env.get("WANDB_API_KEY") \
            or env.get("WANDB_IDENTITY_TOKEN_FILE"):
        return
    host = urlparse(env.get("WANDB_BASE_URL") or "https://api.wandb.ai").hostname
    path = Path(env.get("NETRC") or Path.home() / ".netrc")
    try:
        if path.is_file() and netrc.netrc(str(path)).authenticators(host):
            return
    except (OSError, netrc.NetrcParseError):
        pass
    raise ConfigError(f"metrics.enable_wandb: wandb has no API key for {host}; {WANDB_FIX}")


def wandb_run_name(job_config: JobConfig) -> str:
    """The run's wandb name: job.description when set (not flame's "default job"), else the dump folder's name."""
    description = job_config.job.description
    if description and description != "default job":
        return description
    return Path(job_config.job.dump_folder).resolve().name or description


class MetricsLogger:
    """Writes each logged step to the console bar, ``metrics.jsonl``, TensorBoard and wandb.

    Only rank 0 writes, unless ``rank_0_only`` is off (then every rank gets its own TensorBoard folder
    and jsonl file ``metrics.rank_k.jsonl``).
    """

    def __init__(self, cfg: Metrics, dump_folder: Path, *, rank: int, total_steps: int, start_step: int,
                 job_config: JobConfig):
        self.cfg, self.rank = cfg, rank
        self.active = rank == 0 or not cfg.rank_0_only
        self.bar = self.jsonl = self.tb = self.wandb = None
        self._redirect = None  # tqdm's logging redirect while a bar is shown
        self._warned_mfu = False
        if not self.active:
            return
        suffix = "" if rank == 0 else f".rank_{rank}"
        dump_folder.mkdir(parents=True, exist_ok=True)
        path = dump_folder / f"metrics{suffix}.jsonl"
        drop_steps_after(path, start_step)  # a resumed run logs again the steps after its checkpoint
        self.jsonl = open(path, "a", encoding="utf-8")
        if cfg.enable_tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(dump_folder / cfg.save_tb_folder / f"rank_{rank}"))
        if cfg.enable_wandb:
            check_wandb()
            import wandb

            try:
                self.wandb = wandb.init(dir=str(dump_folder), config=job_config.to_dict(),
                                        name=wandb_run_name(job_config))
            except wandb.errors.UsageError as err:
                raise ConfigError(f"metrics.enable_wandb: {' '.join(str(err).split())}; {WANDB_FIX}") from None
        if rank == 0 and cfg.progress_bar:
            from tqdm import tqdm
            from tqdm.contrib.logging import logging_redirect_tqdm

            self.bar = tqdm(total=total_steps, initial=start_step, desc="train", dynamic_ncols=True,
                            disable=None)
            if not self.bar.disable:  # log lines go through tqdm.write, above the bar, never into it
                self._redirect = logging_redirect_tqdm()
                self._redirect.__enter__()

    def step(self) -> None:
        if self.bar is not None:
            self.bar.update(1)

    def log(self, step: int, metrics: dict[str, float | None]) -> None:
        if metrics.get("mfu") is not None and metrics["mfu"] > 1.0:
            if not self._warned_mfu:
                logger.warning("MFU above 100%%: the peak FLOP/s is wrong; set --metrics.peak_flops.")
                self._warned_mfu = True
            metrics["mfu"] = None
        if not self.active:
            return
        row = {"step": step, **{k: finite_or_none(v) for k, v in metrics.items()}}
        self.jsonl.write(json.dumps(row, allow_nan=False) + "\n")  # strict JSON: NaN/Inf are written as null
        self.jsonl.flush()
        values = {k: v for k, v in metrics.items() if isinstance(v, (int, float))}
        tagged = dashboard_values(values)
        if self.tb is not None:
            for tag, value in tagged.items():
                self.tb.add_scalar(tag, value, step)
        if self.wandb is not None:
            self.wandb.log(tagged, step=step)
        shown = {"loss": "{:.4f}", "grad_norm": "{:.3f}", "lr": "{:.2e}", "tps": "{:.0f}", "mfu": "{:.1%}",
                 "memory_gib": "{:.1f}"}
        line = " ".join(f"{k} {fmt.format(values[k])}" for k, fmt in shown.items() if values.get(k) is not None)
        if self.bar is not None and not self.bar.disable:
            self.bar.set_postfix_str(line, refresh=True)
        elif self.rank == 0:  # no bar (off, or output is not a terminal): one log line per logged step
            logger.info("step %d: %s", step, line)

    def close(self) -> None:
        if self._redirect is not None:
            self._redirect.__exit__(None, None, None)
            self._redirect = None
        for handle in (self.bar, self.jsonl, self.tb):
            if handle is not None:
                handle.close()
        if self.wandb is not None:
            self.wandb.finish()


class Throughput:
    """Tokens and model FLOPs since the last report -> tokens/s and MFU per device.

    ``split`` is the number of devices that share one batch's model work (the tensor-parallel degree):
    per-device tokens/s and FLOP/s are divided by it, as torchtitan does.
    """

    def __init__(self, flops_fn, peak: float | None, split: int = 1):
        self.flops_fn, self.peak, self.split = flops_fn, peak, split
        self.reset()

    def reset(self) -> None:
        self.tokens, self.flops, self.start = 0, 0.0, time.perf_counter()

    def add(self, batch: dict[str, torch.Tensor]) -> None:
        n = batch["input_ids"].numel()
        self.tokens += n
        self.flops += n * self.flops_fn(attention_span(batch))

    def report(self) -> dict[str, float | None]:
        elapsed = max(time.perf_counter() - self.start, 1e-9) * self.split
        tps, achieved = self.tokens / elapsed, self.flops / elapsed
        out = {"tps": tps, "tflops": achieved / 1e12, "mfu": achieved / self.peak if self.peak else None}
        self.reset()
        return out


@contextmanager
def profiling(cfg: Profiling, dump_folder: Path, *, rank: int, start_step: int, device: torch.device) -> Iterator[Any]:
    """Yields an object with ``step()`` to call after every train step (or None when off).

    ``enable_profiling`` records one step every ``profile_freq`` steps as a Chrome trace under
    ``{dump_folder}/{save_traces_folder}/iteration_N/rank_k_trace.json``; ``enable_memory_snapshot``
    (CUDA only) dumps ``{save_memory_snapshot_folder}/iteration_N/rank_k_memory_snapshot.pickle``.
    """
    hooks: list[Any] = []
    prof = None
    if cfg.enable_profiling:
        traces = dump_folder / cfg.save_traces_folder

        def on_trace(p: torch.profiler.profile) -> None:
            out = traces / f"iteration_{p.step_num + start_step}"
            out.mkdir(parents=True, exist_ok=True)
            p.export_chrome_trace(str(out / f"rank_{rank}_trace.json"))

        warmup = 1 if cfg.profile_freq > 1 else 0
        activities = [torch.profiler.ProfilerActivity.CPU]
        if device.type == "cuda":
            activities.append(torch.profiler.ProfilerActivity.CUDA)
        prof = torch.profiler.profile(
            activities=activities, on_trace_ready=on_trace,
            schedule=torch.profiler.schedule(wait=cfg.profile_freq - 1 - warmup, warmup=warmup, active=1),
        )
        prof.start()
        hooks.append(prof)
    if cfg.enable_memory_snapshot:
        torch.cuda.memory._record_memory_history(max_entries=100_000)
        snapshots = dump_folder / cfg.save_memory_snapshot_folder

        class _Snapshot:
            step_num = start_step

            def step(self) -> None:
                self.step_num += 1
                if self.step_num % cfg.profile_freq == 0:
                    out = snapshots / f"iteration_{self.step_num}"
                    out.mkdir(parents=True, exist_ok=True)
                    torch.cuda.memory._dump_snapshot(str(out / f"rank_{rank}_memory_snapshot.pickle"))

        hooks.append(_Snapshot())

    class _All:
        def step(self) -> None:
            for hook in hooks:
                hook.step()

    try:
        yield _All() if hooks else None
    finally:
        if prof is not None:
            prof.stop()
        if cfg.enable_memory_snapshot:
            torch.cuda.memory._record_memory_history(enabled=None)
