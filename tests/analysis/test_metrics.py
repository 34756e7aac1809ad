"""Each measurement gives the known value on a constructed model, whatever the padding and batch size."""

import math

import pytest
import torch
from analysis_models import (
    HEAD_MASS,
    expected_first_mass,
    expected_sparsity,
    planted_attention_forward,
    random_samples,
    tiny_gpt2,
    tiny_llama,
    tiny_sigmoid,
)
from transformers.models.llama import modeling_llama

from softpick.analysis.activations import ActivationObserver, compute_activation_stats
from softpick.analysis.collect import decoder_layers, run_pass
from softpick.analysis.data import make_batches
from softpick.analysis.perplexity import PerplexityObserver, compute_perplexity
from softpick.analysis.sink import SinkObserver, compute_sink_rate
from softpick.analysis.sparsity import SparsityObserver, compute_sparsity

LENGTHS = [9, 6, 12, 7, 10]
LAYOUTS = [(1, "right"), (2, "right"), (3, "left"), (5, "left")]


@pytest.fixture
def planted(monkeypatch):
    monkeypatch.setattr(modeling_llama, "eager_attention_forward", planted_attention_forward)
    return tiny_llama()


@pytest.mark.parametrize("batch_size,side", LAYOUTS, ids=[f"B{b}-{s}" for b, s in LAYOUTS])
def test_sink_rate_of_planted_attention(planted, batch_size, side):
    result = compute_sink_rate(planted, make_batches(random_samples(LENGTHS), batch_size, padding_side=side))
    expected = expected_first_mass(LENGTHS)
    for layer in result["first_token_mass_per_head"]:
        assert layer == pytest.approx(expected, abs=1e-6)
    sinks = sum(m > 0.3 for m in expected)
    assert sinks == 2
    assert result["sink_rate"] == pytest.approx(100.0 * sinks / len(HEAD_MASS))
    assert result["sink_rate_per_layer"] == pytest.approx([50.0, 50.0])
    assert result["first_token_mass"] == pytest.approx(sum(expected) / len(expected), abs=1e-6)


@pytest.mark.parametrize("batch_size,side", LAYOUTS, ids=[f"B{b}-{s}" for b, s in LAYOUTS])
def test_sparsity_of_planted_attention(planted, batch_size, side):
    result = compute_sparsity(planted, make_batches(random_samples(LENGTHS), batch_size, padding_side=side))
    expected = expected_sparsity(LENGTHS)
    assert result["sparsity"] == pytest.approx(expected, abs=1e-9)
    for layer in result["sparsity_per_head"]:
        assert layer == pytest.approx([expected] * len(HEAD_MASS), abs=1e-9)


def test_sink_eps_decides_sink_heads(planted):
    batches = make_batches(random_samples(LENGTHS), 2)
    assert compute_sink_rate(planted, batches, eps=0.95)["sink_rate"] == 0.0
    assert compute_sink_rate(planted, batches, eps=0.01)["sink_rate"] == 100.0
    with pytest.raises(ValueError, match="sink eps"):
        SinkObserver(eps=1.5)


def _identity_layers_model(massive: float, token: int, channel: int):
    """Llama whose layers add nothing (o_proj, down_proj = 0): every layer outputs the embeddings."""
    model = tiny_llama()
    with torch.no_grad():
        for layer in decoder_layers(model):
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        model.model.embed_tokens.weight[token, channel] = massive
    return model


def _pearson_kurtosis(x: torch.Tensor) -> float:
    x = x.double().flatten()
    centred = x - x.mean()
    return float((centred**4).mean() / (centred**2).mean() ** 2)


@pytest.mark.parametrize("batch_size,side", [(1, "right"), (3, "left")])
def test_planted_massive_activation(batch_size, side):
    token, channel, massive = 7, 5, 300.0
    model = _identity_layers_model(massive, token, channel)
    samples = random_samples(LENGTHS)
    samples[2][4] = token  # make sure the token occurs: sample 2, position 4
    result = compute_activation_stats(model, make_batches(samples, batch_size, padding_side=side), top_k=3)
    embeds = model.model.embed_tokens.weight.detach()[torch.tensor(sum(samples, []))]  # [N, D] real tokens only
    expected_kurtosis = _pearson_kurtosis(embeds)
    for layer in result["layers"]:
        assert layer["kurtosis"] == pytest.approx(expected_kurtosis, rel=1e-9)
        assert layer["excess_kurtosis"] == pytest.approx(expected_kurtosis - 3.0, rel=1e-9)
        assert layer["max_abs"] == pytest.approx(massive)
        top = layer["top"][0]
        assert (top["value"], top["channel"], top["token_id"]) == (pytest.approx(massive), channel, token)
        occurrences = [(i, p) for i, s in enumerate(samples) for p, t in enumerate(s) if t == token]
        assert (top["sample"], top["position"]) in occurrences
        median = float(embeds.abs().median())
        assert layer["max_to_median"] == pytest.approx(massive / median, rel=0.01)
    assert expected_kurtosis > 100  # the planted value dominates, as with real massive activations


def test_kurtosis_of_gaussian_hidden_states_is_three():
    """Sanity of the definition: Pearson kurtosis of Gaussian samples is 3 (excess 0)."""
    model = tiny_llama(hidden_size=256, intermediate_size=64, num_attention_heads=4)
    with torch.no_grad():
        for layer in decoder_layers(model):
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        model.model.embed_tokens.weight.normal_()
    result = compute_activation_stats(model, make_batches(random_samples([40, 40]), 2))
    assert result["kurtosis_per_layer"][0] == pytest.approx(3.0, abs=0.15)


