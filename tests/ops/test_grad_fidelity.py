"""benchmarks/grad_fidelity.py: its four gradients and its where-tables on a 2-layer model, in seconds."""

import math

import pytest
import torch

from kernel_env import load_benchmark

grad_fidelity = load_benchmark("grad_fidelity")
TINY = dict(grad_fidelity.TOY, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, vocab_size=2048)


def model(variant: str):
    torch.manual_seed(0)
    config = grad_fidelity.SoftpickConfig(**TINY, **grad_fidelity.VARIANTS[variant])
    return grad_fidelity.SoftpickForCausalLM(config)


@pytest.mark.parametrize("variant", ["softpick", "softmax"])
def test_measure_compares_four_gradients_and_bins_every_row(variant):
    m, tap = model(variant), grad_fidelity.Tap(2)
    ids = next(grad_fidelity.windows("validation", 2, 32, seed=1))
    with grad_fidelity.tapped_ops(tap):
        result = grad_fidelity.measure(m, ids, tap, impl="naive", checkpoint=False)
    fp32 = result["families"]["fp32 vs fp64"]
    assert {"q_proj", "k_proj", "v_proj", "o_proj", "lm_head", "embed_tokens"} <= fp32.keys()
    for cosine, ratio in fp32.values():  # fp32 is the exact gradient here, to rounding
        assert cosine > 0.99999 and abs(ratio - 1) < 1e-4
    for cosine, _ in result["families"]["bf16 vs fp64"].values():
        assert 0.9 < cosine < 1.0  # bf16 autocast rounds, yet points the same way
    rows = 2 * 32 * 4 * 2  # batch x positions x query heads x layers
    for kind in ("position", "den", "layer"):
        table = result["where"][kind]
        assert sum(r["rows"] for r in table) == rows
        assert sum(r["err_share"] for r in table) == pytest.approx(1.0)
    assert [r["bin"] for r in result["where"]["layer"]] == ["0", "1"]


def test_a_row_on_the_kink_lands_in_the_smallest_denominator_bin():
    """One query whose only visible key scores 1e-5: den = |e^s - 1| ~ 1e-5, bin [0, 0.001); its exact
    gradient is eps / (den + eps)^2 ~ 1e4 times that of the other rows, so it holds nearly all the error
    energy once the test gradient misses it."""
    q = torch.zeros(1, 2, 1, 4, dtype=torch.float64)
    k = torch.zeros(1, 2, 1, 4, dtype=torch.float64)
    k[0, 0, 0, 0], q[0, 0, 0, 0] = 1.0, 2e-5  # s_00 = 2e-5 * 0.5 = 1e-5
    k[0, 1, 0, 1], q[0, 1, 0, 1] = 1.0, 2.0  # row 1: scores (0, 1): den = e - 1
    dq_ref = torch.zeros_like(q)
    dq_ref[0, 0, 0, 0] = 1e4
    dq_ref[0, 1, 0, 1] = 1.0
    dq_test = dq_ref.clone()
    dq_test[0, 0, 0, 0] = 0.0
    where = grad_fidelity.where_it_lives([q], [k], [dq_test], [q], [k], [dq_ref], 0.5)
    by_den = {r["bin"]: r for r in where["den"]}
    assert by_den["[0, 0.001)"]["rows"] == 1 and by_den["[0, 0.001)"]["err_share"] == pytest.approx(1.0)
    assert by_den["[1, 10)"]["rel_err"] == 0.0
    assert math.isclose(by_den["[0, 0.001)"]["median_nearest_abs_s"], 1e-5, rel_tol=1e-3)
