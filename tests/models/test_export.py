"""Portable exports: a softmax model is a Llama checkpoint, other variants ship self-contained remote code.

Loading is checked in a fresh interpreter where ``import softpick`` fails (a ``sys.meta_path`` blocker: the
package is installed in the test environment, so merely not importing it would prove nothing), with stdin
closed, so a ``[y/N]`` trust prompt would show in the output. lm-eval's ``HFLM`` loads both folders by path.
"""

import json
import subprocess
import sys

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from softpick.corpus import embedded_tokenizer
from softpick.models import SoftpickForCausalLM
from softpick.models.export import save_portable

from tiny_models import tiny_model

LOADER = r"""
import importlib.abc, json, sys

class BlockSoftpick(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "softpick" or name.startswith("softpick."):
            raise ImportError(f"softpick is blocked in this test ({name})")

sys.meta_path.insert(0, BlockSoftpick())
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM
from lm_eval.api.instance import Instance
from lm_eval.models.huggingface import HFLM

out = {}
for name, folder in json.loads(sys.argv[1]).items():
    remote = name != "softmax"
    if remote:
        model = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True).eval()
    else:
        model = LlamaForCausalLM.from_pretrained(folder).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=remote or None)
    ids = torch.tensor([tokenizer("the cat sat on the mat")["input_ids"]])
    with torch.no_grad():
        diff = (model(ids).logits - torch.load(folder + "/logits.pt")).abs().max().item()
    lm = HFLM(pretrained=folder, trust_remote_code=remote, batch_size=1, device="cpu")
    request = Instance(request_type="loglikelihood", doc={}, arguments=("the cat sat", " on the mat"), idx=0)
    (loglik, _), = lm.loglikelihood([request], disable_tqdm=True)
    out[name] = {"class": type(model).__name__, "diff": diff, "loglik": loglik, "ids": ids.tolist()}
print("RESULT " + json.dumps(out))
"""


@pytest.mark.slow
def test_exports_load_without_softpick_and_in_lm_eval(tmp_path):
    tokenizer = embedded_tokenizer()
    variants = {"softmax": dict(attn_type="softmax"), "softpick": dict(attn_type="softpick"),
                "gated_ssmax_sink": dict(attn_type="sink", ssmax=True, output_gate="headwise")}
    folders, expected_ids = {}, tokenizer("the cat sat on the mat")["input_ids"]
    for name, fields in variants.items():
        model = tiny_model(vocab_size=len(tokenizer), **fields)
        folder = save_portable(model, tmp_path / name, tokenizer=tokenizer)
        with torch.no_grad():
            torch.save(model(torch.tensor([expected_ids])).logits, folder / "logits.pt")
        folders[name] = str(folder)
    config = json.loads((tmp_path / "softmax" / "config.json").read_text())
    assert config["model_type"] == "llama" and "auto_map" not in config
    assert not list((tmp_path / "softmax").glob("*.py"))
    assert json.loads((tmp_path / "softpick" / "config.json").read_text())["model_type"] == "softpick_transformer"

    result = subprocess.run([sys.executable, "-c", LOADER, json.dumps(folders)], capture_output=True, text=True,
                            timeout=300, stdin=subprocess.DEVNULL)
    lines = [line for line in result.stdout.splitlines() if line.startswith("RESULT ")]
    assert result.returncode == 0 and lines, result.stderr[-3000:]
    assert "[y/N]" not in result.stdout + result.stderr
    loaded = json.loads(lines[0][len("RESULT "):])
    assert loaded["softmax"]["class"] == "LlamaForCausalLM"
    for name in variants:
        assert loaded[name]["ids"] == [expected_ids]
        assert loaded[name]["diff"] < 1e-5, (name, loaded[name])
        assert loaded[name]["loglik"] < 0
    assert loaded["softpick"]["class"] == "SoftpickForCausalLM"


def test_export_loads_with_softpick_through_the_registered_classes(tmp_path):
    """With softpick imported the folder uses our classes (fast kernels), and the tokenizer needs no prompt."""
    tokenizer = embedded_tokenizer()
    model = tiny_model(vocab_size=len(tokenizer))
    save_portable(model, tmp_path / "hf", tokenizer=tokenizer, dtype=torch.bfloat16)
    loaded = AutoModelForCausalLM.from_pretrained(str(tmp_path / "hf"))
    assert type(loaded) is SoftpickForCausalLM and loaded.dtype == torch.bfloat16
    assert AutoTokenizer.from_pretrained(str(tmp_path / "hf")).encode("a b") == tokenizer.encode("a b")
    shipped = sorted(p.name for p in (tmp_path / "hf").glob("*.py"))
    assert "modeling_softpick.py" in shipped and "softpick_ops_attention_portable.py" in shipped
    for path in (tmp_path / "hf").glob("*.py"):
        assert "from softpick" not in path.read_text() and "import softpick" not in path.read_text()


