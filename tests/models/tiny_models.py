"""Tiny model factories shared by the model tests (2 layers, width 64: each forward takes milliseconds)."""

import torch

from softpick.models import SoftpickConfig, SoftpickForCausalLM

VOCAB = 97


def tiny_config(**overrides) -> SoftpickConfig:
    """A 2-layer, 64-wide config with 4 query heads and 2 key/value heads (GQA)."""
    fields = dict(
        vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=256, bos_token_id=1, eos_token_id=2, pad_token_id=0,
        initializer_range=0.05,  # larger than the paper's 0.006 so that logits differ visibly across tokens
    )
    fields.update(overrides)
    return SoftpickConfig(**fields)


def tiny_model(**overrides) -> SoftpickForCausalLM:
    torch.manual_seed(0)
    return SoftpickForCausalLM(tiny_config(**overrides)).eval()



def activate_variant_parameters(model: SoftpickForCausalLM) -> SoftpickForCausalLM:
    """Set the sink logits and SSMax scales (which start at neutral values) to spread values, so they matter."""
    with torch.no_grad():
        for layer in model.model.layers:
            attn = layer.self_attn
            if hasattr(attn, "sinks"):
                attn.sinks.copy_(torch.linspace(-1.0, 1.5, attn.num_heads))
            if hasattr(attn, "ssmax_scale"):
                attn.ssmax_scale.copy_(torch.linspace(0.3, 0.6, attn.num_heads))
    return model
