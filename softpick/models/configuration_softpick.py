"""``SoftpickConfig``: a Llama-shaped decoder whose attention is softpick (or softmax, for baselines).

Field names follow ``transformers.LlamaConfig``; the extra fields are ``attn_type``, ``attn_impl``,
``softpick_eps`` and the switches ``ssmax`` and ``output_gate`` (with attn_type "softmax" and both switches
off the model is exactly Llama). Defaults give the paper's 340M model (24 layers, hidden 1024, 16 heads of 64).
"""

from __future__ import annotations

from transformers import PreTrainedConfig
from transformers.activations import ACT2FN

ATTN_TYPES = ("softpick", "softmax", "softmax_plus_one", "sink")
"""Values of ``attn_type``: softpick; softmax (vanilla); softmax+1 ("off by one": a constant 0 logit in every
denominator); sink (a learnable per-head logit in every denominator, as in gpt-oss)."""

OUTPUT_GATES = (None, "headwise", "elementwise")
"""Values of ``output_gate``: none, one sigmoid gate per head, or one per output channel."""

ATTN_IMPLS = (None, "naive", "triton", "cute", "sdpa")
"""Values of ``attn_impl``, passed as ``impl`` to :mod:`softpick.ops` (None = fastest available)."""


def unknown_key(data: dict) -> tuple[str, str | None] | None:
    """The first key of a config.json dict that is no field of :class:`SoftpickConfig` nor of
    ``PreTrainedConfig`` (a typo such as ``atn_type`` would otherwise be stored and ignored), with the
    closest valid key (or None); None when every key is known."""
    import difflib

    known = set(SoftpickConfig().to_dict()) | {
        key for cls in SoftpickConfig.__mro__ for key in getattr(cls, "__annotations__", {})
    } | {"auto_map", "torch_dtype", "_name_or_path", "rope_scaling", "tokenizer_class", "is_decoder",
         "add_cross_attention", "tie_encoder_decoder", "sep_token_id", "decoder_start_token_id", "prefix",
         "task_specific_params", "finetuning_task", "pruned_heads", "torchscript", "_attn_implementation",
         "trained_context_len"}  # written by softpick.models.export.set_trained_context
    for key in data:
        if key not in known:
            close = difflib.get_close_matches(key, sorted(known), n=1, cutoff=0.6)
            return key, (close[0] if close else None)
    return None


