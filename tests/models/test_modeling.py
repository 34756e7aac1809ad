"""SoftpickForCausalLM: Llama parity, save/load, attention maps, packed documents, loss, argument errors."""

import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

from softpick.models import CACHE_FIELD, SoftpickForCausalLM, SoftpickModel
from softpick.models.modeling_softpick import apply_rotary
from softpick.ops.attention.naive import naive_attention

from tiny_models import VOCAB, tiny_config, tiny_model


def llama_twin(model: SoftpickForCausalLM) -> LlamaForCausalLM:
    """A LlamaForCausalLM of the same shape holding our weights (strict: same names, same shapes)."""
    c = model.config
    config = LlamaConfig(
        vocab_size=c.vocab_size, hidden_size=c.hidden_size, intermediate_size=c.intermediate_size,
        num_hidden_layers=c.num_hidden_layers, num_attention_heads=c.num_attention_heads,
        num_key_value_heads=c.num_key_value_heads, head_dim=c.head_dim, hidden_act=c.hidden_act,
        max_position_embeddings=c.max_position_embeddings, rms_norm_eps=c.rms_norm_eps,
        rope_parameters={"rope_type": "default", "rope_theta": c.rope_theta}, tie_word_embeddings=False,
        attn_implementation="eager",
    )
    llama = LlamaForCausalLM(config).eval()
    llama.load_state_dict(model.state_dict(), strict=True)
    return llama


def test_module_tree_is_llamas():
    model = tiny_model()
    llama = llama_twin(model)
    assert [n for n, _ in model.named_parameters()] == [n for n, _ in llama.named_parameters()]
    assert not model.model.layers[0].self_attn.q_proj.bias  # no biases anywhere
    std = model.model.layers[1].mlp.up_proj.weight.std().item()
    assert abs(std - model.config.initializer_range) < 0.1 * model.config.initializer_range


@torch.no_grad()
def test_softmax_model_matches_llama_logits():
    model = tiny_model(attn_type="softmax")
    llama = llama_twin(model)
    ids = torch.randint(3, VOCAB, (2, 13))
    torch.testing.assert_close(model(ids).logits, llama(ids).logits, atol=1e-5, rtol=1e-5)

    mask = torch.ones_like(ids)
    mask[0, :4] = 0  # left padding
    mask[1, 10:] = 0  # right padding
    ours, theirs = model(ids, attention_mask=mask).logits, llama(ids, attention_mask=mask).logits
    real = mask.bool()  # padded query rows are not compared (they see nothing or only padding)
    real[0, :4] = False
    torch.testing.assert_close(ours[real], theirs[real], atol=1e-5, rtol=1e-5)


@torch.no_grad()
def test_save_and_load_round_trip(tmp_path, attn_type):
    model = tiny_model(attn_type=attn_type)
    ids = torch.randint(3, VOCAB, (2, 9))
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists()
    config = AutoConfig.from_pretrained(tmp_path)
    assert config.model_type == "softpick_transformer" and config.attn_type == attn_type
    for loader in (SoftpickForCausalLM, AutoModelForCausalLM):
        loaded = loader.from_pretrained(tmp_path).eval()
        assert type(loaded) is SoftpickForCausalLM
        torch.testing.assert_close(loaded(ids).logits, model(ids).logits, atol=0, rtol=0)
    base = AutoModel.from_pretrained(tmp_path).eval()
    assert type(base) is SoftpickModel
    torch.testing.assert_close(base(ids).last_hidden_state, model.model(ids).last_hidden_state, atol=0, rtol=0)
    override = AutoModelForCausalLM.from_pretrained(tmp_path, attn_impl="naive")
    assert override.model.layers[0].self_attn.attn_impl == "naive"


@torch.no_grad()
def test_attention_maps_match_the_naive_reference(attn_type):
    """output_attentions gives [B, HQ, T, T] per layer; hooks on self_attn see them as output[1]."""
    model = tiny_model(attn_type=attn_type)
    ids = torch.randint(3, VOCAB, (2, 11))
    seen = {}

    def keep(module, args, kwargs, output):
        seen["input"], seen["pos"] = kwargs["hidden_states"], kwargs["position_embeddings"]
        seen["weights"] = output[1]

    attn = model.model.layers[1].self_attn
    handle = attn.register_forward_hook(keep, with_kwargs=True)
    out = model(ids, output_attentions=True)
    handle.remove()
    assert len(out.attentions) == 2 and out.attentions[1].shape == (2, 4, 11, 11)
    assert seen["weights"] is out.attentions[1]

    B, T, _ = seen["input"].shape
    q = attn.q_proj(seen["input"]).view(B, T, 4, 16)
    k = attn.k_proj(seen["input"]).view(B, T, 2, 16)
    v = attn.v_proj(seen["input"]).view(B, T, 2, 16)
    cos, sin = seen["pos"]
    _, ref = naive_attention(
        apply_rotary(q, cos, sin), apply_rotary(k, cos, sin), v, variant=attn_type, return_weights=True
    )
    torch.testing.assert_close(out.attentions[1], ref)
    assert bool((ref.triu(1) == 0).all())
    if attn_type == "softpick":
        assert bool((ref >= 0).all()) and bool((ref.sum(-1) <= 1 + 1e-6).all())
    torch.testing.assert_close(out.logits, model(ids).logits)  # the maps do not change the output
    assert model(ids).attentions is None


