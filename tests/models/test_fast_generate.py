"""The fast decode loop (softpick.models.fast_generate) gives generate()'s tokens; its step compiles.

On the CPU the loop runs the same step function that CUDA captures in a graph (tests/models/
test_fast_generate_gpu.py replays it); here: greedy and seeded sampling equal ``model.generate`` for
every attention variant, GQA, left padding and stop tokens, and the step traces with fullgraph.
"""

import pytest
import torch

from softpick.models.cache import StaticKVCache
from softpick.models.fast_generate import fast_generate, length_buckets

from tiny_models import VOCAB, activate_variant_parameters, tiny_model

NEW = 10

VARIANTS = [dict(attn_type="softpick"), dict(attn_type="softmax"), dict(attn_type="sink"),
            dict(attn_type="softmax_plus_one"), dict(attn_type="softpick", ssmax=True),
            dict(attn_type="softpick", output_gate="elementwise"), dict(attn_type="softmax", output_gate="headwise"),
            dict(attn_type="softpick", num_key_value_heads=1)]


def variant_id(fields: dict) -> str:
    return "-".join(str(v) for v in fields.values())


def variant_model(**fields):
    return activate_variant_parameters(tiny_model(eos_token_id=None, **fields))


def linears_per_graph(graphs: list) -> list[int]:
    """A torch.compile backend's record: the linear (GEMM) calls in each graph dynamo traced."""
    return [sum(node.target is torch._C._nn.linear for node in gm.graph.nodes) for gm in graphs]


def recording_backend(graphs: list):
    """A torch.compile backend that keeps every traced graph and runs it as traced (like backend="eager")."""
    def backend(gm, example_inputs, **options):  # transformers passes mode=
        graphs.append(gm)
        return gm.forward
    return backend


FUSED_LINEARS = 2 * 4 + 1
"""GEMMs of a tiny model's step with fused projections: (q/k/v, o, gate/up, down) x 2 layers + the head."""


