"""Compile the Hopper kernels for sm_90a without a GPU and read their cubins (CI's check of them).

``compile_config`` traces and compiles one configuration with fake tensors (the DSL needs no driver when
the target is named: ``CUTE_DSL_ARCH=sm_90a``), keeping the cubins in a fresh folder;
``cubin_report`` reads one cubin with the ``cuobjdump`` that Triton's wheel ships: registers, spill
stores/loads (local memory), and the SASS opcode mix (wgmma = ``HGMMA``, TMA loads = ``UTMALDG``,
TMA reduce-add = ``UTMAREDG``, bulk reduce = ``UBLKRED``, exp2 = ``MUFU.EX2``).

Run as a script for a table: ``python -m softpick.ops.attention.cute.compile_check [--head-dims 64 128]``.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import os
import re
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

TARGET_ENV = {
    "CUTE_DSL_ARCH": "sm_90a",  # compile for Hopper with no driver (else the DSL picks sm_100a)
    "FLASH_ATTENTION_ARCH": "sm_90",  # FlashAttention-4's kernel selection
    "FLASH_ATTENTION_NUM_SMS": "132",  # H100/H200 SXM: the launchers' tile-scheduler heuristics
}


@dataclass(frozen=True)
class KernelConfig:
    """One configuration the dispatcher can pick: variant, head dim, causal, GQA group, varlen, dtype."""

    variant: str = "softpick"  # softpick | softmax | sink
    head_dim: int = 128
    causal: bool = True
    group: int = 1  # query heads per key/value head
    varlen: bool = False
    dtype: str = "bfloat16"

    @property
    def name(self) -> str:
        return (f"{self.variant}-d{self.head_dim}-{'causal' if self.causal else 'full'}-g{self.group}"
                f"{'-varlen' if self.varlen else ''}-{self.dtype}")


@dataclass
class CubinReport:
    """What one compiled kernel holds: its name, registers per thread, spill bytes and SASS opcode counts."""

    kernel: str
    registers: int
    spill_stores: int
    spill_loads: int
    opcodes: collections.Counter = field(default_factory=collections.Counter)

    def count(self, prefix: str) -> int:
        return sum(n for op, n in self.opcodes.items() if op.startswith(prefix))


def cuda_tool(name: str) -> str:
    """Path of a CUDA binary tool (cuobjdump, nvdisasm, ptxas): Triton's bundled copy, else PATH."""
    try:
        import triton

        bundled = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / name
        if bundled.exists():
            return str(bundled)
    except ImportError:
        pass
    found = shutil.which(name)
    if found is None:
        raise FileNotFoundError(f"{name} not found (it ships with the triton wheel and the CUDA toolkit)")
    return found


