"""A Llama-shaped decoder whose attention is softpick (or softmax), as a transformers model.

Pre-norm blocks: RMSNorm -> attention (RoPE on q, k) -> residual -> RMSNorm -> SwiGLU MLP -> residual;
no biases, untied embeddings, every Linear and Embedding weight initialised N(0, initializer_range).
Parameter names and the module tree are exactly those of ``transformers.LlamaForCausalLM``
(``model.layers.N.self_attn.q_proj`` ...), so Llama tooling and forward hooks work unchanged; with
``attn_type="softmax"`` the state dict loads into a ``LlamaForCausalLM`` that gives the same logits.

Layout inside attention is [B, T, H, D] (that of :mod:`softpick.ops`): HQ query heads, H key/value heads.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from transformers import GenerationMixin, PreTrainedModel
from transformers.activations import ACT2FN
from transformers.cache_utils import Cache, DynamicCache, StaticLayer
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast

from softpick.models.cache import kv_cache
from softpick.models.configuration_softpick import SoftpickConfig
from softpick.ops import attend
from softpick.ops.cross_entropy import linear_cross_entropy, shifted_labels
from softpick.ops.attention.naive import naive_attention
from softpick.ops.attention.spec import AttentionSpec

CACHE_FIELD = "cache" if "cache" in CausalLMOutputWithPast.__dataclass_fields__ else "past_key_values"
"""Name of the KV-cache field of model outputs: transformers 5.24 renamed ``past_key_values`` to ``cache``."""

IGNORE_INDEX = -100
"""Label value excluded from the loss."""

GENERATE_ROUTES: list = []
"""Functions (model, args, kwargs) -> output ids or None that ``SoftpickForCausalLM.generate`` tries before
transformers' loop: :mod:`softpick.models.fast_generate` registers the one that runs static-cache calls
(this module does not import it, so the shipped copy of this file stays free of the Triton kernels)."""


def _take_cache(past_key_values: Cache | None, kwargs: dict) -> Cache | None:
    """The KV cache, whichever name it came under (transformers >= 5.24 ``generate`` passes ``cache=``).

    ``cache_position`` (older transformers bookkeeping) is dropped; any other leftover keyword is a TypeError.
    """
    cache = kwargs.pop("cache", None)
    if cache is not None and past_key_values is not None:
        raise ValueError("pass the KV cache as past_key_values or as cache, not both.")
    kwargs.pop("cache_position", None)  # positions come from the cache length instead
    if kwargs:
        raise TypeError(f"unexpected keyword arguments {sorted(kwargs)}.")
    return past_key_values if past_key_values is not None else cache


class SoftpickRMSNorm(nn.Module):
    """y = weight * x / sqrt(mean(x^2) + eps), computed in float32, returned in x.dtype (as Llama)."""

    def __init__(self, hidden_size: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dtype)

    def extra_repr(self) -> str:
        return f"{tuple(self.weight.shape)}, eps={self.eps}"


class SoftpickRotaryEmbedding(nn.Module):
    """RoPE tables: cos, sin [B, T, D] in float32 for integer positions [B, T] (Llama's rotate_half layout).

    Holds no buffer: the D/2 frequencies theta ** (-2i / D) are recomputed each call (negligible), so
    meta-device init, ``to()`` and checkpoints never have to care about them.
    """

    def __init__(self, head_dim: int, theta: float) -> None:
        super().__init__()
        self.head_dim = head_dim
        self.theta = theta

    def forward(self, position_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        exponent = torch.arange(0, self.head_dim, 2, dtype=torch.float, device=position_ids.device) / self.head_dim
        inv_freq = 1.0 / (self.theta**exponent)  # [D / 2]
        freqs = position_ids[..., None].float() * inv_freq  # [B, T, D / 2]
        emb = torch.cat((freqs, freqs), dim=-1)  # [B, T, D]
        return emb.cos(), emb.sin()

    def extra_repr(self) -> str:
        return f"head_dim={self.head_dim}, theta={self.theta}"


def _local(param: torch.Tensor) -> torch.Tensor:
    """This rank's part of a per-head parameter sharded by tensor parallel (a DTensor), else the parameter."""
    return param.to_local() if hasattr(param, "to_local") else param


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """[x1, x2] -> [-x2, x1] on the last dim."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate x [B, T, H, D] by cos, sin [B, T, D] (float32 math, result in x.dtype)."""
    cos, sin = cos[:, :, None], sin[:, :, None]  # [B, T, 1, D]
    xf = x.float()
    return (xf * cos + rotate_half(xf) * sin).to(x.dtype)


class FusedLinear:
    """Linears of one input concatenated along their outputs (q/k/v, gate/up): one GEMM instead of several.

    The weight [sum of outputs, in] (and bias) is new storage; each linear's own parameter is then made a
    view of its row block (``param.data = ...``), so nothing is stored twice, the parameters keep their
    names and the state dict its keys (a checkpoint is unchanged). :meth:`valid` tells whether every
    linear still views it (``model.to(...)`` or loading with ``assign=True`` replace the parameters).
    """

    def __init__(self, linears: Sequence[nn.Linear]) -> None:
        self.linears = list(linears)
        self.sizes = [lin.out_features for lin in linears]
        self.weight = torch.cat([lin.weight.detach() for lin in linears])  # [sum out, in]
        has_bias = linears[0].bias is not None
        self.bias = torch.cat([lin.bias.detach() for lin in linears]) if has_bias else None
        for lin, name, block in self._blocks():
            getattr(lin, name).data = block

    def _blocks(self) -> Iterator[tuple[nn.Linear, str, torch.Tensor]]:
        """(linear, "weight" or "bias", its row block of the fused tensor) for every parameter fused."""
        for name, fused in (("weight", self.weight), ("bias", self.bias)):
            if fused is not None:
                yield from zip(self.linears, (name,) * len(self.linears), fused.split(self.sizes))

    @staticmethod
    def fusable(linears: Sequence[nn.Linear]) -> bool:
        """True when the linears can share one weight: plain tensors on one device and dtype, one input."""
        first = linears[0].weight
        return all(
            type(lin.weight) is nn.Parameter and not hasattr(lin.weight.data, "to_local")
            and lin.weight.device == first.device and lin.weight.device.type != "meta"
            and lin.weight.dtype == first.dtype and lin.in_features == linears[0].in_features
            and (lin.bias is None) == (linears[0].bias is None)
            for lin in linears
        )

    def valid(self) -> bool:
        """True while every linear's weight and bias are still the views made at construction."""
        for lin, name, block in self._blocks():
            param = getattr(lin, name)
            if (param is None or param.dtype != block.dtype or param.device != block.device
                    or param.data_ptr() != block.data_ptr() or param.shape != block.shape):
                return False
        return True

    def __call__(self, x: torch.Tensor) -> list[torch.Tensor]:
        """x [..., in] -> one tensor [..., out_i] per linear."""
        return F.linear(x, self.weight, self.bias).split(self.sizes, dim=-1)


class SoftpickMLP(nn.Module):
    """SwiGLU: down(act(gate(x)) * up(x)); while :func:`fused_projections` runs, gate and up are one GEMM."""

    def __init__(self, config: SoftpickConfig) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=config.mlp_bias)
        self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=config.mlp_bias)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=config.mlp_bias)
        self.act_fn = ACT2FN[config.hidden_act]
        self.fused: FusedLinear | None = None  # [gate, up], set by fused_projections

    def projections(self) -> list[nn.Linear]:
        """The linears of the input that :func:`fused_projections` fuses."""
        return [self.gate_proj, self.up_proj]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fused is not None:
            gate, up = self.fused(x)
        else:
            gate, up = self.gate_proj(x), self.up_proj(x)
        return self.down_proj(self.act_fn(gate) * up)


