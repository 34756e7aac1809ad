"""KV cache and generate(): cached decoding equals full forwards, for softpick and softmax, with padding."""

import pytest
import torch
from transformers import DynamicCache

from softpick.models import CACHE_FIELD

from tiny_models import VOCAB, tiny_model

NEW = 8


def generation_model(attn_type):
    return tiny_model(attn_type=attn_type, eos_token_id=None)  # no early stop: every call makes NEW tokens


def argmax_loop(model, ids: torch.Tensor) -> torch.Tensor:
    """Greedy decoding by full forwards without a cache, the reference for generate()."""
    for _ in range(NEW):
        next_id = model(ids, use_cache=False).logits[:, -1].argmax(-1, keepdim=True)
        ids = torch.cat([ids, next_id], dim=1)
    return ids


@torch.no_grad()
def test_cached_decoding_logits_equal_full_forward(attn_type):
    """Prefill 6 tokens, then feed 5 one at a time through a DynamicCache, with a left-padded row."""
    model = tiny_model(attn_type=attn_type)
    ids = torch.randint(3, VOCAB, (2, 11))
    mask = torch.ones_like(ids)
    mask[0, :3] = 0
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    full = model(ids, attention_mask=mask, position_ids=positions, use_cache=False).logits

    cache = DynamicCache(config=model.config)
    out = model(ids[:, :6], attention_mask=mask[:, :6], position_ids=positions[:, :6], past_key_values=cache)
    assert getattr(out, CACHE_FIELD) is cache and cache.get_seq_length() == 6
    steps = [out.logits]
    for t in range(6, 11):
        out = model(
            ids[:, t : t + 1], attention_mask=mask[:, : t + 1], position_ids=positions[:, t : t + 1], cache=cache
        )
        steps.append(out.logits)
    real = mask.bool()
    torch.testing.assert_close(torch.cat(steps, dim=1)[real], full[real], atol=1e-5, rtol=1e-5)


@torch.no_grad()
def test_greedy_generate_with_and_without_cache(attn_type):
    model = generation_model(attn_type)
    prompt = torch.randint(3, VOCAB, (2, 6))
    expected = argmax_loop(model, prompt)
    cached = model.generate(prompt, max_new_tokens=NEW, do_sample=False, use_cache=True)
    uncached = model.generate(prompt, max_new_tokens=NEW, do_sample=False, use_cache=False)
    assert torch.equal(cached, expected) and torch.equal(uncached, expected)


@torch.no_grad()
def test_sampling_with_and_without_cache(attn_type):
    model = generation_model(attn_type)
    prompt = torch.randint(3, VOCAB, (1, 5))
    runs = []
    for use_cache in (True, False):
        torch.manual_seed(7)
        runs.append(model.generate(prompt, max_new_tokens=NEW, do_sample=True, top_k=20, use_cache=use_cache))
    assert runs[0].shape == (1, 5 + NEW) and torch.equal(runs[0], runs[1])


@torch.no_grad()
def test_left_padded_batch_equals_single_prompts(attn_type):
    model = generation_model(attn_type)
    prompts = [torch.randint(3, VOCAB, (n,)) for n in (4, 9, 6)]
    width = max(len(p) for p in prompts)
    batch = torch.zeros(len(prompts), width, dtype=torch.long)  # pad id 0, on the left
    mask = torch.zeros_like(batch)
    for row, p in enumerate(prompts):
        batch[row, width - len(p) :] = p
        mask[row, width - len(p) :] = 1
    together = model.generate(batch, attention_mask=mask, max_new_tokens=NEW, do_sample=False)
    for row, p in enumerate(prompts):
        alone = model.generate(p[None], max_new_tokens=NEW, do_sample=False)
        assert torch.equal(together[row, width:], alone[0, len(p) :]), f"row {row}"


@torch.no_grad()
def test_decoding_appends_in_place_and_survives_crop_and_beam_search():
    """The cache grows in a buffer (no copy of the whole cache per token); crop and beams still work."""
    model = generation_model("softpick")
    prompt = torch.randint(3, VOCAB, (2, 6))
    cache = DynamicCache(config=model.config)
    out = model(prompt, past_key_values=cache)
    token = out.logits[:, -1:].argmax(-1)
    pointers = set()
    for _ in range(5):
        out = model(token, past_key_values=cache)
        token = out.logits[:, -1:].argmax(-1)
        pointers.add(cache.layers[0].keys.data_ptr())
    assert len(pointers) == 1 and cache.get_seq_length() == 11  # one buffer, written in place
    full = model(torch.cat([prompt, torch.randint(3, VOCAB, (2, 3))], 1), use_cache=False).logits
    cache.crop(-5)  # back to the prompt, then feed other tokens: the buffer is overwritten, not stale
    extra = torch.cat([prompt, torch.randint(3, VOCAB, (2, 3))], 1)
    step = model(extra[:, 6:], past_key_values=cache).logits
    torch.testing.assert_close(step, model(extra, use_cache=False).logits[:, 6:], atol=1e-5, rtol=1e-5)
    assert full.shape[1] == 9
    beams = [model.generate(prompt, max_new_tokens=NEW, num_beams=3, do_sample=False, use_cache=c) for c in (True, False)]
    assert torch.equal(beams[0], beams[1])


@torch.no_grad()
@pytest.mark.parametrize("route", [True, False], ids=["fast-loop", "transformers-loop"])
def test_static_cache_generation_equals_dynamic(attn_type, route, monkeypatch):
    """generate(cache_implementation="static"): the same tokens as the default cache, with a left-padded
    batch, whether the fast loop runs it (the default) or transformers' loop with its StaticCache (the
    model reads the valid prefix of each static layer)."""
    from softpick.models import modeling_softpick

    if not route:
        monkeypatch.setattr(modeling_softpick, "GENERATE_ROUTES", [])
    model = generation_model(attn_type)
    batch = torch.randint(3, VOCAB, (2, 7))
    mask = torch.ones_like(batch)
    mask[0, :3] = 0
    dynamic = model.generate(batch, attention_mask=mask, max_new_tokens=NEW, do_sample=False)
    static = model.generate(batch, attention_mask=mask, max_new_tokens=NEW, do_sample=False,
                            cache_implementation="static")
    assert torch.equal(static, dynamic)
    assert ("_softpick_decode_session" in model.__dict__) == route
