"""Probe census of the hostile suite: run each probe in this process (through softpick.cli.main, on a
copy of one tiny finished run) and classify it: clean refusal (exit != 0, one line, nothing changed),
traceback, silent acceptance (exit 0 where a refusal is due), data loss (a file that existed before
changed or vanished), ok. The counts in docs/faults.md come from it.

    python tests/hostile/census.py OUT.json           # this checkout
    PYTHONPATH=/path/to/other/checkout python tests/hostile/census.py OUT.json
"""
import contextlib, hashlib, io, json, logging, os, shutil, sys, tempfile, traceback
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "train"))
from train_utils import make_docs, make_tokenizer, model_config, train_args
import softpick
print("softpick from", softpick.__file__, file=sys.stderr)
from softpick.cli import main as cli

ROOT = Path(tempfile.mkdtemp(prefix="census-"))
A = {"tokenizer": make_tokenizer(ROOT / "tok"), "docs": make_docs(ROOT / "docs.jsonl", 200, seed=0),
     "model": model_config(ROOT / "m.json")}
CK = ["--checkpoint.enable_checkpoint", "--checkpoint.interval", "2"]
def targs(d, *x, steps=4): return train_args(A, d, *x, steps=steps)
FIN = ROOT / "finished"
with contextlib.redirect_stderr(io.StringIO()):
    assert cli(["train", *targs(FIN, *CK)]) == 0

def hashes(root):
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in root.rglob("*") if p.is_file()}

def jmodel(w, **kw):
    d = json.loads(A["model"].read_text()); d.update(kw); p = w / "model.json"; p.write_text(json.dumps(d)); return p

def withmodel(argv, p):
    argv = list(argv); argv[argv.index("--model.config") + 1] = str(p); return argv

def withdata(argv, p):
    argv = list(argv); argv[argv.index("--training.data_files") + 1] = str(p); return argv

def data(w, content):
    p = w / "d.jsonl"; p.write_bytes(content); return p

def nan_weights(m):
    from safetensors.torch import load_file, save_file
    t = load_file(str(m / "model.safetensors")); t["model.layers.1.self_attn.o_proj.weight"][0, 0] = float("nan")
    save_file(t, str(m / "model.safetensors"), metadata={"format": "pt"})

def rm(p): p.unlink()
def trunc(p, n=1000): p.write_bytes(p.read_bytes()[:n])
def ckpt(w, s=4): return w / "run" / "checkpoint" / f"step-{s}"
def distcp(w, s=4): return next(ckpt(w, s).glob("*.distcp"))

