"""benchmarks/train_profile.py on the CPU: a tiny model, one profiled step per loss path."""

from __future__ import annotations

import sys
from pathlib import Path

from train_utils import model_config

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "ops"))
from kernel_env import load_benchmark  # noqa: E402


def test_profile_sums_step_time_by_category(assets, tmp_path, capsys):
    profile = load_benchmark("train_profile")
    config = model_config(tmp_path / "model.json")
    results = profile.main([
        "--config", str(config), "--batch-size", "2", "--seq-len", "32", "--warmup", "1", "--timed", "1",
        "--profiled", "1", "--num-workers", "0", "--fused-loss", "false,true", "--json", str(tmp_path / "out.json"),
        "--model.tokenizer_path", str(assets["tokenizer"]), "--training.dataset", "json",
        "--training.data_files", str(assets["docs"]),
    ])
    assert [r["fused_loss"] for r in results] == [False, True]
    for r in results:
        ms = r["ms_per_step"]
        assert set(ms) == set(profile.CATEGORIES)
        assert ms["matmul"] > 0 and ms["LM head + loss"] > 0 and ms["optimizer"] > 0 and ms["norms + elementwise"] > 0
        assert sum(v for k, v in ms.items() if k not in ("data (host)", "GPU idle")) <= r["step_ms"] * 1.05
        assert r["graphs_built_while_profiling"] == 0 and r["tokens_per_s"] > 0
    assert "| LM head + loss |" in capsys.readouterr().out and (tmp_path / "out.json").exists()


def test_classify_by_launching_op():
    c = load_benchmark("train_profile").classify
    assert c("sm90_xmma_gemm_bf16bf16", ["aten::mm"], [[8, 64], [64, 32]], vocab=100) == "matmul"
    assert c("nvjet_tst_128x256", ["aten::mm"], [[8, 64], [64, 100]], vocab=100) == "LM head + loss"
    assert c("attention_bwd_dkdv_kernel", ["softpick::attention_bwd", "CompiledFunctionBackward"], [], 100) \
        == "attention bwd"
    assert c("kernel_cutlass_fwd", ["softpick::cute_attention_fwd"], [], 100) == "attention fwd"
    assert c("triton_red_fused_mul_rsqrt", ["Torch-Compiled Region"], [], 100) == "norms + elementwise"
    assert c("multi_tensor_apply_kernel", ["aten::_fused_adamw_", "Optimizer.step#AdamW.step"], [], 100) == "optimizer"
    assert c("triton_poi_fused_exp", ["softpick::linear_cross_entropy"], [], 100) == "LM head + loss"
    assert c("triton_poi_fused__to_copy", ["aten::_to_copy", "aten::to"], [[64, 100]], 100) == "LM head + loss"
    assert c("embedding_backward_kernel", ["aten::embedding_dense_backward"], [[64, 16], [64]], 64) \
        == "norms + elementwise"
    assert c("Memcpy HtoD (Pageable -> Device)", [], [], 100) == "host->device copies"
