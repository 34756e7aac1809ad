"""Instruction mix of the attention kernels on Hopper, compiled here without a GPU.

Triton compiles for any target it knows and ships ``ptxas`` and ``cuobjdump``, so the SASS that an
H100 would run can be read on a CPU machine. This prints, for each kernel, head dim and attention
type, the count of every opcode (static, both loops of the kernel) and flags what costs speed:
no HGMMA (wgmma) or no LDGSTS (async copies) means the pipelining was lost, STL/LDL means registers
spilled to local memory. Pointers and the sizes that Triton specializes at run time (divisible by 16)
are given the same attributes here, so the code is the code of a real launch.

    python benchmarks/sass.py                                   # forward and backward, D 64 and 128
    python benchmarks/sass.py --kernels fwd --head-dims 64 --ops FADD FMNMX MUFU F2FP
    python benchmarks/sass.py --dump /tmp/sass                  # also write each kernel's SASS
    python benchmarks/sass.py --shared                          # shared memory, registers, blocks per SM
    python benchmarks/sass.py --json /tmp/mix.json              # also the rows as JSON (kernel_mix, tile_resources)

Tiles are the ones the autotuner picked on the H100 at c09e2a0 (benchmarks/RESULTS.md; "+tma": the
forward's tensor-descriptor loads, "r": a register cap); ``--tile BM BN WARPS STAGES`` (with ``--tma``
and ``--maxnreg``) overrides them.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import json
import re
import subprocess
import tempfile
from pathlib import Path

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from softpick.ops.attention.triton import training_bwd as triton_bwd, training_fwd as triton_fwd

KERNELS = {"fwd": triton_fwd.attention_fwd_kernel, "dkdv": triton_bwd.attention_bwd_dkdv_kernel,
           "dq": triton_bwd.attention_bwd_dq_kernel}
"""name -> the autotuned kernel."""

TILES = {  # (kernel, head dim, softpick) -> (BM, BN, num_warps, num_stages, TMA, maxnreg), autotuned on the H100
    ("fwd", 64, True): (128, 64, 8, 3, False, 128), ("fwd", 64, False): (128, 64, 8, 3, False, 128),
    ("fwd", 128, True): (128, 64, 8, 3, False, None), ("fwd", 128, False): (128, 64, 4, 2, True, None),
    ("dkdv", 64, True): (32, 64, 4, 3, False, 168), ("dkdv", 64, False): (32, 64, 4, 3, False, 168),
    ("dkdv", 128, True): (32, 64, 4, 3, False, None), ("dkdv", 128, False): (32, 64, 4, 3, False, None),
    ("dq", 64, True): (64, 64, 4, 3, False, None), ("dq", 64, False): (64, 64, 4, 3, False, None),
    ("dq", 128, True): (128, 64, 8, 3, False, None), ("dq", 128, False): (128, 64, 8, 3, False, None),
}
SIZES = ("T", "TUNE_LEN", "HQ", "H")
"""Integer arguments specialized as multiples of 16 (true for the benchmark shapes with 16 heads)."""


def _jit_function(kernel):
    while not isinstance(kernel, triton.runtime.jit.JITFunction):
        kernel = kernel.fn  # the autotuner wraps the JITFunction
    return kernel


def compile_kernel(name: str, head_dim: int, softpick: bool, tile: tuple[int, int, int, int], arch: int = 90,
                   tma: bool = False, maxnreg: int | None = None, sigmoid: bool = False):
    """The compiled kernel (``.asm`` holds ptx and cubin) for causal, dense, bf16 inputs; ``tma``: the
    forward's tensor-descriptor loads; ``maxnreg``: a register cap per thread; ``sigmoid``: sigmoid
    attention (with ``softpick`` False)."""
    fn = _jit_function(KERNELS[name])
    bm, bn, warps, stages = tile
    const = {"K": head_dim, "V": head_dim, "BK": head_dim, "BV": head_dim, "BM": bm, "BN": bn,
             "SOFTPICK": softpick, "SIGMOID": sigmoid, "CAUSAL": True, "IS_VARLEN": False}
    if name == "fwd":
        const.update(HAS_SINK=False, TMA_OK=tma, TMA=tma)
    if name == "dkdv":
        const["G"] = 1
    names = fn.arg_names
    ptr_types = {"lse": "*fp32", "sink": "*fp32", "delta": "*fp32", "cu_seqlens": "*i32"}
    scalar_types = {"T": "i32", "TUNE_LEN": "i32", "HQ": "i32", "H": "i32", "qk_scale": "fp32", "scale": "fp32", "eps": "fp32"}
    signature = {n: "constexpr" if n in const else scalar_types.get(n) or ptr_types.get(n, "*bf16") for n in names}
    attrs = {(names.index(n),): [["tt.divisibility", 16]] for n in names
             if signature[n].startswith("*") or n in SIZES}
    source = ASTSource(fn=fn, signature=signature, constexprs={(names.index(k),): v for k, v in const.items()},
                       attrs=attrs)
    return triton.compile(source, target=GPUTarget("cuda", arch, 32),
                          options={"num_warps": warps, "num_stages": stages, "maxnreg": maxnreg})


SHARED_LIMIT = 232448
"""Bytes of shared memory one block may use on an H100 / H200 (227 KiB)."""


def autotuned_tiles() -> list[tuple[str, int, tuple[int, int, int, int], bool, int | None]]:
    """(kernel, head dim, (BM, BN, warps, stages), TMA, maxnreg) of every tile the autotuners may try."""
    tiles = []
    for d, keep in triton_fwd.FWD_KEEP.items():
        tiles += [("fwd", d, t[:4], t[4], t[5]) for t in map(triton_fwd.fwd_tile, keep)]
    for name, by_dim in (("dkdv", triton_bwd.DKDV_KEEP), ("dq", triton_bwd.DQ_KEEP)):
        tiles += [(name, d, t[:4], False, t[4]) for d, keep in by_dim.items() for t in map(triton_bwd.bwd_tile, keep)]
    return tiles


def cuobjdump(compiled, flag: str) -> str:
    """What Triton's cuobjdump prints with ``flag`` (e.g. -sass, -res-usage) for a compiled kernel."""
    tool = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    with tempfile.TemporaryDirectory() as tmp:
        cubin = Path(tmp) / "kernel.cubin"
        cubin.write_bytes(compiled.asm["cubin"])
        return subprocess.run([str(tool), flag, str(cubin)], capture_output=True, text=True, check=True).stdout


