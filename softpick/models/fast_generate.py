"""Fast greedy / sampled decoding of softpick models: a preallocated cache and, on CUDA, a compiled decoding
step replayed as CUDA graphs.

:func:`fast_generate` gives the tokens of ``model.generate(...)`` (greedy or sampling, left-padded
batches, stop tokens) at a fraction of its cost:

- a :class:`~softpick.models.cache.StaticKVCache` is allocated once per (batch, max length) and
  kept on the model for the next call of the same shape;
- the prompt is prefilled by one ordinary forward (the fused training kernels when nothing is padded);
- every decoding step (all layers, the LM head, temperature / top-k / top-p, the sample, the stop-token
  bookkeeping and the write of the token into the output) is one function of fixed-address tensors,
  run with the q/k/v and gate/up projections fused (:func:`~softpick.models.modeling_softpick.fused_projections`).
  On CUDA it is compiled (``torch.compile``, one graph, the KV-cache attention a custom op in it; once per
  batch, capacity and sampling setup in the process), then captured once per length bucket in a
  ``torch.cuda.CUDAGraph`` and replayed, so a step costs the host one ``replay()``. The attention kernels
  read the cache length from the device (``kv_len``), and a bucket (a power of two >= 256 keys, or the
  cache's capacity) only bounds their launch (:func:`~softpick.ops.attention.triton.kv_cache.launch_keys`).
  Without CUDA the same step runs eagerly (``compile=True`` and ``graphs`` choose otherwise).

:func:`static_cache_generate` runs ``model.generate(..., cache_implementation="static")`` calls through
this loop when it computes the same tokens.

The host reads the device only every ``SYNC_EVERY`` steps on CUDA (to stream text and to stop once every
row has produced a stop token), so it queues steps ahead of the GPU.

Sampling follows transformers exactly: the logits in float32, then its temperature, top-k and top-p
warpers, softmax, and the draw ``argmax(p / q)`` with ``q ~ Exp(1)``, which is what
``torch.multinomial(p, 1)`` computes, from the same random numbers (so a seeded run on the CPU gives the
tokens of ``generate`` with that seed; graphs draw from the same generator, consumed per replay).
"""

from __future__ import annotations

import contextlib
import math
import time
import warnings
from collections.abc import Callable, Sequence

import torch
from torch import nn

from softpick.models.cache import StaticKVCache
from softpick.models.modeling_softpick import fused_projections

SYNC_EVERY = 16
"""CUDA decoding steps between host reads (stop test and streamed text)."""

MIN_BUCKET = 256
"""Smallest length bucket of the CUDA graphs (keys the attention launch covers)."""

LENGTH_ROUND = 256
"""Cache capacities are rounded up to a multiple of this, so calls of similar length share a session."""

COMPILE_OPTIONS = {"fullgraph": True, "dynamic": False, "options": {"fallback_random": True}}
"""torch.compile of the decoding step: one graph (a break is a bug), shapes fixed per session, and the
sampling draw from torch's own generator (the numbers of the eager step; CUDA graphs advance it)."""

COMPILE_MIN_NEW_TOKENS = 64
"""With ``compile=None`` a CUDA call compiles its step only from this many new tokens on: the compile
(about 20 s for the 340M model) is paid once per shape, the eager step costs ~1.7 ms more per token, so a
short call (passkey's dozen tokens) decodes eagerly in CUDA graphs at once."""

RECOMPILE_LIMIT = 256
"""Compiled step configurations kept per process (torch's default, 8, would fall back to eager)."""

HF_SAMPLING_DEFAULTS = {"temperature": 1.0, "top_k": 50, "top_p": 1.0}
"""transformers' values when neither the call nor the model's generation_config sets one."""


def length_buckets(capacity: int) -> list[int]:
    """Key counts the decoding graphs are captured for: 256, 512, 1024, ... below ``capacity``, then capacity."""
    buckets, n = [], MIN_BUCKET
    while n < capacity:
        buckets.append(n)
        n *= 2
    return buckets + [capacity]


