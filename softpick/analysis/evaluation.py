"""Downstream evaluation with lm-evaluation-harness, offline, on an already loaded model.

lm-eval imports transformers but not softpick, so ``lm_eval --model hf --model_args pretrained=DIR``
cannot build a softpick model by itself. Two ways around it:

- ``softpick analyze DIR --tasks ...`` (this module): softpick is imported, the model is loaded, and
  lm-eval gets the model object through ``HFLM(pretrained=model)`` and ``simple_evaluate``;
- ``python -m softpick.analysis.lm_eval_cli --model hf --model_args pretrained=DIR ...``: lm-eval's
  own command line after ``import softpick`` (see that module).

Tasks must be available offline: lm-eval's built-in task names work when their data sets are in the
local ``datasets`` cache; ``tasks_dir`` adds a folder of task YAML files (lm-eval's ``include_path``);
and :func:`write_local_tasks` builds two small tasks from the analysed text itself:

- ``softpick_local_choice``: multiple choice; the context is the start of a document, the right
  answer its true continuation, the three wrong answers the same stretch of other documents
  (metrics acc, acc_norm; chance = 25%);
- ``softpick_local_ppl``: rolling log-likelihood of whole documents (word_perplexity,
  byte_perplexity, bits_per_byte), as lm-eval's wikitext task.
"""

from __future__ import annotations

import importlib.util
import json
import random
from pathlib import Path

import torch
from torch import nn

from softpick.models.fast_generate import fast_generate, supports_fast_generate

LOCAL_TASKS = ("softpick_local_choice", "softpick_local_ppl")

CHOICE_YAML = """task: softpick_local_choice
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{context}}}}"
doc_to_choice: choices
doc_to_target: label
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
  - metric: acc_norm
    aggregation: mean
    higher_is_better: true
metadata:
  version: 1.0
"""

PPL_YAML = """task: softpick_local_ppl
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: loglikelihood_rolling
doc_to_text: ""
doc_to_target: "{{{{text}}}}"
metric_list:
  - metric: word_perplexity
    aggregation: weighted_perplexity
    higher_is_better: false
  - metric: byte_perplexity
    aggregation: weighted_perplexity
    higher_is_better: false
  - metric: bits_per_byte
    aggregation: bits_per_byte
    higher_is_better: false
metadata:
  version: 1.0
"""


def require_lm_eval() -> None:
    """Raise ImportError naming the package when lm-evaluation-harness is missing."""
    if importlib.util.find_spec("lm_eval") is None:
        raise ImportError(
            "downstream tasks need lm-evaluation-harness: pip install 'softpick[eval]' (package 'lm-eval')."
        )


def write_local_tasks(
    documents: list[str], out_dir: str | Path, *, num_docs: int = 100, context_words: int = 24,
    answer_words: int = 8, seed: int = 0,
) -> Path:
    """Write the two local lm-eval tasks (YAML + JSON lines) built from ``documents`` into ``out_dir``.

    Documents shorter than ``context_words + answer_words`` words are skipped; at least four must
    remain. Returns ``out_dir`` (pass it as ``tasks_dir``).
    """
    words = [d.split() for d in documents]
    usable = [w for w in words if len(w) >= context_words + answer_words][:num_docs]
    if len(usable) < 4:
        raise ValueError(
            f"the local lm-eval tasks need 4 documents of >= {context_words + answer_words} words, found {len(usable)}."
        )
    rng = random.Random(seed)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    answer = lambda w: " " + " ".join(w[context_words : context_words + answer_words])  # noqa: E731
    with open(out / "softpick_local_choice.jsonl", "w", encoding="utf-8") as f:
        for i, doc in enumerate(usable):
            others = rng.sample([j for j in range(len(usable)) if answer(usable[j]) != answer(doc)], 3)
            choices = [answer(doc)] + [answer(usable[j]) for j in others]
            rng.shuffle(choices)
            record = {"context": " ".join(doc[:context_words]), "choices": choices, "label": choices.index(answer(doc))}
            f.write(json.dumps(record) + "\n")
    with open(out / "softpick_local_ppl.jsonl", "w", encoding="utf-8") as f:
        for doc in documents[:num_docs]:
            f.write(json.dumps({"text": doc}) + "\n")
    (out / "softpick_local_choice.yaml").write_text(CHOICE_YAML.format(data=(out / "softpick_local_choice.jsonl").resolve()))
    (out / "softpick_local_ppl.yaml").write_text(PPL_YAML.format(data=(out / "softpick_local_ppl.jsonl").resolve()))
    return out