R, OK = "refuse", "ok"
# name, expect, setup(w) -> argv
P = [
 # convert: data loss class
 ("convert dcp-to-hf --out RUN", R, lambda w: ["convert", "dcp-to-hf", "--path", w/"run", "--out", w/"run"]),
 ("convert dcp-to-hf --out RUN --overwrite", R, lambda w: ["convert", "dcp-to-hf", "--path", w/"run", "--out", w/"run", "--overwrite"]),
 ("convert dcp-to-hf --out RUN/checkpoint", R, lambda w: ["convert", "dcp-to-hf", "--path", w/"run", "--out", w/"run"/"checkpoint"]),
 ("convert dcp-to-hf --out parent of RUN", R, lambda w: ["convert", "dcp-to-hf", "--path", w/"run", "--out", w]),
 ("convert dcp-to-hf --out existing folder", R, lambda w: ((w/"mine").mkdir(), (w/"mine"/"a.txt").write_text("x"), ["convert", "dcp-to-hf", "--path", w/"run", "--out", w/"mine"])[-1]),
 ("convert dcp-to-hf --out a file", R, lambda w: ["convert", "dcp-to-hf", "--path", w/"run", "--out", w/"run"/"metrics.jsonl"]),
 ("convert dcp-to-hf --out RUN/hf (no --overwrite)", R, lambda w: ["convert", "dcp-to-hf", "--path", w/"run", "--out", w/"run"/"hf"]),
 ("convert hf-to-dcp onto a full checkpoint", R, lambda w: ["convert", "hf-to-dcp", "--model", w/"run"/"hf", "--checkpoint", ckpt(w)]),
 ("convert hf-to-dcp onto the dump folder", R, lambda w: ["convert", "hf-to-dcp", "--model", w/"run"/"hf", "--checkpoint", w/"run"]),
 ("convert hf-to-dcp onto the checkpoint folder", R, lambda w: ["convert", "hf-to-dcp", "--model", w/"run"/"hf", "--checkpoint", w/"run"/"checkpoint"]),
 ("convert hf-to-dcp onto a checkpoint --overwrite", R, lambda w: ["convert", "hf-to-dcp", "--model", w/"run"/"hf", "--checkpoint", ckpt(w), "--overwrite"]),
 ("convert fla-to-hf OUT=RUN", R, lambda w: ["convert", "fla-to-hf", w/"run"/"hf", w/"run"]),
 # convert: garbage
 ("convert dcp-to-hf --path a file", R, lambda w: ["convert", "dcp-to-hf", "--path", w/"run"/"metrics.jsonl", "--out", w/"o"]),
 ("convert dcp-to-hf --path missing", R, lambda w: ["convert", "dcp-to-hf", "--path", w/"nope", "--out", w/"o"]),
 ("convert dcp-to-hf garbage .metadata, no manifest", R, lambda w: (rm(ckpt(w)/"manifest.json"), (ckpt(w)/".metadata").write_bytes(b"junk"*9), ["convert", "dcp-to-hf", "--path", w/"run", "--out", w/"o"])[-1]),
 ("convert dcp-to-hf truncated .distcp, no manifest", R, lambda w: (rm(ckpt(w)/"manifest.json"), trunc(distcp(w)), ["convert", "dcp-to-hf", "--path", w/"run", "--out", w/"o"])[-1]),
 ("convert dcp-to-hf truncated .distcp", R, lambda w: (trunc(distcp(w)), ["convert", "dcp-to-hf", "--path", w/"run", "--out", w/"o"])[-1]),
 ("convert dcp-to-hf garbage manifest", R, lambda w: ((ckpt(w)/"manifest.json").write_text("{"), ["convert", "dcp-to-hf", "--path", w/"run", "--out", w/"o"])[-1]),
 ("convert dcp-to-hf --config garbage", R, lambda w: ((w/"c.json").write_bytes(b"\x00\xff"), ["convert", "dcp-to-hf", "--path", w/"run", "--out", w/"o", "--config", w/"c.json"])[-1]),
 ("convert dcp-to-hf --config another model", R, lambda w: ["convert", "dcp-to-hf", "--path", w/"run", "--out", w/"o", "--config", jmodel(w, num_hidden_layers=3)]),
 ("convert dcp-to-hf --tokenizer missing", R, lambda w: ["convert", "dcp-to-hf", "--path", w/"run", "--out", w/"o", "--tokenizer", w/"nope"]),
 ("convert dcp-to-hf --step 99", R, lambda w: ["convert", "dcp-to-hf", "--path", w/"run", "--out", w/"o", "--step", "99"]),
 ("convert dcp-to-hf --step 1e9", R, lambda w: ["convert", "dcp-to-hf", "--path", w/"run", "--step", "1e9"]),
 ("convert dcp-to-hf a file named step-6", R, lambda w: ((w/"run"/"checkpoint"/"step-6").write_text("x"), ["convert", "dcp-to-hf", "--path", w/"run", "--out", w/"o"])[-1]),
 ("convert hf-to-dcp --model garbage config", R, lambda w: (shutil.copytree(w/"run"/"hf", w/"m"), (w/"m"/"config.json").write_text("{x"), ["convert", "hf-to-dcp", "--model", w/"m", "--checkpoint", w/"c"/"step-0"])[-1]),
 ("convert hf-to-dcp --model garbage weights", R, lambda w: (shutil.copytree(w/"run"/"hf", w/"m"), (w/"m"/"model.safetensors").write_bytes(os.urandom(3000)), ["convert", "hf-to-dcp", "--model", w/"m", "--checkpoint", w/"c"/"step-0"])[-1]),
 ("convert hf-to-dcp --model truncated weights", R, lambda w: (shutil.copytree(w/"run"/"hf", w/"m"), trunc(w/"m"/"model.safetensors", 5000), ["convert", "hf-to-dcp", "--model", w/"m", "--checkpoint", w/"c"/"step-0"])[-1]),
 ("convert fla-to-hf garbage", R, lambda w: ((w/"f").mkdir(), (w/"f"/"config.json").write_bytes(b"\x00junk"), ["convert", "fla-to-hf", w/"f", w/"o"])[-1]),
 ("convert fla-to-hf missing SRC", R, lambda w: ["convert", "fla-to-hf", w/"nope", w/"o"]),
 ("convert fla-to-hf on an HF folder", R, lambda w: ["convert", "fla-to-hf", w/"run"/"hf", w/"o"]),
 ("convert no subcommand", R, lambda w: ["convert"]),
 # train: data loss class
 ("train checkpointing off + load_step on a finished run", R, lambda w: ["train", *targs(w/"run", "--checkpoint.load_step", "4")]),
 ("train checkpointing off on a run with checkpoints", R, lambda w: ["train", *targs(w/"run")]),
 ("train on a finished run's hf/ without checkpoints", R, lambda w: (shutil.rmtree(w/"run"/"checkpoint"), ["train", *targs(w/"run", *CK)])[-1]),
 ("train create_seed_checkpoint on a run", R, lambda w: ["train", *targs(w/"run", "--checkpoint.enable_checkpoint", "--checkpoint.create_seed_checkpoint")]),
 # train: silently accepted class
 ("train --optimizer.lr inf", R, lambda w: ["train", *targs(w/"new", "--optimizer.lr", "inf")]),
 ("train --optimizer.lr nan", R, lambda w: ["train", *targs(w/"new", "--optimizer.lr", "nan")]),
 ("train --optimizer.eps nan", R, lambda w: ["train", *targs(w/"new", "--optimizer.eps", "nan")]),
 ("train --optimizer.beta1 1.5", R, lambda w: ["train", *targs(w/"new", "--optimizer.beta1", "1.5")]),
 ("train --optimizer.weight_decay -1", R, lambda w: ["train", *targs(w/"new", "--optimizer.weight_decay", "-1")]),
 ("train --training.max_norm nan", R, lambda w: ["train", *targs(w/"new", "--training.max_norm", "nan")]),
 ("train --training.seq_len 1", R, lambda w: ["train", *targs(w/"new", "--training.seq_len", "1")]),
 ("train --job.dump_folder ''", R, lambda w: (os.chdir(w), ["train", *targs(w/"new", "--job.dump_folder", "")])[-1]),
 ("train model json 'atn_type'", R, lambda w: ["train", *withmodel(targs(w/"new"), jmodel(w, atn_type="softmax"))]),
 ("train model json 'num_layers'", R, lambda w: ["train", *withmodel(targs(w/"new"), jmodel(w, num_layers=3))]),
 ("train max_position_embeddings < seq_len", R, lambda w: ["train", *withmodel(targs(w/"new"), jmodel(w, max_position_embeddings=16))]),
 ("train model json vocab_size 'abc'", R, lambda w: ["train", *withmodel(targs(w/"new"), jmodel(w, vocab_size="abc"))]),
 ("train model json hidden_size 32.5", R, lambda w: ["train", *withmodel(targs(w/"new"), jmodel(w, hidden_size=32.5))]),
 ("train model json attn_type bogus", R, lambda w: ["train", *withmodel(targs(w/"new"), jmodel(w, attn_type="bogus"))]),
 ("train a file named step-6", R, lambda w: ((w/"run"/"checkpoint"/"step-6").write_text("x"), ["train", *targs(w/"run", *CK, steps=8)])[-1]),
 ("train --checkpoint.load_step -2", R, lambda w: ["train", *targs(w/"run", *CK, "--checkpoint.load_step", "-2")]),
 ("train --checkpoint.exclude_from_loading bogus", R, lambda w: ["train", *targs(w/"run", *CK, "--checkpoint.exclude_from_loading", "bogus", steps=6)]),
 ("train --checkpoint.folder ''", R, lambda w: ["train", *targs(w/"new", "--checkpoint.enable_checkpoint", "--checkpoint.folder", "")]),
 ("train --training.seed -1", OK, lambda w: ["train", *targs(w/"new", "--training.seed", "-1", steps=1)]),
 # train: data files
 ("train data: empty file", R, lambda w: ["train", *withdata(targs(w/"new"), data(w, b""))]),
 ("train data: blank lines", R, lambda w: ["train", *withdata(targs(w/"new"), data(w, b"\n \n\n"))]),
 ("train data: whitespace-only text", R, lambda w: ["train", *withdata(targs(w/"new"), data(w, b'{"text": "  "}\n' * 3))]),
 ("train data: empty text", R, lambda w: ["train", *withdata(targs(w/"new"), data(w, b'{"text": ""}\n' * 3))]),
 ("train data: binary", R, lambda w: ["train", *withdata(targs(w/"new"), data(w, bytes(range(256)) * 8))]),
 ("train data: Latin-1", R, lambda w: ["train", *withdata(targs(w/"new"), data(w, '{"text": "caf\u00e9"}\n'.encode("latin-1")))]),
 ("train data: malformed json line", R, lambda w: ["train", *withdata(targs(w/"new"), data(w, b'{"text": "w1 w2"}\n{"text": \n'))]),
 ("train data: no text field", R, lambda w: ["train", *withdata(targs(w/"new"), data(w, b'{"body": "w1"}\n'))]),
 ("train data: text not a string", R, lambda w: ["train", *withdata(targs(w/"new"), data(w, b'{"text": {"a": 1}}\n'))]),
 ("train data: missing file", R, lambda w: ["train", *withdata(targs(w/"new"), w/"nope.jsonl")]),
 ("train data: glob matching nothing", R, lambda w: ["train", *withdata(targs(w/"new"), w/"*.nothing")]),
 ("train --training.dataset missing folder", R, lambda w: ["train", *targs(w/"new"), "--training.dataset", str(w/"nofolder"), "--training.data_files", "none"]),
 ("train --training.dataset_split nosuch", R, lambda w: ["train", *targs(w/"new", "--training.dataset_split", "nosuch")]),
 ("train --model.tokenizer_path a file", R, lambda w: ["train", *targs(w/"new"), "--model.tokenizer_path", str(A["docs"])]),
 ("train dataset smaller than the shards (workers)", R, lambda w: ["train", *withdata(targs(w/"new", "--training.num_workers", "2"), data(w, b'{"text": "w1 w2 w3"}\n'))]),
 # train: resume faults
 ("train resume: loader layout differs (2 workers)", R, lambda w: ["train", *targs(w/"run", *CK, "--training.num_workers", "2", steps=6)]),
 ("train resume: truncated .distcp, no manifest", R, lambda w: (rm(ckpt(w)/"manifest.json"), trunc(distcp(w), distcp(w).stat().st_size // 2), ["train", *targs(w/"run", *CK, steps=6)])[-1]),
 ("train resume: garbage .metadata, no manifest", R, lambda w: (rm(ckpt(w)/"manifest.json"), (ckpt(w)/".metadata").write_bytes(b"junk" * 9), ["train", *targs(w/"run", *CK, steps=6)])[-1]),
 ("train resume: garbage model_config.json", R, lambda w: ((ckpt(w)/"model_config.json").write_text("{"), ["train", *targs(w/"run", *CK, steps=6)])[-1]),
 # generate / analyze
 ("generate --temperature nan", R, lambda w: ["generate", w/"run"/"hf", "--prompt", "w1", "--temperature", "nan", "--device", "cpu"]),
 ("generate --device cuda (CPU machine)", R, lambda w: ["generate", w/"run"/"hf", "--prompt", "w1", "--device", "cuda"]),
 ("generate --device potato", R, lambda w: ["generate", w/"run"/"hf", "--prompt", "w1", "--device", "potato"]),
 ("generate --max-new-tokens 10^12", R, lambda w: ["generate", w/"run"/"hf", "--prompt", "w1", "--max-new-tokens", "1000000000000", "--device", "cpu"]),
 ("generate NaN weights", R, lambda w: (nan_weights(w/"run"/"hf"), ["generate", w/"run"/"hf", "--prompt", "w1", "--device", "cpu"])[-1]),
 ("analyze NaN weights", R, lambda w: (nan_weights(w/"run"/"hf"), ["analyze", w/"run"/"hf", "--out", w/"rep", "--device", "cpu", "--num-samples", "2", "--seq-len", "8", "--quant-bits", "none"])[-1]),
 ("analyze --device cuda (CPU machine)", R, lambda w: ["analyze", w/"run"/"hf", "--out", w/"rep", "--device", "cuda"]),
 ("analyze --data a data-build folder without text", R, lambda w: ((w/"b").mkdir(), (w/"b"/"softpick_tokens.json").write_text("{}"), (w/"b"/"sources.jsonl").write_text('{"text": "/x/a.txt"}\n'), ["analyze", w/"run"/"hf", "--out", w/"rep", "--device", "cpu", "--data", w/"b", "--num-samples", "1", "--seq-len", "8", "--quant-bits", "none"])[-1]),
 ("analyze --data missing", R, lambda w: ["analyze", w/"run"/"hf", "--out", w/"rep", "--device", "cpu", "--data", w/"nope.jsonl"]),
 # data build
 ("data build --out onto the input", R, lambda w: ((w/"in").mkdir(), (w/"in"/"a.txt").write_text("Prose. " * 100), ["data", "build", w/"in", "--out", w/"in", "--workers", "1"])[-1]),
 ("data build --out onto a run", R, lambda w: ((w/"in").mkdir(), (w/"in"/"a.txt").write_text("Prose. " * 100), ["data", "build", w/"in", "--out", w/"run", "--workers", "1"])[-1]),
 ("data build --out a file", R, lambda w: ((w/"in").mkdir(), (w/"in"/"a.txt").write_text("Prose. " * 100), ["data", "build", w/"in", "--out", w/"run"/"metrics.jsonl", "--workers", "1"])[-1]),
 ("data build missing input", R, lambda w: ["data", "build", w/"nope", "--out", w/"o", "--workers", "1"]),
 ("demo --out a training run", R, lambda w: ["demo", "--out", w/"run", "--steps", "1"]),
 ("compare with a missing report", R, lambda w: ["compare", w/"nope1", w/"nope2", "--out", w/"cmp"]),
 ("train run.lock is a folder", R, lambda w: (rm(w/"run"/"run.lock"), (w/"run"/"run.lock").mkdir(), ["train", *targs(w/"run", *CK, steps=6)])[-1]),
 ("train resume with garbage metrics.jsonl (appended to)", OK, lambda w: ((w/"run"/"metrics.jsonl").write_bytes(b"\x00{garbage"), ["train", *targs(w/"run", *CK, steps=5)])[-1]),
 ("generate garbage generation_config.json (optional: every option is passed)", OK, lambda w: ((w/"run"/"hf"/"generation_config.json").write_text("{"), ["generate", w/"run"/"hf", "--prompt", "w1", "--device", "cpu"])[-1]),
 ("generate garbage tokenizer.json", R, lambda w: ((w/"run"/"hf"/"tokenizer.json").write_text("{"), ["generate", w/"run"/"hf", "--prompt", "w1", "--device", "cpu"])[-1]),
 ("analyze --out a file", R, lambda w: ["analyze", w/"run"/"hf", "--out", w/"run"/"metrics.jsonl", "--device", "cpu", "--num-samples", "1", "--seq-len", "8", "--quant-bits", "none"]),
 ("experiment missing config", R, lambda w: ["experiment", w/"nope.toml"]),
 ("data info on garbage", R, lambda w: ((w/"g").mkdir(), (w/"g"/"softpick_tokens.json").write_text("{"), ["data", "info", w/"g"])[-1]),
]

def run_probe(name, expect, setup):
    w = Path(tempfile.mkdtemp(dir=ROOT)); shutil.copytree(FIN, w / "run"); cwd = os.getcwd()
    err, code, tb = io.StringIO(), None, None
    try:
        argv = [str(a) for a in setup(w)]
        before = hashes(w)
        root = logging.getLogger(); handlers = list(root.handlers)
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            try:
                code = cli(argv)
            except SystemExit as e:
                code = e.code if isinstance(e.code, int) else 2
            except BaseException as e:
                tb = "".join(traceback.format_exception_only(type(e), e)).strip().splitlines()[-1]
        root.handlers[:] = handlers
    finally:
        os.chdir(cwd)
    after = hashes(w)
    lost = [k for k, h in before.items() if after.get(k) != h and (expect == R or "checkpoint/" in k)]
    text = err.getvalue()
    lines = [l for l in text.splitlines() if l.startswith(("softpick ", "softpick:"))]
    if "Traceback" in text and tb is None:
        tb = "traceback on stderr"
    if lost:
        kind = "data loss"
    elif tb is not None:
        kind = "traceback"
    elif code == 0 and expect == R:
        kind = "silent acceptance"
    elif code == 0:
        kind = "ok"
    elif len(lines) == 1:
        kind = "clean refusal"
    else:
        kind = f"refusal, {len(lines)} lines"
    return {"probe": name, "kind": kind, "code": code, "line": (lines[-1] if lines else tb or "")[:220], "lost": lost[:4]}

results = []
for name, expect, setup in P:
    if len(sys.argv) > 2 and sys.argv[2] not in name:
        continue
    r = run_probe(name, expect, setup); results.append(r)
    print(f"{r['kind']:18s} {r['code']!s:>4} {name}: {r['line'][:150]} {r['lost'] or ''}", flush=True)
from collections import Counter
print(Counter(r["kind"] for r in results), len(results))
json.dump(results, open(sys.argv[1], "w"), indent=1)