@contextlib.contextmanager
def _recompile_room():
    """Let dynamo keep a compiled step per (model, batch, capacity, sampling setup) of the process."""
    config = torch._dynamo.config
    limits = {name: max(getattr(config, name), RECOMPILE_LIMIT)
              for name in ("recompile_limit", "accumulated_recompile_limit") if hasattr(config, name)}
    with config.patch(**limits):
        yield


def _ids(value) -> list[int]:
    if value is None:
        return []
    return [int(v) for v in (value if isinstance(value, (list, tuple)) else [value])]


class Sampler:
    """Next tokens [B] from float32 logits [B, vocab]: argmax, or transformers' warpers and a draw.

    Args:
        do_sample: False = greedy.
        temperature, top_k, top_p: as in ``generate`` (top_k 0 and top_p 1 switch that warper off).
    """

    def __init__(self, do_sample: bool, temperature: float, top_k: int, top_p: float) -> None:
        from transformers.generation.logits_process import (
            TemperatureLogitsWarper,
            TopKLogitsWarper,
            TopPLogitsWarper,
        )

        self.do_sample = do_sample
        self.warpers = []
        if do_sample:
            if temperature != 1.0:
                self.warpers.append(TemperatureLogitsWarper(temperature))
            if top_k:
                self.warpers.append(TopKLogitsWarper(top_k=top_k))
            if top_p < 1.0:
                self.warpers.append(TopPLogitsWarper(top_p=top_p))
        self.key = (do_sample, temperature, top_k, top_p) if do_sample else (False,)

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        if not self.do_sample:
            return logits.argmax(-1)
        for warp in self.warpers:
            logits = warp(None, logits)
        probs = logits.softmax(-1)
        draw = torch.empty_like(probs).exponential_(1)  # torch.multinomial(probs, 1) without its host checks
        return (probs / draw).argmax(-1)


