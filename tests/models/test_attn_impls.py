"""The model gives the same loss and gradients whichever kernel family runs its attention."""

import pytest
import torch

from tiny_models import VOCAB, tiny_model


def loss_and_grads(model, ids, **kwargs):
    model.zero_grad()
    loss = model(ids, labels=ids, **kwargs).loss
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("packed", [False, True], ids=["dense", "packed"])
def test_triton_matches_naive(attn_type, packed):
    """Runs the Triton kernels in the interpreter on CPU (TRITON_INTERPRET=1 from tests/conftest.py)."""
    naive = tiny_model(attn_type=attn_type, attn_impl="naive").train()
    triton = tiny_model(attn_type=attn_type, attn_impl="triton").train()
    triton.load_state_dict(naive.state_dict())
    ids = torch.randint(3, VOCAB, (1 if packed else 2, 24))
    kwargs = {"cu_seqlens": torch.tensor([0, 7, 24], dtype=torch.int32)} if packed else {}
    ref_loss, ref_grads = loss_and_grads(naive, ids, **kwargs)
    loss, grads = loss_and_grads(triton, ids, **kwargs)
    torch.testing.assert_close(loss, ref_loss, atol=1e-5, rtol=1e-5)
    for name, grad in grads.items():
        torch.testing.assert_close(grad, ref_grads[name], atol=1e-5, rtol=1e-4, msg=name)


@torch.no_grad()
def test_sdpa_matches_naive_with_padding_and_cache():
    naive = tiny_model(attn_type="softmax", attn_impl="naive")
    sdpa = tiny_model(attn_type="softmax", attn_impl="sdpa")
    sdpa.load_state_dict(naive.state_dict())
    ids = torch.randint(3, VOCAB, (2, 9))
    mask = torch.ones_like(ids)
    mask[1, :3] = 0
    real = mask.bool()
    torch.testing.assert_close(sdpa(ids).logits, naive(ids).logits, atol=1e-5, rtol=1e-5)
    padded = [model(ids, attention_mask=mask).logits[real] for model in (sdpa, naive)]
    torch.testing.assert_close(padded[0], padded[1], atol=1e-5, rtol=1e-5)
    prompt = ids[:1, :4]
    generated = [model.generate(prompt, max_new_tokens=5, do_sample=False) for model in (sdpa, naive)]
    assert torch.equal(generated[0], generated[1])


@pytest.mark.slow
@torch.no_grad()
def test_triton_kv_cache_generation_matches_naive(attn_type):
    """generate() on the Triton kernels (prefill: training kernel or, with padding, the KV-cache kernel;
    decode steps: the KV-cache kernel) gives the naive model's logits and tokens, batched with left padding."""
    naive = tiny_model(attn_type=attn_type, attn_impl="naive", eos_token_id=None)
    triton = tiny_model(attn_type=attn_type, attn_impl="triton", eos_token_id=None)
    triton.load_state_dict(naive.state_dict())
    prompts = [torch.randint(3, VOCAB, (n,)) for n in (5, 11, 8)]
    width = max(len(p) for p in prompts)
    batch = torch.zeros(len(prompts), width, dtype=torch.long)
    mask = torch.zeros_like(batch)
    for row, p in enumerate(prompts):
        batch[row, width - len(p):] = p
        mask[row, width - len(p):] = 1
    outs = [model.generate(batch, attention_mask=mask, max_new_tokens=6, do_sample=False, output_logits=True,
                           return_dict_in_generate=True) for model in (naive, triton)]
    assert torch.equal(outs[0].sequences, outs[1].sequences)
    for ref, got in zip(outs[0].logits, outs[1].logits):
        torch.testing.assert_close(got, ref, atol=1e-4, rtol=1e-4)
    alone = triton.generate(prompts[1][None], max_new_tokens=6, do_sample=False)
    assert torch.equal(alone[0, len(prompts[1]):], outs[1].sequences[1, width:])
    sampled = []
    for model in (naive, triton):
        torch.manual_seed(5)
        sampled.append(model.generate(batch, attention_mask=mask, max_new_tokens=6, do_sample=True, top_k=10))
    assert torch.equal(sampled[0], sampled[1])