FAST_GENERATE_OPTIONS = ("temperature", "do_sample", "top_k", "top_p")
"""generate_until options :func:`~softpick.models.fast_generate.fast_generate` takes; others go to ``generate``."""


def _fast_hflm(hflm: type) -> type:
    """lm-eval's HFLM class with generate_until decoding softpick models through fast_generate.

    The tokens are those of ``generate`` (greedy, or seeded sampling); stop strings are checked on the
    decoded text at each host read of the loop and lm-eval cuts the text at them as before.
    """

    class FastHFLM(hflm):
        def _model_generate(self, context, max_length: int, stop: list[str], **generation_kwargs):
            mask = generation_kwargs.pop("attention_mask", None)
            if not supports_fast_generate(self.model) or set(generation_kwargs) - set(FAST_GENERATE_OPTIONS):
                if mask is not None:
                    generation_kwargs["attention_mask"] = mask
                return super()._model_generate(context, max_length, stop, **generation_kwargs)
            temperature = generation_kwargs.get("temperature", 0.0)
            do_sample = bool(generation_kwargs.get("do_sample")) and temperature > 0  # lm-eval: temperature 0 = greedy
            tokenizer = self.tokenizer

            def every_row_stopped(new: torch.Tensor) -> bool:
                texts = tokenizer.batch_decode(new, skip_special_tokens=True)
                return bool(stop) and all(any(s in text for s in stop) for text in texts)

            return fast_generate(
                self.model, context, mask, max_new_tokens=max(1, max_length - context.shape[1]), do_sample=do_sample,
                temperature=temperature if do_sample else None, top_k=generation_kwargs.get("top_k"),
                top_p=generation_kwargs.get("top_p"), pad_token_id=tokenizer.pad_token_id,
                should_stop=every_row_stopped,
            )

    return FastHFLM


def compute_lm_eval(
    model: nn.Module,
    tokenizer,
    tasks: list[str],
    *,
    tasks_dir: str | Path | list[str | Path] | None = None,
    batch_size: int = 8,
    limit: int | None = None,
    num_fewshot: int | None = None,
) -> dict:
    """Run lm-eval's ``simple_evaluate`` on a loaded model.

    Args:
        tasks: lm-eval task names (built-in ones need their data in the local datasets cache).
        tasks_dir: folder(s) of extra task YAML files (lm-eval ``include_path``).
        limit: at most this many documents per task.

    Returns:
        ``{task: {metric: value}}`` with lm-eval's metric names (e.g. ``"acc,none"``), plus
        ``"lm_eval_version"``.
    """
    require_lm_eval()
    import lm_eval
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    include = None
    if tasks_dir is not None:
        include = [str(p) for p in (tasks_dir if isinstance(tasks_dir, list) else [tasks_dir])]
        for path in include:
            if not Path(path).is_dir():
                raise FileNotFoundError(f"--tasks-dir {path} is not a folder.")
    manager = TaskManager(include_path=include)
    unknown = [t for t in tasks if t not in manager.all_tasks]
    if unknown:
        raise ValueError(f"unknown lm-eval task(s) {unknown}; add their YAML folder with --tasks-dir.")
    device = next(model.parameters()).device
    lm = _fast_hflm(HFLM)(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, device=str(device))
    out = lm_eval.simple_evaluate(
        model=lm, tasks=list(tasks), task_manager=manager, limit=limit, num_fewshot=num_fewshot,
        log_samples=False, bootstrap_iters=0,
    )
    results = {
        task: {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and k != "alias"}
        for task, metrics in out["results"].items()
    }
    return {"lm_eval_version": lm_eval.__version__, "results": results}


