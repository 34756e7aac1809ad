"""The training kernels compile for Hopper (sm_90) to tensor-core and async-copy code.

Needs no GPU: ``benchmarks/sass.py`` compiles each kernel with Triton's own ptxas and reads the SASS
with its cuobjdump. A change that loses wgmma (HGMMA) or moves a main-loop operand off the cp.async
pipeline (LDGSTS) onto plain loads (LDG), e.g. a load whose alignment Triton can no longer prove,
would cost much of the kernels' speed on an H100 and fails here instead of in the next GPU session;
so does a softpick forward that loses its one-instruction relu-and-pack (F2FP.RELU).
(Plain loads are otherwise few: lse, delta and the epilogue; at most half the LDGSTS count in
triton 3.6 and 3.9; a forward whose K loads lost alignment had 72 LDG against 24 LDGSTS.)
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _cuobjdump() -> Path | None:
    try:
        import triton
    except ImportError:
        return None
    tool = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    return tool if tool.is_file() else None


@pytest.mark.skipif(_cuobjdump() is None, reason="this triton build ships no cuobjdump")
def test_training_kernels_use_wgmma_and_async_copies_on_hopper(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}  # the compiler, not the interpreter
    run = subprocess.run([sys.executable, "benchmarks/sass.py", "--ops", "HGMMA", "LDGSTS", "LDG", "UTMALDG",
                          "--dump", str(tmp_path)],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    rows = [line.split("|")[1:-1] for line in run.stdout.splitlines() if line.startswith(("| fwd", "| dkdv", "| dq"))]
    assert len(rows) == 12  # 3 kernels x head dims 64, 128 x softpick, softmax
    assert any("+tma" in row[3] for row in rows)
    for kernel, d, attention, tile, total, hgmma, ldgsts, ldg, utmaldg, _ in rows:
        name = f"{kernel.strip()} D{d.strip()} {attention.strip()} {tile.strip()}"
        assert int(hgmma) > 0, f"{name}: no wgmma (HGMMA) in the SASS"
        if "+tma" in tile:  # q, k and v arrive by TMA; the plain loads left are lse-free epilogue work
            assert int(utmaldg) > 0 and int(ldgsts) == 0, f"{name}: {utmaldg} TMA loads, {ldgsts} async copies"
        else:
            assert int(ldg) < int(ldgsts), f"{name}: {ldg} plain loads (LDG) against {ldgsts} async copies (LDGSTS)"
    for d in (64, 128):  # softpick's relu and bf16 pack stay one instruction (inline cvt.rn.relu.bf16x2.f32)
        assert "F2FP.RELU" in (tmp_path / f"fwd_d{d}_softpick.sass").read_text(), f"fwd D{d} softpick: no F2FP.RELU"


@pytest.mark.skipif(_cuobjdump() is None, reason="this triton build ships no cuobjdump")
def test_every_autotuned_tile_fits_hopper_shared_memory():
    """A tile that needs more than an H100's 227 KiB is skipped by the autotuner without a word (a
    128x64 8-warp forward tile at D 256 needed 256 KiB); here it fails."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    run = subprocess.run([sys.executable, "benchmarks/sass.py", "--shared"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    rows = [line.split("|")[1:-1] for line in run.stdout.splitlines() if line.startswith(("| fwd", "| dkdv", "| dq"))]
    assert len(rows) >= 30
    too_big = [" ".join(cell.strip() for cell in row[:6]) for row in rows if row[6].strip() != "True"]
    assert not too_big, f"tiles over {227 * 1024} bytes of shared memory: {too_big}"