class DecodeSession:
    """The state of decoding ``batch`` rows into a cache of ``capacity`` positions: static buffers and graphs.

    Attributes (all on the model's device, fixed addresses):
        cache: the StaticKVCache.
        token: [B, 1] int64, the input of the next step (the last token drawn).
        positions: [B, 1] int64, the RoPE position of that token (real tokens before it; left padding skipped).
        mask: [B, capacity] int64 padding mask (1 = token), or None when no row is padded.
        done: [B] bool, rows that produced a stop token.
        out: [B, capacity] int64, the new tokens; ``step`` [1] int64 counts them.
    """

    def __init__(self, model: nn.Module, batch: int, capacity: int) -> None:
        param = next(model.parameters())
        device = param.device
        self.model = model
        self.batch, self.capacity = batch, capacity
        self.cache = StaticKVCache.for_model(model.config, batch, capacity, device, param.dtype)
        self.token = torch.zeros(batch, 1, dtype=torch.long, device=device)
        self.positions = torch.zeros(batch, 1, dtype=torch.long, device=device)
        self.mask_buffer = torch.ones(batch, capacity, dtype=torch.long, device=device)
        self.mask: torch.Tensor | None = None
        self.done = torch.zeros(batch, dtype=torch.bool, device=device)
        self.out = torch.zeros(batch, capacity, dtype=torch.long, device=device)
        self.step = torch.zeros(1, dtype=torch.long, device=device)
        self.graphs: dict[tuple, torch.cuda.CUDAGraph | None] = {}  # None: capture failed, run eagerly
        self.pool = None
        self._stops: dict[tuple[int, ...], torch.Tensor] = {}
        self.compiled_keys: set[tuple] = set()  # step configurations compiled so far
        self.compiled_step: Callable | None = None  # torch.compile of the step, made at its first use

    def stop_tensor(self, stop_ids: Sequence[int]) -> torch.Tensor | None:
        """The stop ids as a device tensor owned by the session (graphs read it at a fixed address)."""
        if not stop_ids:
            return None
        key = tuple(stop_ids)
        if key not in self._stops:
            self._stops[key] = torch.tensor(key, dtype=torch.long, device=self.token.device)
        return self._stops[key]

    def reset(self, attention_mask: torch.Tensor | None) -> None:
        """Start a new call: an empty cache and this call's prompt mask [B, T0] (None: no padding)."""
        self.cache.fresh = True
        self.cache.length.zero_()
        self.done.zero_()
        self.step.zero_()
        self.mask_buffer.fill_(1)
        self.mask = None
        if attention_mask is not None:
            self.mask_buffer[:, : attention_mask.shape[1]] = attention_mask
            self.mask = self.mask_buffer

    def run_step(self, sampler: Sampler, stop: torch.Tensor | None, pad: int, compiled: bool = False) -> None:
        """One decoding step on the device: feed ``token``, draw the next one, record it, advance
        (through torch.compile with ``compiled``)."""
        if not compiled:
            self._eager_step(sampler, stop, pad)
            return
        if self.compiled_step is None:
            self.compiled_step = torch.compile(self._eager_step, **COMPILE_OPTIONS)
        with _recompile_room():
            self.compiled_step(sampler, stop, pad)

    def _eager_step(self, sampler: Sampler, stop: torch.Tensor | None, pad: int) -> None:
        logits = self.model(
            self.token, attention_mask=self.mask, position_ids=self.positions, past_key_values=self.cache,
            use_cache=True, logits_to_keep=1,
        ).logits[:, -1].float()  # [B, vocab]
        self.record(sampler(logits), stop, pad)
        self.positions.add_(1)

    def record(self, nxt: torch.Tensor, stop: torch.Tensor | None, pad: int) -> None:
        """Store the tokens nxt [B] (pad for finished rows) as new token number ``step``; mark stops."""
        if stop is not None:
            nxt = nxt.masked_fill(self.done, pad)
            self.done |= (nxt[:, None] == stop).any(-1)
        self.out.index_copy_(1, self.step, nxt[:, None])
        self.step.add_(1)
        self.token.copy_(nxt[:, None])

    def replay(self, key: tuple, bucket: int, sampler: Sampler, stop: torch.Tensor | None, pad: int,
               compiled: bool = False) -> None:
        """Run one step through the CUDA graph of (key, bucket), capturing it first if needed."""
        if (key, bucket) not in self.graphs:
            try:
                self.graphs[(key, bucket)] = self._capture(bucket, sampler, stop, pad, compiled)
            except RuntimeError as error:  # e.g. an op that syncs: decode this configuration eagerly instead
                warnings.warn(f"fast_generate: CUDA graph capture failed ({error}); decoding without graphs.",
                              stacklevel=3)
                self.graphs[(key, bucket)] = None
        graph = self.graphs[(key, bucket)]
        if graph is None:
            self.run_step(sampler, stop, pad, compiled)
        else:
            graph.replay()

    def _capture(self, bucket: int, sampler: Sampler, stop: torch.Tensor | None, pad: int,
                 compiled: bool) -> torch.cuda.CUDAGraph:
        state = [t.clone() for t in (self.token, self.positions, self.done, self.step, self.cache.length)]
        rng = torch.cuda.get_rng_state()
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # warm-up: compiles, Triton autotunes, cuBLAS picks its kernels
            self.run_step(sampler, stop, pad, compiled)
        torch.cuda.current_stream().wait_stream(side)
        for saved, live in zip(state, (self.token, self.positions, self.done, self.step, self.cache.length)):
            live.copy_(saved)  # the warm-up steps rewrite the same cache positions when they run for real
        torch.cuda.set_rng_state(rng)
        if self.pool is None:
            self.pool = torch.cuda.graph_pool_handle()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self.pool):
            self.run_step(sampler, stop, pad, compiled)
        return graph


def _session(model: nn.Module, batch: int, capacity: int) -> DecodeSession:
    """The model's decode session for (batch, capacity), kept for the next call (one per model)."""
    session = model.__dict__.get("_softpick_decode_session")
    param = next(model.parameters())
    if (session is None or session.batch != batch or session.capacity != capacity
            or session.token.device != param.device or session.cache.keys[0].dtype != param.dtype):
        model.__dict__["_softpick_decode_session"] = None  # free the old cache before allocating the new one
        session = DecodeSession(model, batch, capacity)
        model.__dict__["_softpick_decode_session"] = session
    return session