def left_padded(lengths):
    width = max(lengths)
    ids = torch.zeros(len(lengths), width, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, n in enumerate(lengths):
        ids[row, width - n:] = torch.randint(3, VOCAB, (n,))
        mask[row, width - n:] = 1
    return ids, mask


@torch.no_grad()
@pytest.mark.parametrize("fields", VARIANTS, ids=variant_id)
def test_greedy_tokens_equal_generate(fields):
    model = variant_model(**fields)
    ids, mask = left_padded([5, 9, 7])
    expected = model.generate(ids, attention_mask=mask, max_new_tokens=NEW, do_sample=False)
    assert torch.equal(fast_generate(model, ids, mask, max_new_tokens=NEW), expected)
    unpadded = ids[1:2]
    expected = model.generate(unpadded, max_new_tokens=NEW, do_sample=False)
    assert torch.equal(fast_generate(model, unpadded, max_new_tokens=NEW), expected)


@torch.no_grad()
@pytest.mark.parametrize("attn_type", ["softpick", "sink"])
def test_seeded_sampling_equals_generate(attn_type):
    model = variant_model(attn_type=attn_type)
    ids, mask = left_padded([4, 8])
    for options in (dict(top_k=20, top_p=0.9, temperature=0.7), dict(), dict(top_k=0, temperature=1.3)):
        torch.manual_seed(11)
        expected = model.generate(ids, attention_mask=mask, max_new_tokens=NEW, do_sample=True, **options)
        torch.manual_seed(11)
        out = fast_generate(model, ids, mask, max_new_tokens=NEW, do_sample=True, **options)
        assert torch.equal(out, expected), options


@torch.no_grad()
def test_stop_tokens_end_rows_and_the_call_like_generate():
    model = variant_model(attn_type="softpick")
    ids, mask = left_padded([6, 3])
    greedy = model.generate(ids, attention_mask=mask, max_new_tokens=NEW, do_sample=False)[:, ids.shape[1]:]
    # stop ids that each row reaches at a different step before NEW: the call ends when the later one does
    stops = [int(greedy[0, 2]), int(greedy[1, 5])]
    model.generation_config.eos_token_id = stops
    model.generation_config.pad_token_id = 0
    expected = model.generate(ids, attention_mask=mask, max_new_tokens=NEW, do_sample=False)
    out = fast_generate(model, ids, mask, max_new_tokens=NEW)
    assert expected.shape[1] < ids.shape[1] + NEW and torch.equal(out, expected)
    out = fast_generate(model, ids, mask, max_new_tokens=NEW, eos_token_id=None)  # explicit: no stop token
    assert torch.equal(out[:, ids.shape[1]:], greedy)


@torch.no_grad()
def test_session_is_reused_and_reset_between_calls():
    model = variant_model(attn_type="softmax")
    first, second = torch.randint(3, VOCAB, (2, 6)), torch.randint(3, VOCAB, (2, 9))
    fast_generate(model, first, max_new_tokens=NEW)
    session = model.__dict__["_softpick_decode_session"]
    out = fast_generate(model, second, max_new_tokens=NEW)  # same (batch, capacity): the same cache, reset
    assert model.__dict__["_softpick_decode_session"] is session
    assert torch.equal(out, model.generate(second, max_new_tokens=NEW, do_sample=False))
    assert int(session.cache.length) == 9 + NEW - 1  # the last token is drawn, not fed back


def test_length_buckets_cover_the_capacity():
    assert length_buckets(256) == [256]
    assert length_buckets(1280) == [256, 512, 1024, 1280]
    assert length_buckets(2048) == [256, 512, 1024, 2048]


@torch.no_grad()
def test_static_kv_cache_decoding_step_equals_the_dynamic_cache():
    """One forward at a time through StaticKVCache (prefill, then steps) gives the DynamicCache logits."""
    model = variant_model(attn_type="softpick", ssmax=True)
    ids, mask = left_padded([7, 11])
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    full = model(ids, attention_mask=mask, position_ids=positions, use_cache=False).logits
    cache = StaticKVCache.for_model(model.config, 2, 32, "cpu", torch.float32)
    pieces = [model(ids[:, :8], attention_mask=mask[:, :8], position_ids=positions[:, :8], past_key_values=cache).logits]
    padded_mask = torch.ones(2, 32, dtype=torch.long)
    padded_mask[:, :11] = mask
    for t in range(8, 11):
        pieces.append(model(ids[:, t:t + 1], attention_mask=padded_mask, position_ids=positions[:, t:t + 1],
                            past_key_values=cache).logits)
    assert int(cache.length) == 11 and int(cache.kv_len) == 11
    real = mask.bool()
    torch.testing.assert_close(torch.cat(pieces, 1)[real], full[real], atol=1e-5, rtol=1e-5)


@torch.no_grad()
@pytest.mark.parametrize("fields", [VARIANTS[0], dict(attn_type="sink", ssmax=True, output_gate="headwise",
                                                     num_key_value_heads=1)], ids=variant_id)
def test_compiled_step_is_one_graph_and_gives_generates_tokens(fields, monkeypatch):
    """fast_generate(compile=True): torch.compile(fullgraph=True) traces the whole step (model with fused
    projections, sampler, bookkeeping) as one graph, once per call shape, and its tokens are generate()'s."""
    from torch._dynamo.utils import counters

    from softpick.models import fast_generate as fast

    graphs = []
    monkeypatch.setattr(fast, "COMPILE_OPTIONS", {**fast.COMPILE_OPTIONS, "backend": recording_backend(graphs),
                                                  "options": None})
    model = variant_model(**fields)
    ids, mask = left_padded([5, 8])
    expected = model.generate(ids, attention_mask=mask, max_new_tokens=NEW, do_sample=False)
    counters.clear()
    notices = []
    assert torch.equal(fast_generate(model, ids, mask, max_new_tokens=NEW, compile=True, notice=notices.append),
                       expected)
    assert counters["stats"]["unique_graphs"] == 1 and not counters["graph_break"]
    assert linears_per_graph(graphs) == [FUSED_LINEARS]  # q/k/v (+ gate) one GEMM, gate/up one GEMM
    assert len(notices) == 2 and notices[0].startswith("compiling the decoding step")
    assert torch.equal(fast_generate(model, ids, mask, max_new_tokens=NEW, compile=True, notice=notices.append),
                       expected)
    assert counters["stats"]["unique_graphs"] == 1 and len(notices) == 2  # reused: no second compile


@torch.no_grad()
def test_compiled_step_stops_rows_like_generate(monkeypatch):
    """Stop tokens in the compiled step (the done mask, padding of finished rows): generate()'s tokens."""
    from softpick.models import fast_generate as fast

    monkeypatch.setattr(fast, "COMPILE_OPTIONS", {**fast.COMPILE_OPTIONS, "backend": "eager", "options": None})
    model = variant_model(attn_type="softmax")
    ids, mask = left_padded([6, 3])
    greedy = model.generate(ids, attention_mask=mask, max_new_tokens=NEW, do_sample=False)[:, ids.shape[1]:]
    model.generation_config.eos_token_id = [int(greedy[0, 2]), int(greedy[1, 5])]
    model.generation_config.pad_token_id = 0
    expected = model.generate(ids, attention_mask=mask, max_new_tokens=NEW, do_sample=False)
    assert torch.equal(fast_generate(model, ids, mask, max_new_tokens=NEW, compile=True), expected)


@torch.no_grad()
def test_compiled_step_holds_the_kv_cache_attention_op(monkeypatch):
    """With the Triton kernels (the interpreter here, the GPU's path) the compiled step keeps the KV-cache
    attention as one custom op per layer in its graph, and gives the eager step's tokens."""
    from softpick.models import fast_generate as fast

    graphs = []
    monkeypatch.setattr(fast, "COMPILE_OPTIONS", {**fast.COMPILE_OPTIONS, "backend": recording_backend(graphs),
                                                  "options": None})
    model = variant_model(attn_type="softpick", attn_impl="triton")
    ids, mask = left_padded([3, 8])
    expected = fast_generate(model, ids, mask, max_new_tokens=6)
    assert torch.equal(fast_generate(model, ids, mask, max_new_tokens=6, compile=True), expected)
    ops = [node.target for node in graphs[0].graph.nodes if node.target is torch.ops.softpick.attention_decode.default]
    assert len(graphs) == 1 and len(ops) == model.config.num_hidden_layers


@pytest.mark.slow
@torch.no_grad()
def test_inductor_step_gives_eager_tokens():
    """The step as inductor builds it on the CPU (fused kernels, the draw from torch's generator): seeded
    top-k sampling gives the tokens of the eager step (one compile: a few tens of seconds)."""
    model = variant_model(attn_type="softpick")
    ids, mask = left_padded([4, 9])
    runs = []
    for compile in (False, True):
        torch.manual_seed(3)
        runs.append(fast_generate(model, ids, mask, max_new_tokens=NEW, compile=compile, do_sample=True, top_k=20,
                                  temperature=0.8))
    assert torch.equal(runs[0], runs[1])


@torch.no_grad()
def test_fused_projections_keep_parameters_and_checkpoint(tmp_path):
    """Inside fused_projections q/k/v (+ gate) and gate/up are one GEMM each; the parameters become views
    of the fused weights (same names, same state dict, nothing stored twice) and the logits are unchanged;
    after model.to(...) the fused weights are rebuilt, never stale."""
    from softpick.models.modeling_softpick import fused_projections

    model = variant_model(attn_type="softpick", output_gate="elementwise")
    ids = torch.randint(3, VOCAB, (2, 9))
    keys = list(model.state_dict())
    reference = model(ids).logits
    with fused_projections(model):
        attn, mlp = model.model.layers[0].self_attn, model.model.layers[0].mlp
        assert attn.fused is not None and mlp.fused is not None and len(attn.fused.sizes) == 4
        torch.testing.assert_close(model(ids).logits, reference, atol=1e-5, rtol=1e-5)
        assert attn.q_proj.weight.data_ptr() == attn.fused.weight.data_ptr()
        assert attn.k_proj.weight.data_ptr() == attn.fused.weight[attn.q_proj.out_features].data_ptr()
    assert attn.fused is None and list(model.state_dict()) == keys  # outside: the separate linears again
    model.save_pretrained(tmp_path)  # parameters that view one fused weight save as separate tensors
    reloaded = type(model).from_pretrained(tmp_path).eval()
    torch.testing.assert_close(reloaded(ids).logits, reference, atol=1e-6, rtol=1e-6)
    model.to(torch.float64)
    with fused_projections(model):
        assert attn.fused.weight.dtype == torch.float64 and attn.fused.valid()
        torch.testing.assert_close(model(ids.clone()).logits, reference.double(), atol=1e-5, rtol=1e-5)
    model.train()
    with fused_projections(model):  # never while training
        assert attn.fused is None


@torch.no_grad()
def test_static_cache_generate_runs_the_fast_loop_when_it_computes_the_same(monkeypatch):
    """generate(cache_implementation="static") with options the fast loop computes goes to fast_generate
    (same tokens, stop ids and sampling included); any other option stays with transformers."""
    from softpick.models import fast_generate as fast

    model = variant_model(attn_type="softpick")
    model.generation_config.eos_token_id = None
    ids, mask = left_padded([4, 7])
    calls = []
    real = fast.fast_generate
    monkeypatch.setattr(fast, "fast_generate", lambda *a, **kw: calls.append(kw) or real(*a, **kw))
    for options in (dict(do_sample=False), dict(do_sample=True, top_k=10, temperature=0.7)):
        torch.manual_seed(2)
        expected = model.generate(ids, attention_mask=mask, max_new_tokens=NEW, **options)
        torch.manual_seed(2)
        out = model.generate(ids, attention_mask=mask, max_new_tokens=NEW, cache_implementation="static", **options)
        assert torch.equal(out, expected) and len(calls) == 1, options
        calls.clear()
    out = model.generate(ids, attention_mask=mask, max_new_tokens=NEW, cache_implementation="static",
                         repetition_penalty=1.3)  # not the fast loop's: transformers runs it
    assert not calls and out.shape == (2, 7 + NEW)


def test_every_cache_kind_answers_the_same_protocol():
    """update(layer, k, v) -> (k, v, kv_len) for no cache, transformers' dynamic and static caches and ours."""
    from transformers import DynamicCache, StaticCache

    from softpick.models.cache import kv_cache

    config = tiny_model().config
    k, v = torch.randn(2, 2, 3, 16), torch.randn(2, 2, 3, 16)
    for cache, width, valid in ((None, 3, None), (DynamicCache(config=config), 3, None),
                                (StaticCache(config=config, max_cache_len=8), 8, 3),
                                (StaticKVCache.for_model(config, 2, 8, "cpu", torch.float32), 3, None)):
        protocol = kv_cache(cache)
        positions = protocol.begin(3, torch.device("cpu"))
        keys, values, kv_len = protocol.update(0, k, v)
        protocol.end()
        assert torch.equal(positions, torch.arange(3)) and keys.shape[2] == values.shape[2] == width
        assert torch.equal(keys[:, :, :3], k) and (kv_len is None) == (valid is None)
        if valid is not None:
            assert int(kv_len) == valid


@torch.no_grad()
def test_hf_static_cache_generate_compiles_with_fullgraph():
    """generate(cache_implementation="static") through transformers' loop with its compiled decoding step
    (forced on the CPU): one graph, no break (the padding mask keeps the cache's shape, the length stays
    on the device), and the same fused projections as the fast loop's step."""
    from torch._dynamo.utils import counters
    from transformers import CompileConfig

    model = variant_model(attn_type="softmax")
    ids, mask = left_padded([4, 7])
    expected = model.generate(ids, attention_mask=mask, max_new_tokens=6, do_sample=False)
    graphs = []
    config = CompileConfig(backend=recording_backend(graphs), fullgraph=True)
    config._compile_all_devices = True
    counters.clear()
    out = model.generate(ids, attention_mask=mask, max_new_tokens=6, do_sample=False, cache_implementation="static",
                         compile_config=config)
    assert torch.equal(out, expected)
    assert counters["stats"]["unique_graphs"] == 1 and linears_per_graph(graphs) == [FUSED_LINEARS]
