"""The live metrics of training (softpick.models.probes) are the numbers of softpick analyze."""

import json

import pytest
import torch
from analysis_models import HEAD_MASS, expected_sparsity, planted_attention_forward, random_samples, tiny_llama
from transformers.models.llama import modeling_llama

from softpick.analysis.activations import compute_activation_stats
from softpick.analysis.data import make_batches
from softpick.analysis.live import plot_live_metrics, read_rows
from softpick.analysis.sink import compute_sink_rate
from softpick.analysis.sparsity import compute_sparsity
from softpick.models.probes import LIVE_METRICS, Moments, probe_layers, summarize

LENGTHS = [9, 6, 12, 7, 10]


@pytest.fixture
def planted(monkeypatch):
    monkeypatch.setattr(modeling_llama, "eager_attention_forward", planted_attention_forward)
    return tiny_llama(attn_implementation="sdpa")


def test_live_probe_gives_the_analysis_numbers(planted):
    batch = make_batches(random_samples(LENGTHS), len(LENGTHS), padding_side="left")[0]
    live = summarize(probe_layers(planted, batch.input_ids, batch.attention_mask, batch.position_ids))
    assert planted.config._attn_implementation == "sdpa"  # switched to eager for the probe only
    sinks, sparsity = compute_sink_rate(planted, [batch]), compute_sparsity(planted, [batch])
    acts = compute_activation_stats(planted, [batch])
    assert live["sink_rate"] == pytest.approx(sinks["sink_rate"]) == pytest.approx(50.0)
    assert live["first_token_mass"] == pytest.approx(sinks["first_token_mass"], abs=1e-9)
    assert live["sparsity"] == pytest.approx(sparsity["sparsity"], abs=1e-9)
    assert live["sparsity"] == pytest.approx(expected_sparsity(LENGTHS), abs=1e-9)
    assert live["kurtosis"] == pytest.approx(acts["max_kurtosis"], rel=1e-9)
    assert live["max_abs"] == pytest.approx(acts["max_abs"], rel=1e-9)
    for layer in range(2):
        assert live[f"first_token_mass/layer_{layer}"] == pytest.approx(sinks["first_token_mass_per_layer"][layer])
        assert live[f"kurtosis/layer_{layer}"] == pytest.approx(acts["kurtosis_per_layer"][layer], rel=1e-9)
        assert live[f"sink_rate/layer_{layer}"] == 100.0 * sum(m > 0.3 for m in HEAD_MASS) / len(HEAD_MASS)


def test_moments_do_not_depend_on_batching():
    x = torch.randn(1000, dtype=torch.float64) ** 3 + 5.0
    whole, parts = Moments(), Moments()
    whole.add(x)
    for chunk in x.split(77):
        parts.add(chunk)
    centred = x - x.mean()
    exact = float((centred**4).mean() / (centred**2).mean() ** 2)
    assert whole.kurtosis == pytest.approx(exact, rel=1e-9)
    assert parts.kurtosis == pytest.approx(exact, rel=1e-9)
    assert parts.max_abs == float(x.abs().max())


def test_live_plots_one_line_per_run(tmp_path):
    for name, offset in (("a", 0.0), ("b", 1.0)):
        rows = [{"step": s, "loss": 1.0} for s in range(1, 5)]
        for row in rows[1::2]:
            row.update({f"analysis/{m}": offset + row["step"] for m in LIVE_METRICS})
            row.update({f"analysis/{m}/layer_{l}": offset + l + 1.0 for m in LIVE_METRICS for l in range(2)})
        (tmp_path / name).mkdir()
        (tmp_path / name / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    runs = {name: read_rows(tmp_path / name / "metrics.jsonl") for name in ("a", "b")}
    assert plot_live_metrics(runs, tmp_path / "out") == ["live_metrics.png", "live_metrics_layers.png"]
    assert all((tmp_path / "out" / f).stat().st_size > 10_000 for f in ("live_metrics.png", "live_metrics_layers.png"))
    assert plot_live_metrics({"a": [{"step": 1, "loss": 1.0}]}, tmp_path / "none") == []