def default_intermediate_size(hidden_size: int) -> int:
    """fla's SwiGLU width: int(hidden * 4 * 2 / 3) rounded up to a multiple of 256 (1024 -> 2816)."""
    width = int(hidden_size * 4 * 2 / 3)
    return 256 * ((width + 255) // 256)


class SoftpickConfig(PreTrainedConfig):
    """Configuration of :class:`~softpick.models.SoftpickForCausalLM` (model_type ``softpick_transformer``).

    Example::

        config = SoftpickConfig(hidden_size=256, num_hidden_layers=4, num_attention_heads=4)
        config = SoftpickConfig.from_pretrained("configs/softpick_transformer_340M.json")
    """

    model_type = "softpick_transformer"
    keys_to_ignore_at_inference = ["past_key_values"]

    # -- sizes --
    vocab_size: int = 32000
    """Number of tokens in the vocabulary (rows of the embedding and of lm_head). Default 32000 (Llama-2)."""
    hidden_size: int = 1024
    """Width of the residual stream. Default 1024."""
    intermediate_size: int | None = None
    """Width of the SwiGLU MLP. None -> int(hidden * 8 / 3) rounded up to a multiple of 256 (fla's rule)."""
    num_hidden_layers: int = 24
    """Number of decoder layers. Default 24."""
    num_attention_heads: int = 16
    """Number of query heads (HQ). Default 16."""
    num_key_value_heads: int | None = None
    """Number of key/value heads (H); HQ must be a multiple of it (grouped-query attention). None -> HQ."""
    head_dim: int | None = None
    """Width of one head, even (RoPE). None -> hidden_size // num_attention_heads."""
    hidden_act: str = "silu"
    """Gate activation of the MLP (a key of ``transformers.activations.ACT2FN``). Default "silu" (SwiGLU)."""

    # -- positions and norms --
    max_position_embeddings: int = 8192
    """Longest context the model is meant for, in tokens (RoPE itself has no limit). Default 8192."""
    rope_theta: float = 10000.0
    """RoPE base; frequencies are rope_theta ** (-2i / head_dim). Default 10000."""
    rms_norm_eps: float = 1e-6
    """Epsilon inside RMSNorm's square root. Default 1e-6."""

    # -- init and head --
    initializer_range: float = 0.006
    """Std of the normal init of every Linear and Embedding weight (norms start at 1). Default 0.006."""
    tie_word_embeddings: bool = False
    """Share the weight of lm_head and embed_tokens. Default False (as in the paper)."""
    attention_bias: bool = False
    """Bias in q/k/v/o projections. Default False."""
    mlp_bias: bool = False
    """Bias in gate/up/down projections. Default False."""

    # -- tokens and generation --
    pad_token_id: int | None = None
    """Id of the padding token, or None. Default None."""
    bos_token_id: int | None = 1
    """Id of the beginning-of-sequence token. Default 1 (Llama-2 tokenizer)."""
    eos_token_id: int | list[int] | None = 2
    """Id(s) of the end-of-sequence token. Default 2 (Llama-2 tokenizer)."""
    use_cache: bool = True
    """Return a KV cache from forward in eval mode (training forwards never build one). Default True."""

    # -- attention --
    attn_type: str = "softpick"
    """Attention normaliser: "softpick", "softmax" (the vanilla baseline), "softmax_plus_one" or "sink"
    (see ATTN_TYPES). Default "softpick"."""
    attn_impl: str | None = None
    """Kernel family passed as ``impl`` to softpick.ops: "naive", "triton", "sdpa" (softmax only) or None
    (the fastest one that supports the inputs). Default None."""
    softpick_eps: float = 1e-6
    """Constant added to softpick's unscaled denominator sum_j |exp(s_j) - 1|. Default 1e-6."""
    ssmax: bool = False
    """Scalable-softmax query scaling: q *= s_h * log(n), n the number of keys the query sees (its position in
    its document + 1), s_h a learnable per-head scale. Works with every attn_type. Default False."""
    ssmax_init: float = 0.3
    """Initial value of the SSMax scales s_h (the softpick authors' value). Default 0.3."""
    ssmax_offset: int = 1
    """SSMax multiplies q by log(position + ssmax_offset): 1 is log(n), n the keys the query sees; 2 is the
    table of the softpick authors' fla models (``*_scaled_*`` attn_impl, log 2 at position 0). Default 1."""
    output_gate: str | None = None
    """Sigmoid gate on the attention output before o_proj, computed from the layer input: "headwise" (one per
    head), "elementwise" (one per channel) or None. Default None."""

    def __post_init__(self, **kwargs):
        if self.num_key_value_heads is None:
            self.num_key_value_heads = self.num_attention_heads
        if self.head_dim is None and _positive(self.num_attention_heads):
            if self.hidden_size % self.num_attention_heads != 0:
                raise ValueError(
                    f"hidden_size ({self.hidden_size}) is not a multiple of num_attention_heads "
                    f"({self.num_attention_heads}); change one of them or set head_dim."
                )
            self.head_dim = self.hidden_size // self.num_attention_heads
        if self.intermediate_size is None and _positive(self.hidden_size):
            self.intermediate_size = default_intermediate_size(self.hidden_size)
        self._check()
        super().__post_init__(**kwargs)

    def _check(self) -> None:
        """Raise one ValueError naming the first bad field."""
        for name in (
            "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
            "num_key_value_heads", "head_dim", "max_position_embeddings",
        ):
            if not _positive(getattr(self, name)):
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)!r}.")
        if self.attn_type not in ATTN_TYPES:
            raise ValueError(f"attn_type must be one of {ATTN_TYPES}, got {self.attn_type!r}.")
        if self.attn_impl not in ATTN_IMPLS:
            raise ValueError(f"attn_impl must be one of {ATTN_IMPLS}, got {self.attn_impl!r}.")
        if self.output_gate not in OUTPUT_GATES:
            raise ValueError(f"output_gate must be one of {OUTPUT_GATES}, got {self.output_gate!r}.")
        if not isinstance(self.ssmax, bool):
            raise ValueError(f"ssmax must be true or false, got {self.ssmax!r}.")
        if not _positive(self.ssmax_offset):
            raise ValueError(f"ssmax_offset must be a positive integer (1, or 2 for fla's scaled models), "
                             f"got {self.ssmax_offset!r}.")
        if self.attn_impl == "sdpa" and self.attn_type != "softmax":
            raise ValueError(
                f"attn_impl 'sdpa' computes softmax only, but attn_type is {self.attn_type!r}; "
                "use attn_impl None, 'naive' or 'triton'."
            )
        if self.num_attention_heads % self.num_key_value_heads != 0:
            raise ValueError(
                f"num_attention_heads ({self.num_attention_heads}) is not a multiple of "
                f"num_key_value_heads ({self.num_key_value_heads})."
            )
        if self.head_dim % 2 != 0:
            raise ValueError(f"head_dim must be even for RoPE, got {self.head_dim}.")
        if self.hidden_act not in ACT2FN:
            raise ValueError(f"hidden_act {self.hidden_act!r} is not a transformers activation name.")
        for name in ("rope_theta", "rms_norm_eps", "initializer_range"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or value <= 0:
                raise ValueError(f"{name} must be a positive number, got {value!r}.")
        if not isinstance(self.softpick_eps, (int, float)) or self.softpick_eps < 0:
            raise ValueError(f"softpick_eps must be a number >= 0, got {self.softpick_eps!r}.")


def _positive(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


__all__ = ["ATTN_IMPLS", "ATTN_TYPES", "OUTPUT_GATES", "SoftpickConfig", "default_intermediate_size"]