def _option(model: nn.Module, name: str, value):
    """A sampling option as ``generate`` resolves it: the call's value, else the model's, else the default."""
    if value is not None:
        return value
    config_value = getattr(getattr(model, "generation_config", None), name, None)
    return HF_SAMPLING_DEFAULTS[name] if config_value is None else config_value


def supports_fast_generate(model: nn.Module) -> bool:
    """True for the models :func:`fast_generate` runs (softpick models: SoftpickForCausalLM)."""
    from softpick.models.modeling_softpick import SoftpickForCausalLM

    return isinstance(model, SoftpickForCausalLM)


_UNSET = object()


@torch.no_grad()
def fast_generate(
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    *,
    max_new_tokens: int,
    do_sample: bool = False,
    temperature: float | None = None,
    top_k: int | None = None,
    top_p: float | None = None,
    eos_token_id: int | Sequence[int] | None = _UNSET,
    pad_token_id: int | None = None,
    streamer=None,
    graphs: bool | None = None,
    compile: bool | None = None,
    should_stop: Callable[[torch.Tensor], bool] | None = None,
    notice: Callable[[str], None] | None = None,
) -> torch.Tensor:
    """Prompt plus continuation [B, T0 + n], n <= max_new_tokens, as ``model.generate`` returns it.

    Args:
        model: a SoftpickForCausalLM in eval mode.
        input_ids: [B, T0] prompts, left-padded when their lengths differ.
        attention_mask: [B, T0], 1 = token, 0 = padding; None = no padding.
        max_new_tokens: tokens to add (fewer when every row stops early).
        do_sample, temperature, top_k, top_p: as in ``generate`` (None: the model's generation_config, else
            transformers' default 1.0, 50, 1.0).
        eos_token_id: stop token id(s); default the model's generation_config.eos_token_id. A row that
            produced one gets ``pad_token_id`` afterwards; decoding ends when every row has one.
        pad_token_id: filler of finished rows; default the generation_config's, else the first stop token.
        streamer: a transformers streamer (``put`` / ``end``), batch 1; fed every SYNC_EVERY steps on CUDA.
        graphs: capture steps in CUDA graphs; None = on CUDA. False runs the same step without them.
        compile: run the decoding step through ``torch.compile`` (inductor fuses the norms, rotary,
            residuals, SwiGLU, casts and sampling around the GEMMs and the attention op); None = on
            CUDA from COMPILE_MIN_NEW_TOKENS new tokens on. Compiled once per (batch, capacity, sampling
            setup) and process, before the first step.
        should_stop: called at each host read with the new tokens so far [B, n] (CPU); True ends the call
            there (e.g. every row holds a stop string). The result then holds those n tokens.
        notice: called with a line for the user before and after a compile of the step (what they wait for).

    Returns:
        int64 [B, T0 + n] on the model's device.
    """
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be at least 1, got {max_new_tokens}.")
    if input_ids.dim() != 2:
        raise ValueError(f"input_ids must be [batch, tokens], got shape {tuple(input_ids.shape)}.")
    device = next(model.parameters()).device
    input_ids = input_ids.to(device)
    B, T0 = input_ids.shape
    graphs = device.type == "cuda" if graphs is None else graphs
    if compile is None:
        compile = device.type == "cuda" and max_new_tokens >= COMPILE_MIN_NEW_TOKENS
    if graphs and device.type != "cuda":
        raise ValueError("CUDA graphs need the model on a CUDA device; pass graphs=False.")
    if streamer is not None and B != 1:
        raise ValueError(f"a streamer takes one prompt, got a batch of {B}.")
    config = getattr(model, "generation_config", None)
    stop_ids = _ids(getattr(config, "eos_token_id", None) if eos_token_id is _UNSET else eos_token_id)
    if pad_token_id is None:
        pad_token_id = getattr(config, "pad_token_id", None)
    if pad_token_id is None:
        pad_token_id = stop_ids[0] if stop_ids else 0
    sampler = Sampler(do_sample, float(_option(model, "temperature", temperature)), int(_option(model, "top_k", top_k)),
                      float(_option(model, "top_p", top_p)))

    capacity = LENGTH_ROUND * math.ceil((T0 + max_new_tokens) / LENGTH_ROUND)
    with fused_projections(model):
        return _decode(model, input_ids, attention_mask, max_new_tokens, sampler, stop_ids, pad_token_id, streamer,
                       graphs, compile, should_stop, notice, capacity)


