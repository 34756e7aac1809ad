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
