"""SoftpickConfig: derived defaults, one clear error per bad field, the shipped JSON configs."""

from pathlib import Path

import pytest
import torch
from transformers import AutoConfig

from softpick.models import SoftpickConfig, SoftpickForCausalLM, load_config

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def test_derived_defaults():
    config = SoftpickConfig()
    assert (config.hidden_size, config.num_hidden_layers, config.num_attention_heads) == (1024, 24, 16)
    assert config.intermediate_size == 2816  # fla: int(1024 * 8 / 3) = 2730, rounded up to 256
    assert config.head_dim == 64 and config.num_key_value_heads == 16
    assert config.initializer_range == 0.006 and config.tie_word_embeddings is False
    assert config.attn_type == "softpick" and config.attn_impl is None and config.softpick_eps == 1e-6
    assert SoftpickConfig(hidden_size=2048, num_attention_heads=32).intermediate_size == 5632


def test_explicit_head_dim_need_not_divide_hidden():
    config = SoftpickConfig(hidden_size=100, num_attention_heads=3, head_dim=32)
    assert config.head_dim == 32


@pytest.mark.parametrize(
    "fields, needle",
    [
        (dict(attn_type="sinks"), "'sinks'"),
        (dict(attn_impl="flash"), "'flash'"),
        (dict(attn_impl="sdpa"), "sdpa"),
        (dict(hidden_size=100, num_attention_heads=3), "(100)"),
        (dict(num_attention_heads=16, num_key_value_heads=5), "(5)"),
        (dict(hidden_size=96, num_attention_heads=32), "head_dim must be even for RoPE, got 3"),
        (dict(num_hidden_layers=0), "num_hidden_layers must be a positive integer, got 0"),
        (dict(vocab_size=-1), "vocab_size must be a positive integer, got -1"),
        (dict(hidden_act="swish2"), "'swish2'"),
        (dict(rope_theta=0.0), "rope_theta must be a positive number, got 0.0"),
        (dict(softpick_eps=-1e-6), "softpick_eps must be a number >= 0, got -1e-06"),
    ],
    ids=lambda x: "-".join(f"{k}={v}" for k, v in x.items()) if isinstance(x, dict) else None,
)
def test_bad_values_raise_one_clear_error(fields, needle):
    with pytest.raises(ValueError) as info:
        SoftpickConfig(**fields)
    assert needle in str(info.value)


def test_sdpa_is_allowed_for_softmax():
    assert SoftpickConfig(attn_type="softmax", attn_impl="sdpa").attn_impl == "sdpa"


@pytest.mark.parametrize("size, layers, hidden, heads", [("340M", 24, 1024, 16), ("1B", 32, 2048, 32)])
def test_paper_configs(size, layers, hidden, heads):
    for name, attn_type in (("softpick", "softpick"), ("vanilla", "softmax")):
        config = AutoConfig.from_pretrained(str(CONFIGS / f"{name}_transformer_{size}.json"))
        assert isinstance(config, SoftpickConfig) and config.attn_type == attn_type
        assert (config.num_hidden_layers, config.hidden_size, config.num_attention_heads) == (layers, hidden, heads)
        assert (config.vocab_size, config.max_position_embeddings, config.rope_theta) == (32000, 8192, 10000.0)
        assert config.initializer_range == 0.006 and not config.tie_word_embeddings
    with torch.device("meta"):
        model = SoftpickForCausalLM(load_config(CONFIGS / f"softpick_transformer_{size}.json"))
    expected = {"340M": 373_867_520, "1B": 1_775_372_288}[size]  # embeddings and lm_head included
    assert model.num_parameters() == expected


def test_tiny_configs_load_from_file_and_dir(tmp_path):
    softpick = load_config(CONFIGS / "softpick_transformer_tiny.json")
    vanilla = load_config(CONFIGS / "vanilla_transformer_tiny.json", attn_impl="naive")
    assert softpick.attn_type == "softpick" and vanilla.attn_type == "softmax" and vanilla.attn_impl == "naive"
    assert softpick.vocab_size == 8192
    softpick.save_pretrained(tmp_path)
    assert load_config(tmp_path).to_dict() == softpick.to_dict()
