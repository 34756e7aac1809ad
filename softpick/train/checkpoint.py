"""Distributed checkpoints (DCP) under ``{dump_folder}/{folder}/step-N`` and HF exports.

A full checkpoint holds ``model`` and ``optimizer`` (sharded tensors: each rank writes its shards),
and small pickled entries: ``lr_scheduler``, ``train_state`` (step, skipped steps, tokens), and per
rank ``dataloader.rank_k`` and ``rng.rank_k`` (torch, cuda, python, numpy generators). Per-rank
entries get per-rank keys because DCP keeps one copy of each key.

Saves are atomic: DCP writes ``step-N.tmp`` and rank 0 renames it to ``step-N`` once every rank has
written (for ``async_mode`` when the background save is done, checked before the next save and at
close), so a crash mid-save never hides the previous good checkpoint. ``keep_latest_k`` then prunes.
A step folder without optimizer state (``hf-to-dcp`` output, or a weights-only export) loads the
model weights only and training starts at that step.
"""

from __future__ import annotations

import os
import pickle
import random
import re
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)

from softpick.train.config import Checkpoint
from softpick.train.parallel import TORCH_DTYPES

STEP_DIR = re.compile(r"^step-(\d+)$")


class ModelState:
    """DCP ``Stateful`` view of a (possibly sharded) model; ``dtype`` casts the saved weights."""

    def __init__(self, model: nn.Module, dtype: torch.dtype | None = None):
        self.model, self.dtype = model, dtype

    def state_dict(self) -> dict[str, torch.Tensor]:
        sd = get_model_state_dict(self.model)
        return {k: v.to(self.dtype) for k, v in sd.items()} if self.dtype is not None else sd

    def load_state_dict(self, sd: dict[str, torch.Tensor]) -> None:
        set_model_state_dict(self.model, sd)