def test_shipped_ops_have_the_public_signatures():
    """The shipped naive twins take exactly the public ops' arguments (a new keyword such as kv_len would
    otherwise break an export's static cache only where softpick is not installed)."""
    import inspect

    import softpick.ops
    from softpick.models.export import SUBSTITUTES, substitute_drift
    from softpick.ops.attention import portable

    assert SUBSTITUTES == {"softpick.ops": "softpick.ops.attention.portable"}
    assert substitute_drift() == []
    for name in portable.__all__:
        assert inspect.signature(getattr(portable, name)) == inspect.signature(getattr(softpick.ops, name))


def test_export_refuses_drifted_ops(tmp_path, monkeypatch):
    from softpick.models import export
    from softpick.ops.attention import portable

    def softpick_attention(q, k, v, *, scale=None):  # an old signature, without kv_len
        raise AssertionError("never called")

    monkeypatch.setattr(portable, "softpick_attention", softpick_attention)
    with pytest.raises(RuntimeError, match="softpick_attention.*kv_len"):
        export.write_remote_code(tmp_path)


GENERATE_MODES = {
    "greedy": dict(do_sample=False),
    "static": dict(do_sample=False, cache_implementation="static"),
    "beam": dict(do_sample=False, num_beams=3),
    "beam_static": dict(do_sample=False, num_beams=2, cache_implementation="static"),
    "sample": dict(do_sample=True, top_k=20, temperature=0.9),
    "sample_static": dict(do_sample=True, top_k=20, cache_implementation="static"),
}
"""Every way ``generate`` walks the cache: dynamic and static caches, greedy, beam search and sampling."""

GENERATOR = r"""
import importlib.abc, json, sys

class BlockSoftpick(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "softpick" or name.startswith("softpick."):
            raise ImportError(f"softpick is blocked in this test ({name})")

sys.meta_path.insert(0, BlockSoftpick())
import torch
from transformers import AutoModelForCausalLM

folders, modes = json.loads(sys.argv[1]), json.loads(sys.argv[2])
out = {}
for variant, folder in folders.items():
    model = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True).eval()
    for name, kwargs in modes.items():
        torch.manual_seed(0)
        ids = model.generate(torch.tensor([[1, 5, 9, 14, 3]]), max_new_tokens=6, min_new_tokens=6, pad_token_id=0,
                             **kwargs)
        out[f"{variant} {name}"] = ids.tolist()
out["modules"] = sorted(m for m in sys.modules if m.split(".")[0] == "softpick")
print("RESULT " + json.dumps(out))
"""


@pytest.mark.slow
def test_export_generates_in_every_mode_without_softpick(tmp_path):
    """softpick attention and the sink variant (softmax with a sink logit, SSMax, a gate): every generate
    mode in a process where softpick cannot be imported gives the tokens of the package's own model."""
    variants = {"softpick": dict(attn_type="softpick"),
                "gated_ssmax_sink": dict(attn_type="sink", ssmax=True, output_gate="headwise")}
    folders, expected = {}, {}
    for variant, fields in variants.items():
        model = tiny_model(**fields)
        folders[variant] = str(save_portable(model, tmp_path / variant))
        for name, kwargs in GENERATE_MODES.items():
            torch.manual_seed(0)
            expected[f"{variant} {name}"] = model.generate(
                torch.tensor([[1, 5, 9, 14, 3]]), max_new_tokens=6, min_new_tokens=6, pad_token_id=0, **kwargs
            ).tolist()
    result = subprocess.run([sys.executable, "-c", GENERATOR, json.dumps(folders), json.dumps(GENERATE_MODES)],
                            capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)
    lines = [line for line in result.stdout.splitlines() if line.startswith("RESULT ")]
    assert result.returncode == 0 and lines, result.stderr[-3000:]
    loaded = json.loads(lines[0][len("RESULT "):])
    assert loaded.pop("modules") == []
    assert loaded == expected


def test_export_refuses_a_public_op_the_shipped_twin_lacks(tmp_path, monkeypatch):
    """Shipped code importing a new name from softpick.ops must find it in the naive twin too."""
    from softpick.models import export

    source = "from softpick.ops import softpick_attention, fused_new_op\n"
    monkeypatch.setattr(export.Path, "read_text", lambda self, encoding=None: source)
    with pytest.raises(RuntimeError, match=r"\['fused_new_op'\].*does not define"):
        export.relative_source("softpick.models.modeling_softpick")