def _decode(model, input_ids, attention_mask, max_new_tokens, sampler, stop_ids, pad_token_id, streamer, graphs,
            compile, should_stop, notice, capacity) -> torch.Tensor:
    """fast_generate's body once the options are resolved (inside :func:`fused_projections`)."""
    from softpick.ops.attention.triton.kv_cache import launch_keys

    device = input_ids.device
    B, T0 = input_ids.shape
    session = _session(model, B, capacity)
    stop = session.stop_tensor(stop_ids)
    if attention_mask is not None:
        attention_mask = attention_mask.to(device)
        if bool(attention_mask.all()):  # one host read per call: unpadded batches take the unmasked kernels
            attention_mask = None
    session.reset(attention_mask)
    if streamer is not None:
        streamer.put(input_ids.cpu())

    # prefill: positions as generate computes them (padding skipped), then the first new token
    if attention_mask is None:
        prompt_positions = torch.arange(T0, device=device)[None].expand(B, -1)
    else:
        prompt_positions = (attention_mask.long().cumsum(-1) - 1).masked_fill(attention_mask == 0, 1)
    logits = model(input_ids, attention_mask=attention_mask, position_ids=prompt_positions,
                   past_key_values=session.cache, use_cache=True, logits_to_keep=1).logits[:, -1].float()
    session.record(sampler(logits), stop, pad_token_id)
    session.positions.copy_(prompt_positions[:, -1:] + 1)

    key = (sampler.key, tuple(stop_ids), pad_token_id, attention_mask is not None, compile)  # last: compiled
    buckets = length_buckets(capacity)
    sync_every = SYNC_EVERY if device.type == "cuda" else 1
    streamed, n = 0, max_new_tokens
    for i in range(1, max_new_tokens + 1):
        reads = stop is not None or streamer is not None or should_stop is not None
        if reads and (i == max_new_tokens or i % sync_every == 0):
            if streamer is not None and streamed is not None:
                streamed = _stream(streamer, session.out[0, streamed:i].cpu(), stop_ids, streamed)
            if (stop is not None and bool(session.done.all())) or (
                    should_stop is not None and should_stop(session.out[:, :i].cpu())):
                n = i
                break
        if i == max_new_tokens:
            break
        kv_after = T0 + i  # keys in the cache once this step's token is written
        bucket = next(b for b in buckets if b >= kv_after)
        with launch_keys(bucket), _announce_compile(session, key, notice):
            if graphs:
                session.replay(key, bucket, sampler, stop, pad_token_id, compile)
            else:
                session.run_step(sampler, stop, pad_token_id, compile)
    new = session.out[:, :n]
    if stop is not None:
        new = new[:, : _tokens_until_all_stopped(new, stop)]
    if streamer is not None:
        streamer.end()
    return torch.cat([input_ids, new], dim=1)


@contextlib.contextmanager
def _announce_compile(session: DecodeSession, key: tuple, notice: Callable[[str], None] | None):
    """Tell ``notice`` when the step about to run is compiled first (the user waits for it), and how long it took."""
    if not key[-1] or key in session.compiled_keys:  # key[-1]: the step is compiled
        yield
        return
    if notice is not None:
        notice(f"compiling the decoding step for batch {session.batch}, {session.capacity} positions "
               "(once per batch, length and sampling setup in this process) ...")
    start = time.perf_counter()
    yield
    session.compiled_keys.add(key)
    if notice is not None:
        notice(f"compiled in {time.perf_counter() - start:.1f} s")


ROUTED_OPTIONS = frozenset({"input_ids", "attention_mask", "max_new_tokens", "do_sample", "temperature", "top_k",
                            "top_p", "eos_token_id", "pad_token_id", "streamer", "cache_implementation", "use_cache"})