LOCAL_BUILDERS = ("json", "csv", "parquet", "text", "arrow", "pandas", "webdataset", "imagefolder", "audiofolder")
"""``dataset_path`` values of lm-eval tasks that read local files (``dataset_kwargs: data_files``), not the hub."""


def _task_yaml(path: Path, depth: int = 0) -> dict:
    """A task YAML file with its ``include`` chain merged (the file's own keys win); unknown tags
    (``!function``) are read as None. Empty dict when unreadable."""
    import yaml

    class Loader(yaml.SafeLoader):
        pass

    Loader.add_multi_constructor("!", lambda loader, suffix, node: None)
    try:
        config = yaml.load(path.read_text(encoding="utf-8"), Loader=Loader) or {}
    except (OSError, yaml.YAMLError):
        return {}
    if not isinstance(config, dict):
        return {}
    include = config.get("include")
    if isinstance(include, str) and depth < 8:
        base = _task_yaml(path.parent / include, depth + 1)
        config = {**base, **{k: v for k, v in config.items() if k != "include"}}
    return config


def task_dataset_paths(tasks: list[str], tasks_dir: list[str] | None = None) -> dict[str, str | None]:
    """{task: its ``dataset_path``} for each task, tags and groups expanded to their tasks (a task without
    one maps to None). A task found as ``NAME.yaml`` (tasks_dir first, then lm-eval's own tasks) is read
    directly, which takes a second; the others go through lm-eval's TaskManager, which indexes every
    task YAML (about 10 s)."""
    import lm_eval

    folders = [Path(d) for d in tasks_dir or []] + [Path(lm_eval.__file__).parent / "tasks"]
    files: dict[str, Path] = {}
    for folder in reversed(folders):  # tasks_dir wins
        files.update({p.stem: p for p in folder.rglob("*.yaml")})
    found: dict[str, str | None] = {}
    slow = []
    for name in tasks:
        config = _task_yaml(files[name]) if name in files else {}
        if config.get("task") == name and isinstance(config.get("dataset_path"), str):
            found[name] = config["dataset_path"]
        else:
            slow.append(name)
    if slow:
        from lm_eval.tasks import TaskManager

        index = TaskManager(include_path=tasks_dir or None).task_index
        todo, seen = list(slow), set()
        while todo:
            name = todo.pop()
            entry = index.get(name)
            if entry is None or name in seen:
                continue
            seen.add(name)
            if entry.cfg is None:  # a tag: its tasks
                todo += sorted(getattr(entry, "tags", None) or ())
            elif isinstance(entry.cfg.get("task"), list):  # a group: its tasks
                todo += [t for t in entry.cfg["task"] if isinstance(t, str)]
            else:
                path = entry.cfg.get("dataset_path")
                found[name] = path if isinstance(path, str) else None
    return found


def uncached_hub_datasets(tasks: list[str], tasks_dir: list[str] | None = None) -> dict[str, str]:
    """{task: hub dataset} for the tasks (tags and groups expanded) whose data set comes from the hub and
    is in neither the datasets cache nor the hub cache: what cannot run offline."""
    import datasets
    from huggingface_hub import constants

    missing: dict[str, str] = {}
    for name, path in task_dataset_paths(tasks, tasks_dir).items():
        if path is None or path in LOCAL_BUILDERS or Path(path).expanduser().exists():
            continue
        cached = [Path(datasets.config.HF_DATASETS_CACHE) / path.replace("/", "___"),
                  Path(constants.HF_HUB_CACHE) / f"datasets--{path.replace('/', '--')}"]
        if not any(p.is_dir() for p in cached):
            missing[name] = path
    return missing
