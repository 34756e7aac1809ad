"""Passkey retrieval (LongLoRA / landmark-attention style), greedy decoding with the KV cache
(:func:`~softpick.models.fast_generate.fast_generate` for softpick models, else ``generate``).

The prompt hides "The pass key is N. Remember it. N is the pass key." at a random depth inside
repeated filler ("The grass is green. The sky is blue. ...") and ends with "What is the pass key?
The pass key is". A trial succeeds when the digits of N appear in the generated continuation.
Prompt lengths are in tokens of the model's tokenizer (the filler is repeated to reach them).
"""

from __future__ import annotations

import random

import torch
from torch import nn

from softpick.errors import BadValue
from softpick.models.fast_generate import fast_generate, supports_fast_generate

TASK = (
    "There is an important info hidden inside a lot of irrelevant text. Find it and memorize it. "
    "I will quiz you about the important information there."
)
FILLER = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."
QUESTION = "What is the pass key? The pass key is"


def passkey_prompt(tokenizer, length: int, passkey: int, depth: float) -> str:
    """A prompt of about ``length`` tokens with the passkey line at relative ``depth`` in [0, 1]."""
    needle = f"The pass key is {passkey}. Remember it. {passkey} is the pass key."
    fixed = len(tokenizer(f"{TASK} {needle} {QUESTION}", add_special_tokens=False)["input_ids"])
    per_filler = len(tokenizer(" " + FILLER, add_special_tokens=False)["input_ids"])
    repeats = max(0, (length - fixed) // per_filler)
    before = round(repeats * depth)
    fill = lambda n: " ".join([FILLER] * n)  # noqa: E731
    parts = [TASK, fill(before), needle, fill(repeats - before), QUESTION]
    return " ".join(p for p in parts if p)


@torch.no_grad()
def compute_passkey(
    model: nn.Module,
    tokenizer,
    lengths: list[int],
    *,
    trials: int = 5,
    seed: int = 0,
    max_new_tokens: int = 12,
    progress: bool = False,
) -> dict:
    """Passkey accuracy per prompt length.

    Args:
        lengths: prompt lengths in tokens (each >= 32).
        trials: prompts per length, each with a new passkey (1..50000) and depth (uniform in [0, 1]).

    Returns:
        ``{"trials": n, "accuracy": {length: fraction}, "samples": [{length, depth, passkey, output, correct}]}``.
    """
    if trials < 1:
        raise BadValue(f"passkey trials must be >= 1, got {trials}.")
    for length in lengths:
        if length < 32:
            raise BadValue(f"passkey lengths must be >= 32 tokens, got {length}.")
    rng = random.Random(seed)
    device = next(model.parameters()).device
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    accuracy, samples = {}, []
    jobs = [(length, t) for length in lengths for t in range(trials)]
    if progress:
        from tqdm.auto import tqdm

        jobs = tqdm(jobs, desc="passkey", unit="prompt")
    correct_by_length: dict[int, int] = {}
    for length, _ in jobs:
        passkey, depth = rng.randint(1, 50000), rng.random()
        ids = tokenizer(passkey_prompt(tokenizer, length, passkey, depth), return_tensors="pt")["input_ids"].to(device)
        if supports_fast_generate(model):  # a preallocated cache; CUDA graphs on a GPU
            out = fast_generate(model, ids, max_new_tokens=max_new_tokens, pad_token_id=pad_id)
        else:
            out = model.generate(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=max_new_tokens,
                do_sample=False,
                use_cache=True,
                pad_token_id=pad_id,
            )
        text = tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True)
        correct = str(passkey) in text
        correct_by_length[length] = correct_by_length.get(length, 0) + int(correct)
        samples.append(
            {"length": length, "prompt_tokens": ids.shape[1], "depth": depth, "passkey": passkey, "output": text,
             "correct": correct}
        )
    for length in lengths:
        accuracy[length] = correct_by_length.get(length, 0) / trials
    return {"trials": trials, "accuracy": accuracy, "samples": samples}
