"""CUDA graphs of the fast decode loop: replays give the eager step's tokens, and greedy choices of the
full model, over a grid of batch sizes, prompt lengths (crossing length buckets) and variants; the
compiled step (the default on CUDA) in and out of graphs, and generate() with transformers' compiled
static-cache step.

Needs a CUDA GPU (bf16, the Triton kernels); run with ``python3 -m pytest -q -m gpu tests/models``.
"""

import pytest
import torch

from softpick.models.fast_generate import fast_generate

from tiny_models import VOCAB, activate_variant_parameters, tiny_model

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]

VARIANTS = [dict(attn_type="softpick"), dict(attn_type="softmax"), dict(attn_type="sink"),
            dict(attn_type="softpick", ssmax=True, output_gate="headwise"), dict(attn_type="softmax_plus_one")]
NEW = 48


def gpu_model(**fields):
    model = tiny_model(eos_token_id=None, hidden_size=256, num_attention_heads=4, **fields)  # head_dim 64, GQA 2
    return activate_variant_parameters(model).to("cuda", torch.bfloat16)


def prompts(batch: int, length: int, padded: bool):
    ids = torch.randint(3, VOCAB, (batch, length), device="cuda")
    mask = torch.ones_like(ids)
    if padded:
        for row in range(batch):
            mask[row, : (7 * row) % max(1, length // 2)] = 0
    return ids, (mask if padded else None)


@torch.no_grad()
@pytest.mark.parametrize("fields", VARIANTS, ids=lambda f: "-".join(str(v) for v in f.values()))
@pytest.mark.parametrize("batch, length, padded", [(1, 5, False), (3, 230, True), (8, 500, False), (32, 40, True)])
def test_graph_replays_equal_the_eager_step(fields, batch, length, padded):
    """Same kernels, same launches: graphs and graphs=False give bit-identical tokens (the eager step, so
    the grid costs no compile); 230 + 48 and 500 + 48 tokens cross a bucket boundary (256, 512 keys), so
    two graphs of one session are used."""
    model = gpu_model(**fields)
    ids, mask = prompts(batch, length, padded)
    eager = fast_generate(model, ids, mask, max_new_tokens=NEW, graphs=False, compile=False)
    graphed = fast_generate(model, ids, mask, max_new_tokens=NEW, graphs=True, compile=False)
    assert torch.equal(graphed, eager)
    session = model.__dict__["_softpick_decode_session"]
    assert len(session.graphs) >= (2 if length in (230, 500) else 1)
    assert all(graph is not None for graph in session.graphs.values())  # no capture fell back to eager
    assert_greedy(model, graphed, mask, length)


@torch.no_grad()
@pytest.mark.parametrize("fields", [VARIANTS[0], VARIANTS[3]], ids=lambda f: "-".join(str(v) for v in f.values()))
@pytest.mark.parametrize("batch, length, padded", [(1, 500, False), (8, 230, True)])
def test_compiled_step_in_graphs(fields, batch, length, padded):
    """The default step (compiled, fused projections): graphs replay exactly what the compiled step
    computes without them, across buckets, and every token is the full model's greedy choice."""
    model = gpu_model(**fields)
    ids, mask = prompts(batch, length, padded)
    graphed = fast_generate(model, ids, mask, max_new_tokens=NEW, compile=True)
    session = model.__dict__["_softpick_decode_session"]
    assert session.compiled_step is not None and len(session.graphs) == 2
    assert all(graph is not None for graph in session.graphs.values())
    assert torch.equal(fast_generate(model, ids, mask, max_new_tokens=NEW, graphs=False, compile=True), graphed)
    assert_greedy(model, graphed, mask, length)


@torch.no_grad()
def test_hf_static_cache_generate_on_the_gpu():
    """generate(cache_implementation="static"): routed to the fast loop, and through transformers' loop
    (min_new_tokens keeps it there), which compiles our forward (reduce-overhead); either way the tokens
    are the full model's greedy choices."""
    model = gpu_model(attn_type="softpick")
    ids, mask = prompts(4, 60, True)
    routed = model.generate(ids, attention_mask=mask, max_new_tokens=NEW, cache_implementation="static")
    assert "_softpick_decode_session" in model.__dict__
    assert_greedy(model, routed, mask, 60)
    out = model.generate(ids, attention_mask=mask, max_new_tokens=NEW, min_new_tokens=NEW, do_sample=False,
                         cache_implementation="static")
    assert_greedy(model, out, mask, 60)


def assert_greedy(model, graphed, mask, length):
    """Every new token of graphed [B, length + n] is the argmax of a full forward's logits there (up to
    bf16 rounding of near ties)."""
    # greedy against the full model: every token the graphs chose is the argmax of the logits a full
    # (uncached, teacher-forced) forward gives there, up to bf16 rounding of near ties
    positions = None if mask is None else (torch.cat([mask, torch.ones_like(graphed[:, length:])], 1).cumsum(-1) - 1
                                           ).clamp(min=0)
    full_mask = None if mask is None else torch.cat([mask, torch.ones_like(graphed[:, length:])], 1)
    logits = model(graphed, attention_mask=full_mask, position_ids=positions, use_cache=False).logits.float()
    step_logits = logits[:, length - 1:-1]  # [B, NEW, vocab] predicting each new token
    chosen = step_logits.gather(-1, graphed[:, length:, None])[..., 0]
    gap = step_logits.amax(-1) - chosen
    assert gap.max() <= 0.1, f"a graph token is {gap.max():.3f} below the full forward's best logit"


@torch.no_grad()
def test_graph_sampling_is_reproducible_with_a_seed():
    model = gpu_model(attn_type="softpick")
    ids, mask = prompts(4, 50, True)
    runs = []
    for seed in (5, 5, 6):
        torch.manual_seed(seed)
        runs.append(fast_generate(model, ids, mask, max_new_tokens=NEW, do_sample=True, top_k=30, top_p=0.95,
                                  compile=True))
    assert torch.equal(runs[0], runs[1]) and not torch.equal(runs[0], runs[2])
    assert all(graph is not None for graph in model.__dict__["_softpick_decode_session"].graphs.values())


@torch.no_grad()
def test_graph_stop_tokens_equal_the_eager_step():
    model = gpu_model(attn_type="softpick")
    ids, mask = prompts(3, 20, True)
    greedy = fast_generate(model, ids, mask, max_new_tokens=NEW, graphs=False, compile=True)[:, 20:]
    stops = [int(greedy[0, 3]), int(greedy[1, 20]), int(greedy[2, 30])]
    eager = fast_generate(model, ids, mask, max_new_tokens=NEW, eos_token_id=stops, pad_token_id=0, graphs=False,
                          compile=True)
    graphed = fast_generate(model, ids, mask, max_new_tokens=NEW, eos_token_id=stops, pad_token_id=0, graphs=True,
                            compile=True)
    assert torch.equal(graphed, eager) and graphed.shape[1] < 20 + NEW
