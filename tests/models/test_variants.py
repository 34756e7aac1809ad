"""Sink-free attention variants as switches: every combination trains, saves, decodes and runs on the kernels."""

import itertools

import pytest
import torch

from softpick.models import SoftpickConfig, SoftpickForCausalLM
from softpick.models.configuration_softpick import ATTN_TYPES, OUTPUT_GATES

from tiny_models import VOCAB, activate_variant_parameters, tiny_model

COMBOS = list(itertools.product(ATTN_TYPES, (False, True), OUTPUT_GATES))


def combo_id(combo) -> str:
    attn, ssmax, gate = combo
    return f"{attn}{'-ssmax' if ssmax else ''}{f'-{gate}' if gate else ''}"


def variant_model(attn, ssmax, gate, **overrides):
    return activate_variant_parameters(
        tiny_model(attn_type=attn, ssmax=ssmax, output_gate=gate, eos_token_id=None, **overrides))


@pytest.mark.parametrize("combo", COMBOS, ids=combo_id)
def test_every_combination_trains_saves_and_decodes(combo, tmp_path):
    model = variant_model(*combo)
    ids = torch.randint(3, VOCAB, (2, 12))
    model.train()
    loss = model(ids, labels=ids).loss
    loss.backward()
    assert torch.isfinite(loss)
    named = dict(model.named_parameters())
    attn, ssmax, gate = combo
    assert ("model.layers.0.self_attn.sinks" in named) == (attn == "sink")
    assert ("model.layers.0.self_attn.ssmax_scale" in named) == ssmax
    assert ("model.layers.0.self_attn.g_proj.weight" in named) == (gate is not None)
    for name in ("sinks", "ssmax_scale"):
        if hasattr(model.model.layers[0].self_attn, name):
            grad = getattr(model.model.layers[0].self_attn, name).grad
            assert grad is not None and grad.abs().sum() > 0, name
    model.eval()
    model.save_pretrained(tmp_path)
    again = SoftpickForCausalLM.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        torch.testing.assert_close(again(ids).logits, model(ids).logits)

    # cached decoding of a left-padded batch equals the full forward (ssmax counts real keys only)
    mask = torch.ones_like(ids)
    mask[0, :4] = 0
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        full = model(ids, attention_mask=mask, position_ids=positions, use_cache=False).logits
        out = model(ids[:, :8], attention_mask=mask[:, :8], position_ids=positions[:, :8], use_cache=True)
        cache, steps = out.cache if hasattr(out, "cache") else out.past_key_values, [out.logits]
        for t in range(8, 12):
            steps.append(model(ids[:, t:t + 1], attention_mask=mask[:, :t + 1], position_ids=positions[:, t:t + 1],
                               past_key_values=cache, use_cache=True).logits)
    real = mask.bool()
    torch.testing.assert_close(torch.cat(steps, 1)[real], full[real], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("combo", [("softpick", True, "elementwise"), ("sink", True, "headwise"),
                                   ("softmax_plus_one", False, None), ("sigmoid", True, None)], ids=combo_id)
def test_triton_kernels_give_the_naive_loss_and_gradients(combo):
    naive = variant_model(*combo, attn_impl="naive").train()
    triton = variant_model(*combo, attn_impl="triton").train()
    triton.load_state_dict(naive.state_dict())
    ids = torch.randint(3, VOCAB, (1, 24))
    cu = torch.tensor([0, 9, 24], dtype=torch.int32)
    grads = []
    for model in (naive, triton):
        model.zero_grad()
        loss = model(ids, labels=ids, cu_seqlens=cu).loss
        loss.backward()
        grads.append((loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}))
    torch.testing.assert_close(grads[1][0], grads[0][0], atol=1e-5, rtol=1e-5)
    for name, grad in grads[1][1].items():
        torch.testing.assert_close(grad, grads[0][1][name], atol=1e-5, rtol=1e-4, msg=name)


@torch.no_grad()
def test_ssmax_counts_the_keys_of_each_packed_document():
    """With packed documents, a document's logits equal those of the document alone (n restarts per document)."""
    model = variant_model("softpick", True, None, attn_impl="naive")
    a, b = torch.randint(3, VOCAB, (1, 7)), torch.randint(3, VOCAB, (1, 10))
    packed = model(torch.cat([a, b], 1), cu_seqlens=torch.tensor([0, 7, 17], dtype=torch.int32)).logits
    torch.testing.assert_close(packed[:, 7:], model(b).logits, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(packed[:, :7], model(a).logits, atol=1e-5, rtol=1e-5)


@torch.no_grad()
@pytest.mark.parametrize("attn", ["softmax_plus_one", "sink"])
def test_sink_variants_attend_to_less_than_everything(attn):
    model = variant_model(attn, False, None)
    out = model(torch.randint(3, VOCAB, (1, 10)), output_attentions=True)
    for weights in out.attentions:  # [B, HQ, T, T]
        assert (weights.sum(-1) < 1).all() and (weights >= 0).all()


def test_plain_softmax_has_exactly_llamas_parameters():
    names = {n for n, _ in tiny_model(attn_type="softmax").named_parameters()}
    assert not any(key in n for n in names for key in ("sinks", "ssmax", "g_proj"))


@pytest.mark.parametrize("field, value, message", [
    ("attn_type", "softmax+1", "attn_type must be one of"),
    ("output_gate", "channel", "output_gate must be one of"),
    ("ssmax", "yes", "ssmax must be true or false"),
])
def test_bad_switches_raise(field, value, message):
    with pytest.raises(ValueError, match=message):
        SoftpickConfig(**{field: value})