def test_perplexity_matches_hand_computation():
    model = tiny_llama()
    samples = random_samples(LENGTHS)
    nll, count = 0.0, 0
    with torch.no_grad():
        for sample in samples:
            ids = torch.tensor([sample])
            logp = torch.log_softmax(model(ids).logits[0, :-1].double(), dim=-1)
            nll -= float(logp[torch.arange(len(sample) - 1), ids[0, 1:]].sum())
            count += len(sample) - 1
    for batch_size, side in LAYOUTS:
        result = compute_perplexity(model, make_batches(samples, batch_size, padding_side=side))
        assert result["tokens"] == count
        assert result["perplexity"] == pytest.approx(math.exp(nll / count), rel=1e-5)


@pytest.mark.parametrize("factory", [tiny_llama, tiny_gpt2, tiny_sigmoid], ids=["llama", "gpt2", "sigmoid"])
def test_padding_and_batch_size_do_not_change_real_models(factory):
    """Real eager softmax attention (the model is switched from sdpa to eager by the analysis), and the
    unnormalised weights of sigmoid attention, measured as they are."""
    model = factory()
    samples = random_samples(LENGTHS, seed=1)
    results = []
    for batch_size, side in LAYOUTS:
        observers = [SinkObserver(), SparsityObserver(), ActivationObserver(top_k=3), PerplexityObserver()]
        run_pass(model, make_batches(samples, batch_size, padding_side=side), observers)
        sink, sparsity, act, ppl = (o.result() for o in observers)
        results.append((sink["first_token_mass_per_head"], sink["other_token_mass_per_layer"],
                        sparsity["sparsity_per_head"], act["kurtosis_per_layer"],
                        act["max_abs_per_layer"], ppl["perplexity"], [l["top"][0]["channel"] for l in act["layers"]]))
    assert model.config._attn_implementation == "eager"
    reference = results[0]
    for other in results[1:]:
        for ref_value, value in zip(reference, other):
            assert torch.allclose(torch.tensor(ref_value, dtype=torch.float64),
                                  torch.tensor(value, dtype=torch.float64), rtol=1e-5, atol=1e-6)


def test_attention_maps_are_dropped_after_reduction():
    """The hooks replace each layer's weights by None, so the model output keeps no attention map."""
    model = tiny_llama()
    seen = []

    class Spy:
        def on_attention(self, layer, weights, batch):
            seen.append((layer, tuple(weights.shape)))

    captured = {}
    handle = model.register_forward_hook(lambda m, a, out: captured.update(out=out))
    run_pass(model, make_batches(random_samples([6, 4]), 2), [Spy()])
    handle.remove()
    assert seen == [(0, (2, 4, 6, 6)), (1, (2, 4, 6, 6))]
    attentions = captured["out"].attentions
    assert attentions is None or all(a is None for a in attentions) or len(attentions) == 0


def test_other_token_sinks_name_the_token_and_leave_the_first_position_out():
    """Head 0 attends to the latest key holding token 7 (past the first position), else to itself;
    head 1 puts everything on the first token, which the first-token metric counts, not this one."""
    from softpick.analysis.data import Batch

    ids = torch.tensor([[5, 7, 9, 7, 4, 3], [0, 6, 7, 8, 9, 2]])  # row 1 is left-padded by one
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [0, 1, 1, 1, 1, 1]])
    batch = Batch(ids, mask, (mask.cumsum(-1) - 1).clamp(min=0), 0)
    weights = torch.zeros(2, 2, 6, 6)
    for b in range(2):
        first = int(mask[b].argmax())
        for i in range(first, 6):
            sevens = [j for j in range(first + 1, i + 1) if ids[b, j] == 7]
            weights[b, 0, i, sevens[-1] if sevens else i] = 1.0
            weights[b, 1, i, first] = 1.0
    observer = SinkObserver(eps=0.3)
    observer.on_attention(0, weights, batch)

    class Tok:
        def decode(self, ids):
            return f"<{ids[0]}>"

    result = observer.result(Tok())
    assert result["first_token_mass_per_head"] == [pytest.approx([2 / 11, 1.0])]  # 11 real queries
    assert result["sink_rate"] == 50.0
    # 9 of the 11 queries see a 7 past their first position: 5 in row 0 (from i = 1), 4 in row 1 (from i = 2)
    assert result["other_token_sinks"] == [{"layer": 0, "head": 0, "token_id": 7, "token": "<7>", "mass": pytest.approx(9 / 11)}]
    assert result["other_token_sink_rate"] == 50.0 and result["other_token_mass_per_layer"] == [pytest.approx(9 / 11)]


def test_sigmoid_attention_is_measured_on_its_unnormalised_weights():
    """Sink mass and sparsity read sigmoid's weights sigmoid(s - ln n) as they are: the first-token mass
    is that weight (not a share of a row sum), and sparsity counts weights at or below the threshold:
    sigmoid never gives an exact zero, and with random weights none comes near 1e-5."""
    model = tiny_sigmoid()
    batches = make_batches(random_samples(LENGTHS, seed=2), 2)
    sink, sparsity = SinkObserver(), SparsityObserver()
    run_pass(model, batches, [sink, sparsity])
    sink, sparsity = sink.result(), sparsity.result()
    n = model.config.max_position_embeddings
    for mass in sink["first_token_mass_per_head"]:  # random weights: scores near 0, weights near 1 / (n + 1)
        assert all(0 < m < 0.05 for m in mass) and any(m > 0.5 / (n + 1) for m in mass)
    assert sparsity["sparsity"] == 0.0