def registers(compiled) -> int:
    """Registers per thread of a compiled kernel."""
    return int(re.search(r"REG:(\d+)", cuobjdump(compiled, "-res-usage")).group(1))


@dataclasses.dataclass(frozen=True)
class TileResources:
    """What one autotuned tile needs on the SM (softpick, the larger of the two attention types)."""

    kernel: str
    head_dim: int
    tile: tuple[int, int, int, int]
    """(BM, BN, warps, stages)."""
    tma: bool
    maxnreg: int | None
    shared_bytes: int
    registers: int
    """Per thread."""
    blocks_per_sm: int
    """Blocks one SM holds (65,536 registers, 227 KiB): a second block is what overlaps one block's exp
    and ALU work with the other's matmuls."""

    @property
    def fits(self) -> bool:
        return self.shared_bytes <= SHARED_LIMIT


def tile_resources(arch: int = 90) -> list[TileResources]:
    """The shared memory and registers of every tile the autotuners may try, compiled for ``arch``."""
    rows = []
    for name, d, tile, tma, maxnreg in autotuned_tiles():
        compiled = compile_kernel(name, d, True, tile, arch, tma, maxnreg)
        shared, regs = compiled.metadata.shared, registers(compiled)
        blocks = min(65536 // (regs * tile[2] * 32), SHARED_LIMIT // max(shared, 1))
        rows.append(TileResources(name, d, tile, tma, maxnreg, shared, regs, blocks))
    return rows


def print_resources(rows: list[TileResources]) -> None:
    """``tile_resources`` as a markdown table."""
    print("| kernel | D | tile | TMA | maxnreg | shared bytes | fits | registers | blocks/SM |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r.kernel} | {r.head_dim} | {'x'.join(map(str, r.tile))} | {r.tma} | {r.maxnreg or '-'} | "
              f"{r.shared_bytes} | {r.fits} | {r.registers} | {r.blocks_per_sm} |", flush=True)


def sass(compiled) -> str:
    """cuobjdump's SASS listing of a compiled kernel."""
    return cuobjdump(compiled, "-sass")


def opcode_counts(listing: str) -> collections.Counter:
    """Opcode (without modifiers) -> static count in a SASS listing."""
    ops = re.findall(r"^\s+/\*[0-9a-f]+\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_]*)", listing, re.M)
    return collections.Counter(ops)


@dataclasses.dataclass(frozen=True)
class KernelMix:
    """The static opcode counts of one compiled kernel (both loops)."""

    kernel: str
    head_dim: int
    attention: str
    """"softpick" or "softmax"."""
    tile: tuple[int, int, int, int]
    """(BM, BN, warps, stages)."""
    tma: bool
    maxnreg: int | None
    counts: dict[str, int]
    """Opcode (without modifiers) -> count."""

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    @property
    def warnings(self) -> list[str]:
        """What costs speed: pipelining lost (no HGMMA, no LDGSTS or no UTMALDG) or spilled registers."""
        c = collections.Counter(self.counts)
        checks = (("no HGMMA", not c["HGMMA"]), ("no LDGSTS", not self.tma and not c["LDGSTS"]),
                  ("no UTMALDG", self.tma and not c["UTMALDG"]), ("spills", c["STL"] + c["LDL"] > 0))
        return [w for w, bad in checks if bad]

    @property
    def tile_name(self) -> str:
        """e.g. "128x64x8x3+tma r128"."""
        return "x".join(map(str, self.tile)) + ("+tma" if self.tma else "") + (f" r{self.maxnreg}" if self.maxnreg else "")


def kernel_mix(kernels=tuple(KERNELS), head_dims=(64, 128), arch: int = 90, tile=None,
               dump: Path | None = None) -> list[KernelMix]:
    """Compile each kernel x head dim x (softpick, softmax) for ``arch`` and count its opcodes.

    ``tile``: (BM, BN, warps, stages, TMA, maxnreg) for every kernel instead of ``TILES``; ``dump``: a
    folder for the SASS listings, ``{kernel}_d{D}_{softpick|softmax}.sass``."""
    rows = []
    for name in kernels:
        for d in head_dims:
            for softpick in (True, False):
                chosen = tile or TILES.get((name, d, softpick), (64, 64, 4, 2, False, None))
                tma, maxnreg = name == "fwd" and chosen[4], chosen[5]
                listing = sass(compile_kernel(name, d, softpick, chosen[:4], arch, tma, maxnreg))
                kind = "softpick" if softpick else "softmax"
                if dump:
                    dump.mkdir(parents=True, exist_ok=True)
                    (dump / f"{name}_d{d}_{kind}.sass").write_text(listing)
                rows.append(KernelMix(name, d, kind, tuple(chosen[:4]), bool(tma), maxnreg, dict(opcode_counts(listing))))
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--kernels", nargs="+", default=list(KERNELS), choices=list(KERNELS))
    parser.add_argument("--head-dims", nargs="+", type=int, default=[64, 128])
    parser.add_argument("--ops", nargs="+", default=["HGMMA", "LDGSTS", "MUFU", "FFMA", "FADD", "FMUL", "FMNMX",
                                                     "FSEL", "FSETP", "F2FP", "LOP3", "STL", "LDL"])
    parser.add_argument("--tile", nargs=4, type=int, metavar=("BM", "BN", "WARPS", "STAGES"), default=None)
    parser.add_argument("--tma", action="store_true", help="with --tile: the forward's tensor-descriptor (TMA) loads")
    parser.add_argument("--maxnreg", type=int, default=None, help="with --tile: a register cap per thread")
    parser.add_argument("--arch", type=int, default=90, help="compute capability x 10 (90: H100/H200)")
    parser.add_argument("--dump", type=Path, default=None, help="folder for the SASS listings")
    parser.add_argument("--shared", action="store_true",
                        help="only the shared memory, registers and blocks per SM of every autotuned tile")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows to this file as JSON")
    args = parser.parse_args(argv)
    if args.shared:
        rows = tile_resources(args.arch)
        print_resources(rows)
    else:
        print(f"triton {triton.__version__}, sm_{args.arch}; static opcode counts (both loops of each kernel)")
        print("| kernel | D | attention | tile | total | " + " | ".join(args.ops) + " | warnings |")
        print("|---" * (5 + len(args.ops)) + "|---|")
        tile = (*args.tile, args.tma, args.maxnreg) if args.tile else None
        rows = []
        for name in args.kernels:  # one kernel at a time, so the table grows while the rest compiles
            for r in kernel_mix([name], args.head_dims, args.arch, tile, args.dump):
                rows.append(r)
                print(f"| {r.kernel} | {r.head_dim} | {r.attention} | {r.tile_name} | {r.total} | "
                      + " | ".join(str(r.counts.get(op, 0)) for op in args.ops)
                      + f" | {', '.join(r.warnings) or '-'} |", flush=True)
    if args.json:
        args.json.write_text(json.dumps([dataclasses.asdict(r) for r in rows], indent=1))


if __name__ == "__main__":
    main()