@contextlib.contextmanager
def _env(values: dict[str, str]):
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def compile_config(config: KernelConfig, dump_dir: Path, batch: int = 2, seq: int = 1024) -> float:
    """Compile the forward and backward of ``config`` for sm_90a into ``dump_dir`` (cubins kept);
    return the seconds it took. Runs on a CPU: fake CUDA tensors, no launch."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    dump_dir.mkdir(parents=True, exist_ok=True)
    env = {**TARGET_ENV, "CUTE_DSL_KEEP": "cubin", "CUTE_DSL_DUMP_DIR": str(dump_dir), "SOFTPICK_CUTE_CACHE": "0"}
    with _env(env):
        from softpick.ops.attention.cute import launch

        dtype = getattr(torch, config.dtype)
        heads = 2
        B, T = (1, 4 * seq) if config.varlen else (batch, seq)
        start = time.perf_counter()
        with FakeTensorMode():
            q = torch.empty(B, T, heads * config.group, config.head_dim, dtype=dtype, device="cuda")
            k = torch.empty(B, T, heads, config.head_dim, dtype=dtype, device="cuda")
            v = torch.empty_like(k)
            cu = torch.empty(5, dtype=torch.int32, device="cuda") if config.varlen else None
            sink = torch.empty(heads * config.group, dtype=torch.float32, device="cuda") if config.variant == "sink" else None
            softpick = config.variant == "softpick"
            scale = config.head_dim**-0.5
            max_seqlen = seq if config.varlen else 0
            o, lse = launch._fwd(q, k, v, cu, softpick, scale, config.causal, 1e-6, sink, max_seqlen)
            launch._bwd(torch.empty_like(o), q, k, v, o, lse, cu, softpick, scale, config.causal, sink, max_seqlen)
        return time.perf_counter() - start


_RES = re.compile(r"Function (\S+):\s*\n\s*REG:(\d+) STACK:(\d+) SHARED:(\d+) LOCAL:(\d+)")


def cubin_report(cubin: Path) -> list[CubinReport]:
    """One :class:`CubinReport` per kernel in ``cubin`` (registers and local memory from
    ``cuobjdump -res-usage``, spills from the SASS's local stores/loads, opcodes from ``-sass``)."""
    res = subprocess.run([cuda_tool("cuobjdump"), "-res-usage", str(cubin)], capture_output=True, text=True, check=True)
    sass = subprocess.run([cuda_tool("cuobjdump"), "-sass", str(cubin)], capture_output=True, text=True, check=True)
    per_kernel: dict[str, collections.Counter] = {}
    current = None
    for line in sass.stdout.splitlines():
        m = re.match(r"\s*Function : (\S+)", line)
        if m:
            current = per_kernel.setdefault(m.group(1), collections.Counter())
            continue
        m = re.match(r"\s*/\*[0-9a-f]{4,}\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_.]*)", line)
        if m and current is not None:
            current[m.group(1)] += 1
    reports = []
    for m in _RES.finditer(res.stdout):
        name = m.group(1)
        ops = per_kernel.get(name, collections.Counter())
        stores = sum(n for op, n in ops.items() if op.startswith("STL"))
        loads = sum(n for op, n in ops.items() if op.startswith("LDL"))
        reports.append(CubinReport(name, int(m.group(2)), stores, loads, ops))
    return reports


_DUMP_DIR: Path | None = None


def dump_dir() -> Path:
    """The process's one folder for kept cubins (the DSL reads its dump folder once per process)."""
    global _DUMP_DIR
    if _DUMP_DIR is None:
        _DUMP_DIR = Path(tempfile.mkdtemp(prefix="softpick-cute-"))
    return _DUMP_DIR


def check_config(config: KernelConfig) -> tuple[float, list[CubinReport]]:
    """Compile ``config`` and report every kernel it newly produced (forward, backward, pre/postprocess;
    kernels another configuration already compiled in this process are not compiled again)."""
    folder = dump_dir()
    before = {p: p.stat().st_mtime_ns for p in folder.rglob("*.cubin")}
    seconds = compile_config(config, folder)
    cubins = sorted(p for p in folder.rglob("*.cubin") if before.get(p) != p.stat().st_mtime_ns)
    return seconds, [r for cubin in cubins for r in cubin_report(cubin)]


def short_name(kernel: str) -> str:
    """A readable name for a mangled kernel symbol: its class and method (e.g. SoftpickBackwardSm90 kernel)."""
    m = re.search(r"(Softpick\w*?Sm90|FlashAttention\w*?(?:Sm90|Preprocess|Postprocess|Sm80|Combine)\w*?)_", kernel)
    return m.group(1) if m else kernel[:40]


def dispatch_configs(head_dims=(64, 128, 256)) -> list[KernelConfig]:
    """The kernel configurations CI compiles: softpick at each head dim causal and full, causal varlen
    and causal GQA (packed heads), bf16; fp16 once; FlashAttention-4's own softmax and learnable-sink
    kernels once each (they are what softmax, softmax+1 and sink dispatch to)."""
    configs = [KernelConfig("softpick", d, causal, group, varlen)
               for d in head_dims
               for causal, group, varlen in ((True, 1, False), (False, 1, False), (True, 1, True), (True, 4, False))]
    configs += [KernelConfig("softpick", 128, True, 1, False, "float16"),
                KernelConfig("softmax", 128, True), KernelConfig("sink", 64, True)]
    return configs


def _worker_init() -> None:
    os.environ.update(TARGET_ENV)
    # the check compiles from fake tensors and needs no GPU (CI runs it on CPUs); on a GPU machine a
    # context per worker of every test process would only take device memory
    os.environ["CUDA_VISIBLE_DEVICES"] = ""


def check_configs_in_workers(configs: list[KernelConfig], workers: int = 2) -> list[tuple[KernelConfig, float, list[CubinReport]]]:
    """:func:`check_config` for each config in ``workers`` fresh processes (the DSL reads its target and
    dump folder once per process, so they are set before it is imported there)."""
    import concurrent.futures
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(workers, mp_context=ctx, initializer=_worker_init) as pool:
        results = list(pool.map(check_config, configs))
    return [(c, seconds, reports) for c, (seconds, reports) in zip(configs, results)]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--head-dims", type=int, nargs="+", default=[64, 128, 256])
    parser.add_argument("--variants", default="softpick,softmax")
    parser.add_argument("--full", action="store_true", help="every dispatch configuration (slow)")
    args = parser.parse_args(argv)
    if args.full:
        configs = dispatch_configs(tuple(args.head_dims))
    else:
        configs = [KernelConfig(v, d) for d in args.head_dims for v in args.variants.split(",")]
    print(f"{'config':<36} {'kernel':<48} {'regs':>4} {'spill':>5} {'HGMMA':>5} {'TMA ld':>6} {'TMA red':>7} "
          f"{'EX2':>5} {'FADD':>5} {'FMNMX':>5} {'FSEL':>5} {'total':>6}")
    for config in configs:
        seconds, reports = check_config(config)
        for r in reports:
            print(f"{config.name:<36} {short_name(r.kernel)[:48]:<48} {r.registers:>4} {r.spill_stores + r.spill_loads:>5} "
                  f"{r.count('HGMMA'):>5} {r.count('UTMALDG'):>6} {r.count('UTMAREDG') + r.count('UBLKRED'):>7} "
                  f"{r.count('MUFU.EX2'):>5} {r.count('FADD'):>5} {r.count('FMNMX'):>5} {r.count('FSEL'):>5} "
                  f"{sum(r.opcodes.values()):>6}")
        print(f"{config.name:<36} compiled in {seconds:.1f} s", flush=True)


if __name__ == "__main__":
    main()