"""``generate`` keywords a call may use and still run :func:`fast_generate` (see :func:`static_cache_generate`)."""

NEUTRAL_CONFIG_FIELDS = frozenset({"bos_token_id", "eos_token_id", "pad_token_id", "do_sample", "temperature", "top_k",
                                   "top_p", "max_length", "max_new_tokens", "use_cache", "cache_implementation",
                                   "output_attentions", "output_hidden_states", "_from_model_config",
                                   "transformers_version"})
"""generation_config fields fast_generate reads or that leave the tokens alone (output_* only when false)."""


def static_cache_generate(model: nn.Module, args: tuple, kwargs: dict) -> torch.Tensor | None:
    """``model.generate(input_ids, cache_implementation="static", ...)`` run by :func:`fast_generate`, or None.

    transformers' loop costs about a millisecond of host time per step even when its forward is
    compiled; a call that asks for the static cache with options the fast loop computes exactly
    (greedy or temperature / top-k / top-p sampling, stop and pad ids, a streamer; a generation_config
    that sets nothing else) gets the fast loop's tokens, which are generate()'s. Any other call (beams,
    logits processors, ``return_dict_in_generate``, an explicit cache or compile_config, a prompt
    holding the pad id without attention_mask, ...) returns None and goes through transformers.
    """
    if kwargs.get("cache_implementation") != "static" or len(args) > 1 or not supports_fast_generate(model):
        return None
    input_ids = args[0] if args else kwargs.get("input_ids")
    config = getattr(model, "generation_config", None)
    if (not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2 or set(kwargs) - ROUTED_OPTIONS
            or kwargs.get("use_cache") is False or config is None):
        return None
    settings = config.to_diff_dict()
    if (set(settings) - NEUTRAL_CONFIG_FIELDS or settings.get("output_attentions")
            or settings.get("output_hidden_states")):
        return None
    pad = kwargs.get("pad_token_id", config.pad_token_id)
    mask = kwargs.get("attention_mask")
    if mask is None and pad is not None and bool((input_ids == pad).any()):
        return None  # generate would infer a padding mask from the pad id
    max_new = kwargs.get("max_new_tokens") or config.max_new_tokens or config.max_length - input_ids.shape[1]
    if max_new < 1:
        return None
    extra = {"eos_token_id": kwargs["eos_token_id"]} if "eos_token_id" in kwargs else {}
    return fast_generate(
        model, input_ids, mask, max_new_tokens=max_new, do_sample=bool(kwargs.get("do_sample", config.do_sample)),
        temperature=kwargs.get("temperature"), top_k=kwargs.get("top_k"), top_p=kwargs.get("top_p"),
        pad_token_id=pad, streamer=kwargs.get("streamer"), **extra,
    )


def _stream(streamer, chunk: torch.Tensor, stop_ids: list[int], streamed: int) -> int | None:
    """Feed the new tokens chunk [n] (row 0) to the streamer up to its first stop token; returns the count
    streamed so far, or None once a stop token went out (the rest is padding)."""
    hits = [j for j, t in enumerate(chunk.tolist()) if t in stop_ids]
    if hits:
        streamer.put(chunk[: hits[0] + 1])
        return None
    streamer.put(chunk)
    return streamed + len(chunk)


def _tokens_until_all_stopped(new: torch.Tensor, stop: torch.Tensor) -> int:
    """How many of the new tokens [B, n] generate would return: up to the step where the last row stopped."""
    hits = torch.isin(new, stop)  # [B, n]
    first = torch.where(hits.any(1), hits.float().argmax(1), torch.full_like(hits[:, 0], new.shape[1] - 1,
                                                                           dtype=torch.long))
    return int(first.max()) + 1


def _register_route() -> None:
    from softpick.models.modeling_softpick import GENERATE_ROUTES

    if static_cache_generate not in GENERATE_ROUTES:
        GENERATE_ROUTES.append(static_cache_generate)


_register_route()

__all__ = ["DecodeSession", "Sampler", "fast_generate", "length_buckets", "static_cache_generate",
           "supports_fast_generate"]
