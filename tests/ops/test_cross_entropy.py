"""Chunked linear cross-entropy against the plain LM head + F.cross_entropy: values, grads, compile."""

import pytest
import torch
import torch.nn.functional as F

from softpick.ops.cross_entropy import linear_cross_entropy, shifted_labels


def _plain(hidden, weight, labels):
    return F.cross_entropy(F.linear(hidden, weight).float(), labels, ignore_index=-100)


def _inputs(n=37, h=16, v=50, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(n, h, generator=g, dtype=dtype, requires_grad=True)
    weight = (torch.randn(v, h, generator=g) * 0.3).to(dtype).requires_grad_()
    labels = torch.randint(0, v, (n,), generator=g)
    labels[::5] = -100
    return hidden, weight, labels


@pytest.mark.parametrize("chunk, compiled", [(1, False), (8, False), (37, False), (100, False), (8, True)])
def test_matches_plain_loss_and_grads(chunk, compiled, monkeypatch):
    hidden, weight, labels = _inputs()
    expected = _plain(hidden, weight, labels)
    eh, ew = torch.autograd.grad(expected * 3.0, (hidden, weight))
    if compiled:  # the per-chunk function compiled inside (aot_eager: no C++ compiler needed)
        import softpick.ops.cross_entropy as ce

        monkeypatch.setattr(ce, "_compiled_chunk",
                            torch.compile(ce._chunk_loss_and_grad, backend="aot_eager", dynamic=False))
    loss = linear_cross_entropy(hidden, weight, labels, chunk_tokens=chunk, compiled=compiled)
    gh, gw = torch.autograd.grad(loss * 3.0, (hidden, weight))
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(gh, eh, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(gw, ew, rtol=1e-5, atol=1e-6)
    assert loss.dtype == torch.float32 and gh.dtype == hidden.dtype and gw.dtype == weight.dtype


def test_autocast_bf16_matches_plain_path():
    """Under CPU bf16 autocast: fp32 hidden and weight in, bf16 matmuls, float32 loss and weight grad."""
    hidden, weight, labels = _inputs(n=64, h=32, v=96)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        expected = _plain(hidden, weight, labels)
        loss = linear_cross_entropy(hidden, weight, labels, chunk_tokens=16)
    eh, ew = torch.autograd.grad(expected, (hidden, weight))
    gh, gw = torch.autograd.grad(loss, (hidden, weight))
    torch.testing.assert_close(loss, expected, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(gh, eh, rtol=2e-2, atol=1e-4)
    torch.testing.assert_close(gw, ew, rtol=2e-2, atol=1e-4)
    assert gw.dtype == torch.float32


def test_edge_cases():
    hidden, weight, labels = _inputs(n=4)
    assert torch.isnan(linear_cross_entropy(hidden, weight, torch.full((4,), -100)))  # as F.cross_entropy
    with torch.no_grad():  # no grad wanted: no gradient buffers, same value
        torch.testing.assert_close(linear_cross_entropy(hidden, weight, labels), _plain(hidden, weight, labels))
    with pytest.raises(ValueError, match="share H"):
        linear_cross_entropy(hidden, weight[:, :3], labels)
    with pytest.raises(ValueError, match=r"labels must be \[N\] = \[4\]"):
        linear_cross_entropy(hidden, weight, labels[:3])
    assert shifted_labels(torch.tensor([[5, 6, 7]])).tolist() == [[6, 7, -100]]


def test_traces_whole_with_torch_compile():
    hidden, weight, labels = _inputs()
    compiled = torch.compile(lambda h, w, y: linear_cross_entropy(h, w, y, chunk_tokens=16), backend="aot_eager",
                             fullgraph=True)
    loss = compiled(hidden, weight, labels)
    loss.backward()
    torch.testing.assert_close(loss, _plain(hidden, weight, labels), rtol=1e-5, atol=1e-6)
    assert hidden.grad is not None and weight.grad is not None
