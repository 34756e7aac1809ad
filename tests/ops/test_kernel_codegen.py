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

import json
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


def _sass_rows(tmp_path: Path, *args: str) -> list[dict]:
    """The rows ``benchmarks/sass.py`` returns (``kernel_mix`` or, with --shared, ``tile_resources``),
    from its --json file. It runs in its own process: the compiler, not the Triton interpreter."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    out = tmp_path / "rows.json"
    run = subprocess.run([sys.executable, "benchmarks/sass.py", *args, "--json", str(out)],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    return json.loads(out.read_text())


@pytest.mark.slow
@pytest.mark.skipif(_cuobjdump() is None, reason="this triton build ships no cuobjdump")
def test_training_kernels_use_wgmma_and_async_copies_on_hopper(tmp_path):
    rows = _sass_rows(tmp_path, "--dump", str(tmp_path))
    assert len(rows) == 12  # 3 kernels x head dims 64, 128 x softpick, softmax
    assert {(r["kernel"], r["head_dim"], r["attention"]) for r in rows} == {
        (k, d, a) for k in ("fwd", "dkdv", "dq") for d in (64, 128) for a in ("softpick", "softmax")}
    assert any(r["tma"] for r in rows)
    for r in rows:
        name = f"{r['kernel']} D{r['head_dim']} {r['attention']} {r['tile']} tma={r['tma']}"
        count = lambda op: r["counts"].get(op, 0)  # noqa: E731
        assert count("HGMMA") > 0, f"{name}: no wgmma (HGMMA) in the SASS"
        if r["tma"]:  # q, k and v arrive by TMA; the plain loads left are lse-free epilogue work
            assert count("UTMALDG") > 0 and count("LDGSTS") == 0, \
                f"{name}: {count('UTMALDG')} TMA loads, {count('LDGSTS')} async copies"
        else:
            assert count("LDG") < count("LDGSTS"), \
                f"{name}: {count('LDG')} plain loads (LDG) against {count('LDGSTS')} async copies (LDGSTS)"
    for d in (64, 128):  # softpick's relu and bf16 pack stay one instruction (inline cvt.rn.relu.bf16x2.f32)
        assert "F2FP.RELU" in (tmp_path / f"fwd_d{d}_softpick.sass").read_text(), f"fwd D{d} softpick: no F2FP.RELU"


@pytest.mark.slow
@pytest.mark.skipif(_cuobjdump() is None, reason="this triton build ships no cuobjdump")
def test_every_autotuned_tile_fits_hopper_shared_memory(tmp_path):
    """A tile that needs more than an H100's 227 KiB is skipped by the autotuner without a word (a
    128x64 8-warp forward tile at D 256 needed 256 KiB); here it fails."""
    rows = _sass_rows(tmp_path, "--shared")
    assert len(rows) >= 30
    assert all(r["registers"] > 0 and r["shared_bytes"] > 0 for r in rows)
    too_big = [f"{r['kernel']} D{r['head_dim']} {r['tile']} tma={r['tma']}: {r['shared_bytes']} bytes"
               for r in rows if r["shared_bytes"] > 227 * 1024]
    assert not too_big, f"tiles over {227 * 1024} bytes of shared memory: {too_big}"
