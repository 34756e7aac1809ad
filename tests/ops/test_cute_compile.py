"""The Hopper (CuTe-DSL) kernels compiled for sm_90a on the CPU, and their cubins read (no GPU needed).

Every configuration of :func:`compile_check.dispatch_configs` is traced with fake tensors and compiled
for sm_90a; each forward and backward kernel must use wgmma (``HGMMA``) and TMA loads (``UTMALDG``),
the backward must add dQ by TMA / bulk reduce-add, and no kernel may spill registers to local memory.
Correctness needs the GPU: tests/ops/test_attention_cute.py.
"""

from __future__ import annotations

import pytest

from softpick.ops.attention.cute import problem

if problem() is not None:
    pytest.skip(f"the CuTe DSL stack is not installed as pinned: {problem()}", allow_module_level=True)

from softpick.ops.attention.cute.compile_check import check_configs_in_workers, dispatch_configs, short_name  # noqa: E402

CONFIGS = dispatch_configs()


@pytest.fixture(scope="module")
def compiled():
    return {config.name: (seconds, reports) for config, seconds, reports in check_configs_in_workers(CONFIGS)}


@pytest.mark.slow
@pytest.mark.parametrize("config", CONFIGS, ids=[c.name for c in CONFIGS])
def test_kernel_compiles_for_sm90a_without_spills(config, compiled):
    seconds, reports = compiled[config.name]
    main = {short_name(r.kernel): r for r in reports if "Sm90" in short_name(r.kernel)}
    names = sorted(main)
    expected = "Softpick" if config.variant == "softpick" else "FlashAttention"
    assert [n for n in names if "Forward" in n] and [n for n in names if "Backward" in n], (config.name, names)
    assert all(n.startswith(expected) for n in names), names
    for name, r in main.items():
        assert r.spill_stores == 0 and r.spill_loads == 0, f"{name}: {r.spill_stores} STL, {r.spill_loads} LDL"
        assert r.count("HGMMA") > 0, f"{name}: no wgmma"
        assert r.count("UTMALDG") > 0, f"{name}: no TMA load"
        if "Backward" in name:
            assert r.count("UTMAREDG") + r.count("UBLKRED") > 0, f"{name}: dQ not added by TMA reduce"
    for r in reports:  # the preprocess / postprocess kernels too
        assert r.spill_stores == 0 and r.spill_loads == 0, f"{short_name(r.kernel)} spills"
