"""lm-eval generate_until on a softpick model decodes with fast_generate and gives HFLM's own texts."""

import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("lm_eval")

from lm_eval.api.instance import Instance  # noqa: E402
from lm_eval.models.huggingface import HFLM  # noqa: E402

from softpick.analysis import evaluation  # noqa: E402
from softpick.corpus import embedded_tokenizer  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "models"))
from tiny_models import tiny_model  # noqa: E402


def test_generate_until_texts_equal_hflm(monkeypatch):
    tokenizer = embedded_tokenizer()
    model = tiny_model(vocab_size=len(tokenizer), eos_token_id=None)
    requests = [Instance(request_type="generate_until", doc={}, idx=i,
                         arguments=(context, {"until": ["e"], "max_gen_toks": 12, "do_sample": False}))
                for i, context in enumerate(["Once upon a time", "The river ran"])]
    expected = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=2, device="cpu").generate_until(requests)
    calls = []
    real = evaluation.fast_generate
    monkeypatch.setattr(evaluation, "fast_generate", lambda *a, **kw: calls.append(1) or real(*a, **kw))
    fast = evaluation._fast_hflm(HFLM)(pretrained=model, tokenizer=tokenizer, batch_size=2, device="cpu")
    with torch.no_grad():
        assert fast.generate_until(requests) == expected
    assert calls and any(expected), expected