class SoftpickAttention(nn.Module):
    """Multi-head (grouped-query) attention with RoPE, normalised by softpick or softmax (or a sink variant).

    ``spec`` (:class:`~softpick.ops.attention.spec.AttentionSpec`: normaliser, sink kind, eps, scale) is built
    once from the config's ``attn_type``, ``softpick_eps`` and ``sigmoid_bias``; ``attn_impl`` is copied onto the module, so one
    layer can be switched (e.g. ``layer.self_attn.attn_impl = "naive"``) without touching the others. Optional parameters, present
    only when the config asks for them: ``sinks`` [HQ] (attn_type "sink"), ``ssmax_scale`` [HQ] (ssmax) and
    ``g_proj`` (output_gate: hidden -> HQ or HQ * head_dim).
    """

    def __init__(self, config: SoftpickConfig, layer_idx: int) -> None:
        super().__init__()
        self.layer_idx = layer_idx
        self.head_dim = config.head_dim
        self.num_heads = config.num_attention_heads
        self.num_key_value_heads = config.num_key_value_heads
        self.spec = AttentionSpec.from_attn_type(
            config.attn_type, eps=config.softpick_eps, scale=self.head_dim**-0.5,
            context=config.max_position_embeddings, sigmoid_bias=getattr(config, "sigmoid_bias", None))
        self.attn_impl = config.attn_impl
        q_width, kv_width = self.num_heads * self.head_dim, self.num_key_value_heads * self.head_dim
        self.q_proj = nn.Linear(config.hidden_size, q_width, bias=config.attention_bias)
        self.k_proj = nn.Linear(config.hidden_size, kv_width, bias=config.attention_bias)
        self.v_proj = nn.Linear(config.hidden_size, kv_width, bias=config.attention_bias)
        self.o_proj = nn.Linear(q_width, config.hidden_size, bias=config.attention_bias)
        self.output_gate = config.output_gate
        if self.spec.sink == "learned":
            self.sinks = nn.Parameter(torch.zeros(self.num_heads))
        if config.ssmax:
            self.ssmax_scale = nn.Parameter(torch.full((self.num_heads,), float(config.ssmax_init)))
        if config.output_gate is not None:
            gates = self.num_heads * (self.head_dim if config.output_gate == "elementwise" else 1)
            self.g_proj = nn.Linear(config.hidden_size, gates, bias=config.attention_bias)
        self.fused: FusedLinear | None = None  # [q, k, v (, g)], set by fused_projections

    def projections(self) -> list[nn.Linear]:
        """The linears of the input that :func:`fused_projections` fuses: q, k, v and the output gate's."""
        return [self.q_proj, self.k_proj, self.v_proj] + ([self.g_proj] if self.output_gate is not None else [])

    def forward(
        self,
        hidden_states: torch.Tensor,
        position_embeddings: tuple[torch.Tensor, torch.Tensor],
        attention_mask: torch.Tensor | None = None,
        past_key_values: Cache | None = None,
        cu_seqlens: torch.Tensor | None = None,
        output_attentions: bool = False,
        ssmax_log_n: torch.Tensor | None = None,
        max_seqlen: int | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Attend over the cache plus the new tokens.

        Args:
            hidden_states: [B, T, hidden] (normed) inputs of the T new tokens.
            position_embeddings: (cos, sin), each [B, T, head_dim] float32, from SoftpickRotaryEmbedding.
            attention_mask: [B, T_past + T], nonzero = real token, or None (no padding).
            past_key_values: a transformers Cache (stores [B, H, T, D]), a StaticKVCache or None; updated in
                place through :func:`softpick.models.cache.kv_cache`.
            cu_seqlens: [N + 1] offsets of packed documents (B = 1, no cache).
            output_attentions: also return the weights, computed by the naive reference.
            ssmax_log_n: [B, T] float32 log of the number of keys each query sees (needed with ssmax).
            max_seqlen: the longest document of cu_seqlens, if known (spares the kernels a host read).

        Returns:
            (output [B, T, hidden], weights [B, HQ, T, T_past + T] float32 or None).
        """
        B, T, _ = hidden_states.shape
        if self.fused is not None:
            q, k, v, *gate = self.fused(hidden_states)  # one GEMM
        else:
            q, k, v = self.q_proj(hidden_states), self.k_proj(hidden_states), self.v_proj(hidden_states)
            gate = [self.g_proj(hidden_states)] if self.output_gate is not None else []
        q = q.view(B, T, self.num_heads, self.head_dim)  # [B, T, HQ, D]
        k = k.view(B, T, self.num_key_value_heads, self.head_dim)  # [B, T, H, D]
        v = v.view(B, T, self.num_key_value_heads, self.head_dim)  # [B, T, H, D]
        cos, sin = position_embeddings
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        if hasattr(self, "ssmax_scale"):
            if ssmax_log_n is None:
                raise ValueError("ssmax needs ssmax_log_n (the model computes it from position_ids).")
            q = (q * (ssmax_log_n[:, :, None, None] * _local(self.ssmax_scale)[:, None])).to(q.dtype)
        k, v, kv_len = kv_cache(past_key_values).update(self.layer_idx, k.transpose(1, 2), v.transpose(1, 2))
        k, v = k.transpose(1, 2), v.transpose(1, 2)  # [B, Tk, H, D]; with kv_len, Tk is the buffer's capacity
        if attention_mask is not None and attention_mask.shape[1] != k.shape[1]:
            attention_mask = _fit_mask(attention_mask, k.shape[1])
        learned = _local(self.sinks) if self.spec.sink == "learned" else None
        weights = None
        if output_attentions:
            spec = self.spec
            o, weights = naive_attention(
                q, k, v, variant=spec.normaliser, scale=spec.scale, cu_seqlens=cu_seqlens,
                attention_mask=attention_mask, eps=spec.eps, return_weights=True,
                sink=spec.sink_logits(self.num_heads, q.device, learned), kv_len=kv_len,
                sigmoid_bias=spec.sigmoid_bias,
            )  # weights [B, HQ, T, Tk]
        else:
            o = attend(
                q, k, v, self.spec, cu_seqlens=cu_seqlens, max_seqlen=max_seqlen, attention_mask=attention_mask,
                impl=self.attn_impl, sink=learned, kv_len=kv_len,
            )  # [B, T, HQ, D]
        if gate:
            o = o * torch.sigmoid(gate[0]).view(B, T, self.num_heads, -1).to(o.dtype)  # gate [B, T, HQ, 1 or D]
        return self.o_proj(o.reshape(B, T, -1)), weights


class SoftpickDecoderLayer(GradientCheckpointingLayer):
    """x + attn(norm(x)), then x + mlp(norm(x)). Returns (hidden [B, T, hidden], attention weights or None)."""

    def __init__(self, config: SoftpickConfig, layer_idx: int) -> None:
        super().__init__()
        self.self_attn = SoftpickAttention(config, layer_idx)
        self.mlp = SoftpickMLP(config)
        self.input_layernorm = SoftpickRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.post_attention_layernorm = SoftpickRMSNorm(config.hidden_size, eps=config.rms_norm_eps)

    def forward(
        self,
        hidden_states: torch.Tensor,
        position_embeddings: tuple[torch.Tensor, torch.Tensor],
        attention_mask: torch.Tensor | None = None,
        past_key_values: Cache | None = None,
        cu_seqlens: torch.Tensor | None = None,
        output_attentions: bool = False,
        ssmax_log_n: torch.Tensor | None = None,
        max_seqlen: int | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        # keyword arguments only, as in transformers' Llama, so hooks written for Llama find the same kwargs
        extra = {} if ssmax_log_n is None else {"ssmax_log_n": ssmax_log_n}
        attn_out, weights = self.self_attn(
            hidden_states=self.input_layernorm(hidden_states), position_embeddings=position_embeddings,
            attention_mask=attention_mask, past_key_values=past_key_values, cu_seqlens=cu_seqlens,
            max_seqlen=max_seqlen, output_attentions=output_attentions, **extra,
        )
        hidden_states = hidden_states + attn_out
        hidden_states = hidden_states + self.mlp(self.post_attention_layernorm(hidden_states))
        return hidden_states, weights


class SoftpickPreTrainedModel(PreTrainedModel):
    """Init and loading glue shared by SoftpickModel and SoftpickForCausalLM."""

    config_class = SoftpickConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    _no_split_modules = ["SoftpickDecoderLayer"]
    # Init: transformers' generic ``_init_weights`` gives exactly the paper's recipe (Linear and Embedding
    # weights ~ N(0, config.initializer_range), biases 0, *RMSNorm weights 1), so it is not overridden.

    def _apply(self, fn, recurse: bool = True):
        """``to()``, ``cuda()``, ``half()`` ...: drop the fused projection weights (rebuilt at their next use),
        so an old copy of the weights is not kept alive."""
        for module in self.modules():
            module.__dict__.pop("_fused_weights", None)
        return super()._apply(fn, recurse)


@contextlib.contextmanager
def fused_projections(model: nn.Module) -> Iterator[None]:
    """While inside, every attention's q/k/v (and output gate) and every MLP's gate/up run as one GEMM each.

    For inference (``generate``, :func:`~softpick.models.fast_generate.fast_generate`): the fused
    weights (see :class:`FusedLinear`) are built at the first use and kept; each entry checks that the
    parameters still view them (after ``model.to(...)`` they are rebuilt), so they are never stale.
    Outside, the model runs its separate linears (training, hooks on q_proj ...): the fused weight gets
    no gradient, so nothing is fused while gradients are on or the model is in train mode.
    """
    if torch.is_grad_enabled() or model.training:
        yield
        return
    modules = [m for m in model.modules() if isinstance(m, (SoftpickAttention, SoftpickMLP))]
    before = [m.fused for m in modules]
    for module in modules:
        built = module.__dict__.get("_fused_weights")
        if built is None or not built.valid():
            linears = module.projections()
            built = FusedLinear(linears) if FusedLinear.fusable(linears) else None
            module.__dict__["_fused_weights"] = built
        module.fused = built
    try:
        yield
    finally:
        for module, fused in zip(modules, before):
            module.fused = fused


def packed_position_ids(cu_seqlens: torch.Tensor, total: int) -> torch.Tensor:
    """Positions [1, total] restarting at 0 at each document start in cu_seqlens [N + 1]."""
    starts = torch.zeros(total, dtype=torch.long, device=cu_seqlens.device)
    starts[cu_seqlens[1:-1].long()] = 1
    doc = starts.cumsum(0)  # document index of every token
    return (torch.arange(total, device=cu_seqlens.device) - cu_seqlens.long()[doc])[None]


def _key_padding_mask(attention_mask: torch.Tensor | None, check_all: bool = True) -> torch.Tensor | None:
    """The 2D mask [B, T_total] to pass to the ops, or None when it hides nothing (fused kernels can run).

    ``check_all=False`` (a preallocated cache, whose steps keep their shapes) keeps the mask as it is: the
    test reads the mask on the host, a sync per step and a data-dependent branch for torch.compile.
    """
    if attention_mask is None:
        return None
    if attention_mask.dim() != 2:
        raise ValueError(
            f"attention_mask must be 2-D [batch, past + new tokens] (1 = token, 0 = padding), "
            f"got shape {tuple(attention_mask.shape)}."
        )
    if not check_all or torch.compiler.is_compiling():
        return attention_mask
    return None if bool(attention_mask.all()) else attention_mask


def _fit_mask(attention_mask: torch.Tensor, num_keys: int) -> torch.Tensor:
    """The padding mask [B, n] cut or extended (with ones: kv_len hides those keys) to [B, num_keys]."""
    n = attention_mask.shape[1]
    if n >= num_keys:
        return attention_mask[:, :num_keys]
    return F.pad(attention_mask, (0, num_keys - n), value=1)


class SoftpickModel(SoftpickPreTrainedModel):
    """Embeddings, decoder layers and the final norm; returns hidden states (no LM head)."""

    def __init__(self, config: SoftpickConfig) -> None:
        super().__init__(config)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(SoftpickDecoderLayer(config, i) for i in range(config.num_hidden_layers))
        self.norm = SoftpickRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.rotary_emb = SoftpickRotaryEmbedding(config.head_dim, config.rope_theta)
        self.gradient_checkpointing = False
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embed_tokens

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.embed_tokens = value

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        use_cache: bool | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        cu_seqlens: torch.Tensor | None = None,
        max_seqlen: int | None = None,
        **kwargs,
    ) -> BaseModelOutputWithPast | tuple:
        """Hidden states of input_ids [B, T] (or inputs_embeds [B, T, hidden]); see SoftpickForCausalLM.forward."""
        past_key_values = _take_cache(past_key_values, kwargs)
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids and inputs_embeds.")
        output_attentions = self.config.output_attentions if output_attentions is None else output_attentions
        output_hidden_states = (
            self.config.output_hidden_states if output_hidden_states is None else output_hidden_states
        )
        return_dict = self.config.return_dict if return_dict is None else return_dict
        if use_cache is None:
            use_cache = self.config.use_cache and not self.training
        if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
            use_cache, past_key_values = False, None  # the recomputed forward would append to a cache twice
        if cu_seqlens is not None:
            if past_key_values is not None or attention_mask is not None:
                raise ValueError("cu_seqlens (packed documents) cannot be combined with a KV cache or attention_mask.")
            use_cache = False

        hidden_states = self.embed_tokens(input_ids) if inputs_embeds is None else inputs_embeds  # [B, T, hidden]
        T = hidden_states.shape[1]
        if use_cache and past_key_values is None:
            past_key_values = DynamicCache(config=self.config)
        cache = kv_cache(past_key_values)
        cache_positions = cache.begin(T, hidden_states.device)  # [T] on the device
        if position_ids is None:
            position_ids = cache_positions[None] if cu_seqlens is None else packed_position_ids(cu_seqlens, T)
        position_ids = position_ids.expand(hidden_states.shape[0], -1)  # [B, T]
        position_embeddings = self.rotary_emb(position_ids)
        # SSMax: each query sees position + 1 keys of its own document (positions restart per packed
        # document and skip left padding, as generate() computes them from the attention mask)
        offset = self.config.ssmax_offset - 1  # log1p(p) = log(p + 1) exactly, the default
        extra = {"ssmax_log_n": torch.log1p(position_ids.float() + offset)} if self.config.ssmax else {}
        mask = _key_padding_mask(attention_mask, check_all=not cache.fixed_shapes)

        all_hidden = [] if output_hidden_states else None
        all_attn = [] if output_attentions else None
        for layer in self.layers:
            if all_hidden is not None:
                all_hidden.append(hidden_states)
            hidden_states, weights = layer(
                hidden_states, position_embeddings, attention_mask=mask, past_key_values=past_key_values,
                cu_seqlens=cu_seqlens, max_seqlen=max_seqlen, output_attentions=output_attentions, **extra,
            )
            if all_attn is not None:
                all_attn.append(weights)
        cache.end()
        hidden_states = self.norm(hidden_states)
        if all_hidden is not None:
            all_hidden.append(hidden_states)  # HF convention: the last entry is after the final norm

        out = BaseModelOutputWithPast(
            last_hidden_state=hidden_states,
            hidden_states=tuple(all_hidden) if all_hidden is not None else None,
            attentions=tuple(all_attn) if all_attn is not None else None,
            **{CACHE_FIELD: past_key_values},
        )
        return out if return_dict else out.to_tuple()


class SoftpickForCausalLM(SoftpickPreTrainedModel, GenerationMixin):
    """SoftpickModel plus an untied LM head; shifted cross-entropy loss when labels are given."""

    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}  # used only if tie_word_embeddings
    accepts_loss_kwargs = False  # the loss is a plain mean: transformers.Trainer must not pass num_items_in_batch
    fuse_linear_cross_entropy = False
    """True: a training forward with labels (grad enabled) takes its loss from the LM head and the hidden
    states chunk by chunk (:func:`softpick.ops.cross_entropy.linear_cross_entropy`) and returns no logits.
    The trainer sets it (``--training.fused_loss``)."""

    def __init__(self, config: SoftpickConfig) -> None:
        super().__init__(config)
        self.model = SoftpickModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.model.embed_tokens

    def create_masks_for_generate(self, attention_mask: torch.Tensor | None = None, **kwargs) -> torch.Tensor | None:
        """What ``generate`` passes as attention_mask with a compileable (static) cache: our 2-D padding mask
        [B, max_cache_len], extended with ones past the tokens so far (the cache's device length hides those
        keys), so every decoding step has the same shape and the compiled step is traced once (transformers
        would build a 4-D float mask for its own attention functions)."""
        cache = kwargs.get("cache", kwargs.get("past_key_values"))
        layers = getattr(cache, "layers", None) or [None]
        if attention_mask is None or type(layers[0]) is not StaticLayer:
            return attention_mask
        capacity = layers[0].max_cache_len
        if capacity <= attention_mask.shape[1]:
            return attention_mask
        return _fit_mask(attention_mask, capacity)

    @torch.no_grad()
    def generate(self, *args, **kwargs):
        """transformers' ``generate``, with the q/k/v and gate/up projections fused (see :func:`fused_projections`).

        With softpick imported, ``cache_implementation="static"`` calls that the fast loop computes exactly
        run :func:`softpick.models.fast_generate.fast_generate` (its compiled step in CUDA graphs) instead of
        transformers' loop: the same tokens, without that loop's host time (see GENERATE_ROUTES).
        """
        for route in GENERATE_ROUTES:
            out = route(self, args, kwargs)
            if out is not None:
                return out
        with fused_projections(self):
            return super().generate(*args, **kwargs)

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.model.embed_tokens = value

    def get_output_embeddings(self) -> nn.Linear:
        return self.lm_head

    def set_output_embeddings(self, value: nn.Linear) -> None:
        self.lm_head = value

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        cu_seqlens: torch.Tensor | None = None,
        max_seqlen: int | None = None,
        **kwargs,
    ) -> CausalLMOutputWithPast | tuple:
        """Next-token logits, and the loss when labels are given.

        Args:
            input_ids: [B, T] token ids (or inputs_embeds [B, T, hidden]).
            attention_mask: [B, T_past + T], 1 = token, 0 = padding (HF convention); None = no padding.
            position_ids: [B, T] RoPE positions. None -> T_past + arange(T), or restarting at 0 in each
                document when cu_seqlens is given.
            past_key_values: a transformers Cache (e.g. DynamicCache), updated in place. Also accepted as
                ``cache=`` (the name transformers >= 5.24 uses). ``cache_position`` is accepted and ignored.
            labels: [B, T] targets aligned with input_ids (shifted inside); IGNORE_INDEX (-100) is skipped.
                Loss = mean cross-entropy over the counted tokens, in float32.
            use_cache: return the cache. None -> config.use_cache in eval mode, False in train mode.
            output_attentions: return per-layer weights [B, HQ, T, T_past + T] (float32, naive reference).
            output_hidden_states: return num_hidden_layers + 1 hidden states [B, T, hidden] (embeddings, then
                each layer's output; the last one after the final norm, as in transformers).
            return_dict: False -> a tuple. None -> config.return_dict.
            logits_to_keep: int n > 0 -> logits of the last n positions only; a 1-D tensor -> those positions.
            cu_seqlens: [N + 1] int offsets of N documents packed in one row (B = 1); attention stays
                inside each document. No cache, no attention_mask.
            max_seqlen: the longest document of cu_seqlens, if the caller knows it without reading the
                GPU (the trainer takes it from the loader's lengths): no host sync in the attention.

        Returns:
            CausalLMOutputWithPast(loss, logits [B, T', vocab], cache, hidden_states, attentions); the cache
            field is named ``past_key_values`` (transformers < 5.24) or ``cache`` (see CACHE_FIELD). Logits are
            None when the loss came from the chunked linear cross-entropy (``fuse_linear_cross_entropy``).
        """
        past_key_values = _take_cache(past_key_values, kwargs)
        return_dict = self.config.return_dict if return_dict is None else return_dict
        outputs = self.model(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
            past_key_values=past_key_values, inputs_embeds=inputs_embeds, use_cache=use_cache,
            output_attentions=output_attentions, output_hidden_states=output_hidden_states,
            return_dict=True, cu_seqlens=cu_seqlens, max_seqlen=max_seqlen,
        )
        hidden_states = outputs.last_hidden_state  # [B, T, hidden]
        if (labels is not None and self.fuse_linear_cross_entropy and self.training and torch.is_grad_enabled()
                and isinstance(logits_to_keep, int) and logits_to_keep == 0):
            loss = linear_cross_entropy(hidden_states.flatten(0, 1), self.lm_head.weight,
                                        shifted_labels(labels.to(hidden_states.device), IGNORE_INDEX).flatten())
            return self._output(loss, None, outputs, return_dict)
        if isinstance(logits_to_keep, int):
            if logits_to_keep > 0:
                hidden_states = hidden_states[:, -logits_to_keep:]
        else:
            hidden_states = hidden_states[:, logits_to_keep]
        logits = self.lm_head(hidden_states)  # [B, T', vocab]

        loss = None
        if labels is not None:
            if logits.shape[1] != labels.shape[1]:
                raise ValueError(
                    f"labels cover {labels.shape[1]} positions but logits {logits.shape[1]}; "
                    "use logits_to_keep=0 when computing the loss."
                )
            loss = F.cross_entropy(
                logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten().to(logits.device),
                ignore_index=IGNORE_INDEX,
            )

        return self._output(loss, logits, outputs, return_dict)

    @staticmethod
    def _output(loss, logits, outputs: BaseModelOutputWithPast, return_dict: bool) -> CausalLMOutputWithPast | tuple:
        out = CausalLMOutputWithPast(
            loss=loss,
            logits=logits,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
            **{CACHE_FIELD: outputs[CACHE_FIELD] if CACHE_FIELD in outputs else None},
        )
        return out if return_dict else out.to_tuple()


__all__ = [
    "CACHE_FIELD",
    "FusedLinear",
    "GENERATE_ROUTES",
    "SoftpickAttention",
    "SoftpickDecoderLayer",
    "SoftpickForCausalLM",
    "SoftpickMLP",
    "SoftpickModel",
    "SoftpickPreTrainedModel",
    "SoftpickRMSNorm",
    "SoftpickRotaryEmbedding",
    "fused_projections",
]