@torch.no_grad()
def test_packed_documents_equal_separate_forwards(attn_type):
    model = tiny_model(attn_type=attn_type)
    lengths = [5, 9, 3]
    docs = [torch.randint(3, VOCAB, (1, n)) for n in lengths]
    cu_seqlens = torch.tensor([0, 5, 14, 17], dtype=torch.int32)
    packed = model(torch.cat(docs, dim=1), cu_seqlens=cu_seqlens).logits
    separate = torch.cat([model(doc).logits for doc in docs], dim=1)
    torch.testing.assert_close(packed, separate, atol=1e-5, rtol=1e-5)
    # the longest document given by the caller reaches the attention op (which checks it in eager mode)
    torch.testing.assert_close(model(torch.cat(docs, dim=1), cu_seqlens=cu_seqlens, max_seqlen=9).logits, packed)
    with pytest.raises(ValueError, match="max_seqlen must be at least the longest document of cu_seqlens, 9, got 5"):
        model(torch.cat(docs, dim=1), cu_seqlens=cu_seqlens, max_seqlen=5)


def test_loss_is_shifted_mean_cross_entropy_and_decreases(attn_type):
    model = tiny_model(attn_type=attn_type).train()
    ids = torch.randint(3, VOCAB, (4, 16))
    labels = ids.clone()
    labels[:, :3] = -100
    out = model(ids, labels=labels)
    expected = F.cross_entropy(out.logits[:, :-1].reshape(-1, VOCAB), labels[:, 1:].reshape(-1), ignore_index=-100)
    torch.testing.assert_close(out.loss, expected)
    assert CACHE_FIELD not in out  # training forwards build no KV cache

    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(8):
        loss = model(ids, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0], losses


def test_gradient_checkpointing_gives_the_same_gradients():
    model = tiny_model().train()
    ids = torch.randint(3, VOCAB, (2, 10))
    model(ids, labels=ids).loss.backward()
    plain = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    model.gradient_checkpointing_enable()
    model(ids, labels=ids).loss.backward()
    for a, p in zip(plain, model.parameters()):
        torch.testing.assert_close(p.grad, a)


@torch.no_grad()
def test_embeds_tuples_and_logits_to_keep():
    model = tiny_model()
    ids = torch.randint(3, VOCAB, (2, 7))
    full = model(ids, use_cache=False)
    torch.testing.assert_close(model(inputs_embeds=model.model.embed_tokens(ids)).logits, full.logits)
    torch.testing.assert_close(model(ids, logits_to_keep=1).logits, full.logits[:, -1:])
    torch.testing.assert_close(model(ids, logits_to_keep=torch.tensor([0, 3])).logits, full.logits[:, [0, 3]])
    as_tuple = model(ids, use_cache=False, return_dict=False)
    assert isinstance(as_tuple, tuple)
    torch.testing.assert_close(as_tuple[0], full.logits)
    hidden = model(ids, output_hidden_states=True).hidden_states
    assert len(hidden) == 3 and hidden[-1].shape == (2, 7, 64)


def test_bad_arguments_raise():
    model = tiny_model()
    ids = torch.randint(3, VOCAB, (1, 6))
    cu_seqlens = torch.tensor([0, 2, 6])
    with pytest.raises(ValueError, match="cu_seqlens"):
        model(ids, cu_seqlens=cu_seqlens, attention_mask=torch.ones_like(ids))
    with pytest.raises(ValueError, match="2-D"):
        model(ids, attention_mask=torch.ones(1, 1, 6, 6))
    with pytest.raises(ValueError, match="exactly one"):
        model()
    with pytest.raises(TypeError, match="attention_masks"):
        model(ids, attention_masks=torch.ones_like(ids))


@pytest.mark.slow
def test_checkpoint_loads_with_trust_remote_code_without_importing_softpick(tmp_path):
    """The way lm-eval loads a model: a fresh process, only transformers imported."""
    model = tiny_model()
    model.save_pretrained(tmp_path)
    ids = torch.arange(3, 12)[None]
    torch.save(model(ids).logits.detach(), tmp_path / "logits.pt")
    script = (
        "import sys, torch\n"
        "from transformers import AutoModelForCausalLM\n"
        "assert 'softpick' not in sys.modules\n"
        f"model = AutoModelForCausalLM.from_pretrained({str(tmp_path)!r}, trust_remote_code=True).eval()\n"
        f"expected = torch.load({str(tmp_path / 'logits.pt')!r})\n"
        f"assert torch.equal(model(torch.arange(3, 12)[None]).logits, expected)\n"
        "print('ok')\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and result.stdout.strip().endswith("ok"), result.stderr[-2000:]


def test_meta_device_build_then_init_weights():
    """The trainer's path for large models: build on meta, allocate with to_empty, then init_weights()."""
    with torch.device("meta"):
        model = SoftpickForCausalLM(tiny_config(initializer_range=0.006))
    model.to_empty(device="cpu")
    model.init_weights()
    for name, p in model.named_parameters():
        if name.endswith("norm.weight"):
            assert bool((p == 1).all()), name
        else:
            assert abs(p.std().item() - 0.006) < 0.001 and abs(p.mean().item()) < 0.001, name
    ids = torch.randint(3, VOCAB, (1, 5))
    assert torch.isfinite(model(ids).logits).all()
