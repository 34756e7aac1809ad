"""fla's transformer format: config mapping, `softpick convert fla-to-hf`, and `--model.config` with fla json.

The checkpoints are built here in fla's key layout (``model.embeddings``, ``layers.N.attn.q_proj``,
``attn_norm``, ``mlp_norm``, SSMax ``attn.s`` and ``attn.logn``), and the reference logits come from a
forward written from fla's modeling code (not from our model), on the same weights.
"""

import json
import math

import pytest
import torch
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM, LlamaForCausalLM

from softpick import cli
from softpick.errors import UserError
from softpick.models import SoftpickForCausalLM
from softpick.models.fla import FLA_ATTN_IMPLS, config_from_fla, fla_intermediate_size
from softpick.models.loading import load_model_config

VOCAB, HIDDEN, HEADS, KV_HEADS, LAYERS, MAX_POS = 61, 64, 4, 2, 2, 32


def fla_config(attn_impl: str, **extra) -> dict:
    """A tiny config in fla's format, spelled as flame's configs are (including fields fla ignores)."""
    return {
        "attention_bias": False, "bos_token_id": 1, "eos_token_id": 2, "fuse_cross_entropy": True,
        "fuse_norm": True, "hidden_act": "swish", "hidden_size": HIDDEN, "hidden_ratio": 4,
        "initializer_range": 0.006, "max_position_embeddings": MAX_POS, "model_type": "transformer",
        "num_heads": HEADS, "num_kv_heads": KV_HEADS, "num_hidden_layers": LAYERS, "norm_eps": 1e-6,
        "tie_word_embeddings": False, "use_cache": True, "vocab_size": VOCAB, "attn_impl": attn_impl, **extra,
    }


def fla_weights(scaled: bool) -> dict[str, torch.Tensor]:
    """Random weights under fla's parameter names (std 0.1 so that attention is far from uniform)."""
    torch.manual_seed(1)
    d, inter, kv = HIDDEN // HEADS, fla_intermediate_size(HIDDEN, 4), KV_HEADS * (HIDDEN // HEADS)
    w = {"model.embeddings.weight": torch.randn(VOCAB, HIDDEN), "model.norm.weight": 1 + 0.1 * torch.randn(HIDDEN),
         "lm_head.weight": 0.1 * torch.randn(VOCAB, HIDDEN)}
    for i in range(LAYERS):
        p = f"model.layers.{i}."
        w |= {p + "attn_norm.weight": 1 + 0.1 * torch.randn(HIDDEN), p + "mlp_norm.weight": 1 + 0.1 * torch.randn(HIDDEN),
              p + "attn.q_proj.weight": 0.3 * torch.randn(HIDDEN, HIDDEN), p + "attn.k_proj.weight": 0.3 * torch.randn(kv, HIDDEN),
              p + "attn.v_proj.weight": 0.1 * torch.randn(kv, HIDDEN), p + "attn.o_proj.weight": 0.1 * torch.randn(HIDDEN, HIDDEN),
              p + "mlp.gate_proj.weight": 0.1 * torch.randn(inter, HIDDEN), p + "mlp.up_proj.weight": 0.1 * torch.randn(inter, HIDDEN),
              p + "mlp.down_proj.weight": 0.1 * torch.randn(HIDDEN, inter)}
        if scaled:
            w[p + "attn.s"] = 0.3 + 0.1 * torch.rand(HEADS, 1)
            w[p + "attn.logn"] = torch.log(torch.arange(2, MAX_POS * 4 + 2, dtype=torch.float32)[:, None, None])
    return w