class OptimizerState:
    """DCP ``Stateful`` view of the optimizer, keyed by parameter names (not ids)."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer):
        self.model, self.optimizer = model, optimizer

    def state_dict(self) -> dict[str, Any]:
        return get_optimizer_state_dict(self.model, self.optimizer)

    def load_state_dict(self, sd: dict[str, Any]) -> None:
        set_optimizer_state_dict(self.model, self.optimizer, sd)


class Pickled:
    """A small object DCP stores as bytes; ``get``/``put`` read and apply the live state."""

    def __init__(self, get, put):
        self.get, self.put = get, put

    def state_dict(self) -> dict[str, bytes]:
        return {"data": pickle.dumps(self.get())}

    def load_state_dict(self, sd: dict[str, bytes]) -> None:
        self.put(pickle.loads(sd["data"]))


def rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def step_dirs(folder: Path) -> dict[int, Path]:
    """Completed checkpoints in ``folder``: step -> path (temporary ``.tmp`` folders excluded)."""
    if not folder.is_dir():
        return {}
    out = {}
    for path in folder.iterdir():
        match = STEP_DIR.match(path.name)
        if match and (path / ".metadata").is_file():
            out[int(match.group(1))] = path
    return out


def has_optimizer(path: Path) -> bool:
    """Whether the checkpoint at ``path`` is a full one (with optimizer state)."""
    meta = dcp.FileSystemReader(str(path)).read_metadata()
    return any(key.startswith("optimizer.") for key in meta.state_dict_metadata)


def _rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def _barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


class CheckpointManager:
    """Saves and restores the whole training state; see the module docstring for the layout.

    ``train_state`` is a dict the trainer owns (``step``, ``skipped``, ``tokens``); it is updated in
    place on load.
    """

    def __init__(self, cfg: Checkpoint, folder: Path, *, model: nn.Module, optimizer: torch.optim.Optimizer,
                 scheduler: Any, loader: Any, train_state: dict[str, Any]):
        self.cfg, self.folder = cfg, folder
        self.model, self.optimizer, self.scheduler, self.loader = model, optimizer, scheduler, loader
        self.train_state = train_state
        self._pending: tuple[Any, Path, Path] | None = None
        # async saves talk over their own gloo group, so their background collectives never interleave
        # with the training collectives on the default group
        self._async_group = self._clock_group = None
        if cfg.enable_checkpoint and cfg.async_mode != "disabled" and dist.is_initialized():
            self._async_group = dist.new_group(backend="gloo")
        if cfg.enable_checkpoint and cfg.interval_type == "seconds" and dist.is_initialized():
            self._clock_group = dist.new_group(backend="gloo")  # CPU broadcast of rank 0's "save now"
        self._last_save = time.monotonic()

    def _full_state(self) -> dict[str, Any]:
        rank = _rank()
        return {
            "model": ModelState(self.model),
            "optimizer": OptimizerState(self.model, self.optimizer),
            "lr_scheduler": Pickled(self.scheduler.state_dict, self.scheduler.load_state_dict),
            "train_state": Pickled(lambda: dict(self.train_state), self.train_state.update),
            f"dataloader.rank_{rank}": Pickled(self.loader.state_dict, self.loader.load_state_dict),
            f"rng.rank_{rank}": Pickled(rng_state, set_rng_state),
        }

    # -- loading ---------------------------------------------------------------------------------
    def load(self, step: int = -1) -> bool:
        """Restore from step ``step`` (-1: the latest). Returns False when there is nothing to load."""
        done = step_dirs(self.folder)
        if step == -1:
            if not done:
                return False
            step = max(done)
        if step not in done:
            raise FileNotFoundError(f"checkpoint.load_step {step}: no checkpoint {self.folder / f'step-{step}'}.")
        path = done[step]
        if has_optimizer(path):
            state = self._full_state()
            excluded = tuple(self.cfg.exclude_from_loading)  # e.g. "dataloader" drops dataloader.rank_k
            state = {k: v for k, v in state.items() if not any(k == e or k.startswith(e + ".") for e in excluded)}
        else:  # weights only (hf-to-dcp or an export): start training from these weights at `step`
            state = {"model": ModelState(self.model)}
            self.train_state["step"] = step
        dcp.load(state, checkpoint_id=str(path))
        return True

    # -- saving ----------------------------------------------------------------------------------
    def _due(self, step: int) -> bool:
        """Whether ``interval`` has passed: steps, or seconds of wall time since the last save (rank 0's clock)."""
        if self.cfg.interval_type != "seconds":
            return step % self.cfg.interval == 0
        due = torch.tensor([time.monotonic() - self._last_save >= self.cfg.interval], dtype=torch.int32)
        if dist.is_initialized():  # every rank must save at the same step: rank 0 decides
            dist.broadcast(due, src=0, group=self._clock_group)
        return bool(due.item())

    def maybe_save(self, step: int, *, last: bool) -> Path | None:
        """Save at every ``interval`` (steps or seconds) and at the last step; returns the final folder or None."""
        if not self.cfg.enable_checkpoint or not (self._due(step) or last):
            return None
        self._last_save = time.monotonic()
        if last and self.cfg.model_weights_only:
            state = {"model": ModelState(self.model, TORCH_DTYPES[self.cfg.export_dtype])}
            return self.save(step, state, use_async=False)
        return self.save(step, self._full_state(), use_async=self.cfg.async_mode != "disabled" and not last)

    def save(self, step: int, state: dict[str, Any], *, use_async: bool = False) -> Path:
        self.wait()
        final, tmp = self.folder / f"step-{step}", self.folder / f"step-{step}.tmp"
        if _rank() == 0:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        _barrier()
        if use_async:
            future = dcp.async_save(state, checkpoint_id=str(tmp), process_group=self._async_group)
            self._pending = (future, tmp, final)
        else:
            dcp.save(state, checkpoint_id=str(tmp))
            self._publish(tmp, final)
        return final

    def wait(self) -> None:
        """Finish a pending async save (rename + prune)."""
        if self._pending is not None:
            future, tmp, final = self._pending
            self._pending = None
            future.result()
            _barrier()
            self._publish(tmp, final)

    def _publish(self, tmp: Path, final: Path) -> None:
        if _rank() == 0:
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
            if self.cfg.keep_latest_k > 0:
                done = step_dirs(self.folder)
                for old in sorted(done)[: -self.cfg.keep_latest_k]:
                    shutil.rmtree(done[old], ignore_errors=True)
        _barrier()


def full_model_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The unsharded weights on CPU (every rank takes part; rank 0 gets them, others may get {})."""
    opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return get_model_state_dict(model, options=opts)


def export_hf(model_config: Any, state: dict[str, torch.Tensor], out_dir: Path, *, tokenizer: Any = None,
              dtype: torch.dtype = torch.float32) -> Path:
    """Write ``save_pretrained`` files (and the tokenizer) to ``out_dir`` atomically; call on rank 0.

    The folder loads without softpick (:func:`softpick.models.export.save_portable`): a Llama checkpoint
    for a plain softmax model, self-contained remote code for the other variants.
    """
    from transformers import AutoModelForCausalLM

    from softpick.models.export import save_portable

    model = AutoModelForCausalLM.from_config(model_config)
    model.load_state_dict(state, strict=True)
    return save_portable(model, out_dir, tokenizer=tokenizer, dtype=dtype)
