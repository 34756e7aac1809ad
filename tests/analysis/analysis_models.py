"""Tiny models for the analysis tests: random Llama / GPT-2 / softpick, and planted attention."""

import torch
import transformers
from transformers.models.llama import modeling_llama

VOCAB = 50


def tiny_llama(**overrides) -> transformers.LlamaForCausalLM:
    fields = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=128)
    fields.update(overrides)
    return transformers.LlamaForCausalLM(transformers.LlamaConfig(**fields)).eval()


def tiny_gpt2() -> transformers.GPT2LMHeadModel:
    config = transformers.GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=128,
                                     bos_token_id=0, eos_token_id=0)
    return transformers.GPT2LMHeadModel(config).eval()


def tiny_sigmoid() -> torch.nn.Module:
    """A random 2-layer softpick-package model with sigmoid attention (unnormalised weights)."""
    from softpick.models import SoftpickConfig, SoftpickForCausalLM

    torch.manual_seed(0)
    config = SoftpickConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                            attn_type="sigmoid")
    return SoftpickForCausalLM(config).eval()


def random_samples(lengths: list[int], seed: int = 0) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(1, VOCAB, (n,), generator=g).tolist() for n in lengths]


# Planted attention: for query i with visible keys f..i (f = the sample's first real token):
#   weight on f = HEAD_MASS[h] (1 when i == f); the rest is spread evenly over the keys j in f+1..i
#   with (i - j) even; keys with (i - j) odd get exactly 0.
HEAD_MASS = (0.05, 0.6, 0.9, 0.1)


def planted_weights(allowed: torch.Tensor, heads: int) -> torch.Tensor:
    """allowed: bool [B, 1, T, T] -> weights [B, heads, T, T] as described above."""
    B, _, T, _ = allowed.shape
    allowed = allowed.expand(B, 1, T, T)
    first = allowed.int().argmax(dim=-1, keepdim=True)  # [B, 1, T, 1] first visible key of each query
    idx = torch.arange(T)
    is_first = idx.view(1, 1, 1, T) == first
    even = ((idx.view(T, 1) - idx.view(1, T)) % 2 == 0).view(1, 1, T, T)
    rest = allowed & even & ~is_first
    n_rest = rest.sum(-1, keepdim=True)
    mass = torch.tensor(HEAD_MASS[:heads]).view(1, heads, 1, 1)
    on_first = torch.where(n_rest > 0, mass, torch.ones_like(mass))
    weights = on_first * is_first + (1 - on_first) * rest / n_rest.clamp(min=1)
    return weights * allowed.any(-1, keepdim=True)  # fully masked (padded) rows get 0


def planted_attention_forward(module, query, key, value, attention_mask, scaling, dropout=0.0, **kwargs):
    """Drop-in for Llama's eager_attention_forward returning the planted weights."""
    B, H, T, _ = query.shape
    if attention_mask is None:
        allowed = torch.ones(T, T, dtype=torch.bool).tril()[None, None]
    elif attention_mask.dtype == torch.bool:
        allowed = attention_mask
    else:
        allowed = attention_mask > torch.finfo(attention_mask.dtype).min / 2
    weights = planted_weights(allowed[:, :, -T:, :], H).to(query.dtype)
    value = modeling_llama.repeat_kv(value, module.num_key_value_groups)
    return (weights @ value).transpose(1, 2).contiguous(), weights


def expected_first_mass(lengths: list[int]) -> list[float]:
    """Mean first-token weight per head over all real queries of samples of these lengths."""
    queries = sum(lengths)
    return [(len(lengths) + (queries - len(lengths)) * m) / queries for m in HEAD_MASS]


def expected_sparsity(lengths: list[int]) -> float:
    """Percent of causal entries that are 0: query at offset r >= 1 has floor(r / 2) zero keys."""
    zeros = sum(r // 2 for n in lengths for r in range(1, n))
    entries = sum(n * (n + 1) // 2 for n in lengths)
    return 100.0 * zeros / entries