def fla_reference_logits(w: dict[str, torch.Tensor], ids: torch.Tensor, attn_impl: str) -> torch.Tensor:
    """fla's TransformerForCausalLM forward, float64: pre-norm blocks, rotate-half RoPE, SwiGLU, no biases."""
    w = {k: v.double() for k, v in w.items()}
    d, T = HIDDEN // HEADS, ids.shape[1]

    def rms(x, weight):
        return weight * x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6)

    inv = 1.0 / 10000.0 ** (torch.arange(0, d, 2, dtype=torch.float64) / d)
    ang = torch.arange(T, dtype=torch.float64)[:, None] * inv  # [T, D/2]
    cos, sin = ang.cos().repeat(1, 2)[:, None], ang.sin().repeat(1, 2)[:, None]  # [T, 1, D]

    def rope(x):  # [B, T, H, D]
        x1, x2 = x[..., : d // 2], x[..., d // 2:]
        return x * cos + torch.cat((-x2, x1), -1) * sin

    causal = torch.ones(T, T, dtype=torch.bool).tril()
    x = w["model.embeddings.weight"][ids]
    for i in range(LAYERS):
        p = f"model.layers.{i}."
        h = rms(x, w[p + "attn_norm.weight"])
        q = (h @ w[p + "attn.q_proj.weight"].T).unflatten(-1, (HEADS, d))
        k = (h @ w[p + "attn.k_proj.weight"].T).unflatten(-1, (KV_HEADS, d)).repeat_interleave(HEADS // KV_HEADS, 2)
        v = (h @ w[p + "attn.v_proj.weight"].T).unflatten(-1, (KV_HEADS, d)).repeat_interleave(HEADS // KV_HEADS, 2)
        q, k = rope(q), rope(k)
        if "scaled" in attn_impl:
            q = q * w[p + "attn.s"] * w[p + "attn.logn"][:T]
        s = torch.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(d)
        if "softpick" in attn_impl:
            e = torch.where(causal, torch.exp(s) - 1, torch.zeros_like(s))
            a = e.clamp(min=0) / (e.abs().sum(-1, keepdim=True) + 1e-6)
        else:
            a = s.masked_fill(~causal, float("-inf")).softmax(-1)
        o = torch.einsum("bhqk,bkhd->bqhd", a, v).flatten(2)
        x = x + o @ w[p + "attn.o_proj.weight"].T
        h = rms(x, w[p + "mlp_norm.weight"])
        gate = h @ w[p + "mlp.gate_proj.weight"].T
        x = x + (torch.nn.functional.silu(gate) * (h @ w[p + "mlp.up_proj.weight"].T)) @ w[p + "mlp.down_proj.weight"].T
    return rms(x, w["model.norm.weight"]) @ w["lm_head.weight"].T


def write_fla_checkpoint(folder, attn_impl: str, *, fmt: str) -> dict[str, torch.Tensor]:
    """config.json plus weights as model.safetensors, two safetensors shards, or pytorch_model.bin."""
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(fla_config(attn_impl)))
    weights = fla_weights("scaled" in attn_impl)
    if fmt == "bin":
        torch.save(weights, folder / "pytorch_model.bin")
    elif fmt == "safetensors":
        save_file(weights, str(folder / "model.safetensors"))
    else:  # sharded
        keys = sorted(weights)
        shards = {"model-00001-of-00002.safetensors": keys[: len(keys) // 2],
                  "model-00002-of-00002.safetensors": keys[len(keys) // 2:]}
        for name, part in shards.items():
            save_file({k: weights[k] for k in part}, str(folder / name))
        index = {"metadata": {}, "weight_map": {k: name for name, part in shards.items() for k in part}}
        (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    return weights


@pytest.mark.parametrize("attn_impl, fmt", [
    ("parallel_softpick_attn", "sharded"), ("naive_scaled_softpick_attn", "bin"), ("parallel_attn", "safetensors"),
])
@torch.no_grad()
def test_convert_fla_checkpoint_gives_fla_logits(tmp_path, attn_impl, fmt):
    weights = write_fla_checkpoint(tmp_path / "fla", attn_impl, fmt=fmt)
    assert cli.main(["convert", "fla-to-hf", str(tmp_path / "fla"), str(tmp_path / "hf")]) == 0
    model = AutoModelForCausalLM.from_pretrained(str(tmp_path / "hf")).eval()
    softmax = FLA_ATTN_IMPLS[attn_impl][0] == "softmax"
    assert isinstance(model, LlamaForCausalLM if softmax else SoftpickForCausalLM)
    ids = torch.randint(0, VOCAB, (2, 24))
    expected = fla_reference_logits(weights, ids, attn_impl).float()
    torch.testing.assert_close(model(ids).logits, expected, atol=2e-4, rtol=2e-4)


def test_unknown_fla_attn_impl_is_one_line_listing_the_known_ones(tmp_path, capsys):
    folder = tmp_path / "fla"
    write_fla_checkpoint(folder, "parallel_attn", fmt="safetensors")
    (folder / "config.json").write_text(json.dumps(fla_config("parallel_rectified_attn")))
    assert cli.main(["convert", "fla-to-hf", str(folder), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "'parallel_rectified_attn'" in err
    assert all(name in err for name in FLA_ATTN_IMPLS)
    assert not (tmp_path / "out").exists()


def test_model_config_accepts_flame_json(tmp_path):
    """flame's configs/transformer_340M.json (fla's default flash_attn) and the fork's softpick/scaled ones."""
    flame = {k: v for k, v in fla_config("x").items() if k not in ("attn_impl", "num_kv_heads", "hidden_ratio")}
    flame |= {"hidden_size": 1024, "num_heads": 16, "num_hidden_layers": 24, "vocab_size": 32000,
              "max_position_embeddings": 8192}
    for impl, (attn_type, ssmax) in {None: ("softmax", False), "parallel_softpick_attn": ("softpick", False),
                                     "parallel_scaled_softpick_attn": ("softpick", True)}.items():
        path = tmp_path / f"{impl}.json"
        path.write_text(json.dumps(flame if impl is None else {**flame, "attn_impl": impl}))
        config = load_model_config(str(path))
        assert (config.model_type, config.attn_type, config.ssmax) == ("softpick_transformer", attn_type, ssmax)
        assert (config.num_attention_heads, config.num_key_value_heads, config.intermediate_size) == (16, 16, 2816)
        assert config.ssmax_offset == (2 if ssmax else 1) and config.hidden_act == "silu"


def test_fla_fields_we_cannot_run_are_refused():
    with pytest.raises(UserError, match="qk_norm=True is not supported"):
        config_from_fla(fla_config("parallel_attn", qk_norm=True))
    with pytest.raises(UserError, match="window_size=512"):
        config_from_fla(fla_config("parallel_attn", window_size=512))


def test_unknown_model_type_is_one_short_line(tmp_path, capsys):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({"model_type": "softpick_transfromer", "hidden_size": 64}))
    with pytest.raises(UserError) as info:
        load_model_config(str(path))
    assert "'softpick_transfromer'" in str(info.value) and len(str(info.value)) < 300
    with pytest.raises(UserError, match="does not exist"):
        load_model_config(str(tmp_path / "missing.json"))
