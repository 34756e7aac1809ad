"""Distributed checkpoints (DCP) under ``{dump_folder}/{folder}/step-N`` and HF exports.

A full checkpoint holds ``model`` and ``optimizer`` (sharded tensors: each rank writes its shards),
and small pickled entries: ``lr_scheduler``, ``train_state`` (step, skipped steps, tokens), and per
rank ``dataloader.rank_k`` and ``rng.rank_k`` (torch, cuda, python, numpy generators). Per-rank
entries get per-rank keys because DCP keeps one copy of each key.

Saves are atomic: DCP writes ``step-N.tmp`` and rank 0 renames it to ``step-N`` once every rank has
written (for ``async_mode`` when the background save is done, checked before the next save and at
close), so a crash mid-save never hides the previous good checkpoint. Before the rename every
folder gets ``model_config.json`` and ``manifest.json`` (``integrity.py``); ``keep_latest_k`` then
prunes, only after the new folder has been read back against its manifest, and never the step the run
resumed from or the one it just wrote. A failed write (no space left, ...) removes the ``.tmp`` folder
and stops the run with one line naming the disk and the step (:func:`softpick.train.stops.write_failure`).

Loading checks, in order, and stops with one line (:class:`~softpick.errors.UserError`) before
touching anything: the step exists; the folder is whole (files, sizes, checksums of its manifest; a
damaged latest names the newest good step to pass as ``--checkpoint.load_step``); its model config
matches the run's; its tensors have the model's names and shapes (strict); its step is not past
``training.steps``. A step folder without optimizer state (``hf-to-dcp`` output, or a weights-only
export) loads the model weights only and training starts at that step. A run resumed from an older
step than the newest (``--checkpoint.load_step``) first moves the later checkpoints, which belong to
the run it branches from, into ``abandoned-TIME/``: they are neither loaded, pruned nor overwritten.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import pickle
import random
import re
import shutil
import time
from pathlib import Path
from typing import Any, Iterator

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

from softpick.errors import UserError
from softpick.train import integrity, outputs
from softpick.train.config import Checkpoint
from softpick.train.parallel import TORCH_DTYPES
from softpick.train.stops import find_cause, find_os_error, write_failure

logger = logging.getLogger("softpick.train")

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


def step_folders(folder: Path) -> dict[int, Path]:
    """Every ``step-N`` entry in ``folder``, whole or not (a file of that name too, so that it is
    reported rather than skipped): step -> path (``.tmp`` folders excluded)."""
    if not folder.is_dir():
        return {}
    out = {}
    for path in folder.iterdir():
        match = STEP_DIR.match(path.name)
        if match:
            out[int(match.group(1))] = path
    return out


def step_dirs(folder: Path) -> dict[int, Path]:
    """Checkpoints in ``folder`` that DCP finished (they hold ``.metadata``): step -> path."""
    return {step: path for step, path in step_folders(folder).items() if (path / ".metadata").is_file()}


def has_optimizer(path: Path) -> bool:
    """Whether the checkpoint at ``path`` is a full one (with optimizer state)."""
    meta = dcp.FileSystemReader(str(path)).read_metadata()
    return any(key.startswith("optimizer.") for key in meta.state_dict_metadata)


def _rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def _world() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def _barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def _gathered(local: list[Any]) -> list[Any]:
    """Every rank's ``local`` items, concatenated in rank order (one all_gather_object)."""
    if not dist.is_initialized():
        return list(local)
    parts: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(parts, local)
    return [item for part in parts for item in part]


def damage(path: Path) -> list[str]:
    """What is wrong with checkpoint folder ``path`` (empty: whole). Every rank calls it and hashes a
    share of the files; all get the same answer. A folder without a manifest (written before
    manifests existed, or by another tool) passes with a warning when DCP can read its metadata."""
    if not path.is_dir():
        return ["it is a file, not a checkpoint folder"]
    if not (path / ".metadata").is_file():
        return ["no .metadata (an interrupted or damaged save)"]
    try:
        manifest = integrity.read_manifest(path)
    except ValueError as err:
        return [str(err)]
    if manifest is None:
        try:
            dcp.FileSystemReader(str(path)).read_metadata()
        except Exception as err:  # noqa: BLE001 - any unpickling failure means a garbled .metadata
            return [f".metadata is not readable ({type(err).__name__})"]
        logger.warning("%s has no %s: its files are not verified", path, integrity.MANIFEST)
        return []
    names = integrity.share(list(manifest), _rank(), _world())
    problems = _gathered(integrity.verify(path, manifest, names))
    return list(dict.fromkeys(problems))  # sizes are checked on every rank: keep one copy


def _unused(path: Path) -> Path:
    """``path``, or ``path-2``, ``path-3``, ... : the first that does not exist."""
    out, n = path, 1
    while out.exists():
        n += 1
        out = path.with_name(f"{path.name}-{n}")
    return out


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return f"{type(error).__name__}: {text.splitlines()[0][:200]}" if text else type(error).__name__


def saved_model_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Names (without ``model.``) and global shapes of the model tensors in checkpoint ``path``."""
    meta = dcp.FileSystemReader(str(path)).read_metadata().state_dict_metadata
    return {k[len("model."):]: tuple(m.size) for k, m in meta.items() if k.startswith("model.") and hasattr(m, "size")}


def config_as_json(model_config: Any) -> dict[str, Any]:
    """``model_config.to_dict()`` as it reads back from json (int keys become strings, tuples lists)."""
    return json.loads(json.dumps(model_config.to_dict(), default=str))


def check_model_fits(path: Path, model: nn.Module, model_config: Any | None) -> None:
    """UserError (one line, naming the folder) when checkpoint ``path`` holds another model: a differing
    saved model config, or missing / unexpected / wrongly shaped tensors."""
    config_file = path / integrity.MODEL_CONFIG
    if model_config is not None and config_file.is_file():
        try:
            saved = json.loads(config_file.read_text())
        except ValueError:
            raise UserError(f"checkpoint {path}: {integrity.MODEL_CONFIG} is not valid json.") from None
        diffs = integrity.config_differences(saved, config_as_json(model_config), config_as_json(type(model_config)()))
        if diffs:
            raise UserError(
                f"checkpoint {path} was written for another model ({'; '.join(diffs)}, checkpoint -> model.config); "
                f"pass the model.config it was trained with, or another --job.dump_folder."
            )
    model_shapes = {k: tuple(v.shape) for k, v in get_model_state_dict(model).items()}
    mismatch = integrity.model_mismatch(saved_model_shapes(path), model_shapes)
    if mismatch:
        raise UserError(f"checkpoint {path} does not fit this model ({mismatch}); pass the model.config it was "
                        f"trained with, or another --job.dump_folder.")


def load_state(path: Path, state: dict[str, Any]) -> None:
    """``dcp.load(state)`` from checkpoint ``path``; a failure (a file its manifest does not cover is
    damaged, a layout that does not fit) is one line, and a UserError raised while applying the state
    (say, the data loader's position of another layout) comes through as it is."""
    try:
        dcp.load(state, checkpoint_id=str(path))
    except BaseException as err:  # DCP wraps every rank's failure in a CheckpointException
        cause = find_cause(err, UserError)
        if cause is not None:
            raise cause from None
        if isinstance(err, (KeyboardInterrupt, SystemExit)):
            raise
        raise UserError(f"checkpoint {path} does not load ({_first_line(err)}); it is damaged where its manifest "
                        f"does not look, or was written by another layout: pass another --checkpoint.load_step, "
                        f"or another --job.dump_folder.") from None


def load_weights(path: Path, model: nn.Module) -> None:
    """Load only the model weights of checkpoint ``path`` into ``model`` (see :func:`load_state`)."""
    load_state(path, {"model": ModelState(model)})


def pick_checkpoint(folder: Path, step: int = -1) -> Path | None:
    """The whole checkpoint to load: step ``step`` (-1: the latest), None when ``folder`` has none.

    UserError when the step does not exist, or its folder is damaged: the message names the problem and
    the newest whole checkpoint to pass as ``--checkpoint.load_step``.
    """
    found = step_folders(folder)
    if step == -1:
        if not found:
            return None
        step = max(found)
    if step not in found:
        have = ", ".join(map(str, sorted(found))) or "none"
        raise UserError(f"checkpoint.load_step {step}: there is no {folder / f'step-{step}'} (steps saved: {have}); "
                        f"pass one of them, or -1 for the latest.")
    problems = damage(found[step])
    if not problems:
        return found[step]
    good = next((s for s in sorted(found, reverse=True) if s < step and not damage(found[s])), None)
    advice = (f"pass --checkpoint.load_step {good} to resume from the newest whole one" if good is not None
              else "no older whole checkpoint is left: move the folder away to start afresh")
    raise UserError(f"checkpoint {found[step]} is damaged ({'; '.join(problems[:3])}); {advice}.")


class CheckpointManager:
    """Saves and restores the whole training state; see the module docstring for the layout.

    ``train_state`` is a dict the trainer owns (``step``, ``skipped``, ``tokens``); it is updated in
    place on load.
    """

    def __init__(self, cfg: Checkpoint, folder: Path, *, model: nn.Module, optimizer: torch.optim.Optimizer,
                 scheduler: Any, loader: Any, train_state: dict[str, Any], model_config: Any = None):
        self.cfg, self.folder, self.model_config = cfg, folder, model_config
        self.model, self.optimizer, self.scheduler, self.loader = model, optimizer, scheduler, loader
        self.train_state = train_state
        self._pending: tuple[Any, Path, Path] | None = None
        self.resumed_step: int | None = None
        self.resumed_weights_only = False
        self.last_saved: int | None = None
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
    def load(self, step: int = -1, *, max_step: int | None = None) -> bool:
        """Restore from step ``step`` (-1: the latest). Returns False when there is nothing to load.

        Every check of the module docstring runs first; ``max_step`` is the run's ``training.steps``.
        """
        path = pick_checkpoint(self.folder, step)
        if path is None:
            return False
        step = int(STEP_DIR.match(path.name).group(1))
        check_model_fits(path, self.model, self.model_config)
        if max_step is not None and step > max_step:
            raise UserError(f"checkpoint {path} is past training.steps={max_step}: that run already did {step} steps; "
                            f"raise --training.steps above {step} to extend it, or give another --job.dump_folder.")
        full = has_optimizer(path)
        if full:
            state = self._full_state()
            excluded = tuple(self.cfg.exclude_from_loading)  # e.g. "dataloader" drops dataloader.rank_k
            state = {k: v for k, v in state.items() if not any(k == e or k.startswith(e + ".") for e in excluded)}
        else:  # weights only (hf-to-dcp or an export): start training from these weights at `step`
            state = {"model": ModelState(self.model)}
            self.train_state["step"] = step
        load_state(path, state)
        self.resumed_step, self.resumed_weights_only = step, not full
        self._set_aside_later(step)
        return True

    def _set_aside_later(self, step: int) -> None:
        """Move the checkpoints after ``step`` (a run resumed from an older step branches off) into
        ``abandoned-TIME/``, so they are neither resumed from, pruned nor overwritten by this run."""
        later = sorted((s, p) for s, p in step_folders(self.folder).items() if s > step) if _rank() == 0 else []
        if later:
            aside = _unused(self.folder / f"abandoned-{time.strftime('%Y%m%d-%H%M%S')}")
            aside.mkdir()
            for _, p in later:
                os.replace(p, aside / p.name)
            logger.warning("resumed from step %d: the later checkpoints (steps %s) were moved to %s", step,
                           ", ".join(str(s) for s, _ in later), aside)
        _barrier()  # every rank, whatever rank 0 found

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

    def save_full(self, step: int) -> Path:
        """Save the whole training state of ``step`` now, synchronously (e.g. before stopping on a signal)."""
        return self.save(step, self._full_state(), use_async=False)

    def save(self, step: int, state: dict[str, Any], *, use_async: bool = False) -> Path:
        self.wait()
        final, tmp = self.folder / f"step-{step}", self.folder / f"step-{step}.tmp"
        with self._writing(step, tmp):
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
            with self._writing(int(STEP_DIR.match(final.name).group(1)), tmp):
                future.result()
                _barrier()
                self._publish(tmp, final)

    @contextlib.contextmanager
    def _writing(self, step: int, tmp: Path) -> Iterator[None]:
        """Turn an OSError while writing ``step`` (no space left, ...) into one line; remove ``tmp``."""
        try:
            yield
        except BaseException as err:  # DCP's CheckpointException derives from BaseException
            os_error = find_os_error(err)
            if os_error is None:
                raise
            if _rank() == 0:
                shutil.rmtree(tmp, ignore_errors=True)
            done = step_dirs(self.folder)
            kept = f"the previous checkpoint {done[max(done)]}" if done else "no earlier checkpoint exists, nothing"
            raise write_failure(os_error, self.folder, step, kept) from err

    def _publish(self, tmp: Path, final: Path) -> None:
        """Seal the finished ``tmp`` (model config, manifest), rename it ``final``, prune (see :meth:`_prunable`)."""
        step = int(STEP_DIR.match(final.name).group(1))
        seal(tmp, step, self.model_config)
        prune = self._prunable(step)
        if prune:  # delete nothing before the new checkpoint reads back whole
            _barrier()  # rank 0 has written the manifest every rank reads
            problems = damage(tmp)
            if problems:
                raise OSError(errno.EIO, f"step-{step} does not read back whole ({'; '.join(problems[:3])})",
                              str(tmp))
        if _rank() == 0:
            if final.exists():  # never deleted: a step saved twice keeps the first copy aside
                os.replace(final, _unused(final.with_name(f"{final.name}.replaced-{time.strftime('%Y%m%d-%H%M%S')}")))
            os.replace(tmp, final)
            for old in prune:
                shutil.rmtree(old, ignore_errors=True)
        self.last_saved = step
        _barrier()

    def _prunable(self, step: int) -> list[Path]:
        """The checkpoints ``keep_latest_k`` removes once ``step`` is saved: all but the newest k (counting
        ``step``), never ``step`` itself nor the step this run resumed from."""
        if self.cfg.keep_latest_k <= 0:
            return []
        done = {**step_dirs(self.folder), step: None}
        keep = set(sorted(done)[-self.cfg.keep_latest_k:]) | {step, self.resumed_step}
        return [path for s, path in sorted(done.items()) if s not in keep and path is not None]


def seal(folder: Path, step: int, model_config: Any | None) -> None:
    """Write ``model_config.json`` (when given) and ``manifest.json`` into a checkpoint folder DCP has
    finished; every rank hashes a share of the files, rank 0 writes."""
    if _rank() == 0 and model_config is not None:
        (folder / integrity.MODEL_CONFIG).write_text(json.dumps(config_as_json(model_config), indent=1))
    _barrier()
    names = integrity.share(integrity.folder_files(folder), _rank(), _world())
    digests = dict(_gathered([(name, integrity.file_digest(folder / name)) for name in names]))
    if _rank() == 0:
        integrity.write_manifest(folder, digests, step)


def full_model_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The unsharded weights on CPU (every rank takes part; rank 0 gets them, others may get {})."""
    opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return get_model_state_dict(model, options=opts)


def export_hf(model_config: Any, state: dict[str, torch.Tensor], out_dir: Path, *, tokenizer: Any = None,
              dtype: torch.dtype = torch.float32) -> Path:
    """Write ``save_pretrained`` files (and the tokenizer) to ``out_dir`` atomically; call on rank 0.

    The folder is written beside ``out_dir`` and renamed into place (:mod:`softpick.train.outputs`): a
    failure (a full disk, ...) leaves the previous ``out_dir`` as it was and no partial folder; the
    OSError behind it is raised (:func:`export_os_error`). The folder loads without softpick
    (:func:`softpick.models.export.save_portable`): a Llama checkpoint for a plain softmax model,
    self-contained remote code for the other variants.
    """
    from transformers import AutoModelForCausalLM

    from softpick.models.export import save_portable

    model = AutoModelForCausalLM.from_config(model_config)
    model.load_state_dict(state, strict=True)
    out_dir = Path(out_dir)
    partial = outputs.partial_path(out_dir)
    try:
        save_portable(model, partial, tokenizer=tokenizer, dtype=dtype)
        return outputs.replace_folder(partial, out_dir)
    except BaseException as err:
        outputs.remove_partial(partial)
        os_error = export_os_error(err)
        if os_error is not None and os_error is not err:
            raise os_error from err
        raise


def export_os_error(error: BaseException) -> OSError | None:
    """The OSError behind a failed export: a real one, or the I/O error safetensors' writer reports as
    ``SafetensorError`` text ("... (os error 28)")."""
    found = find_os_error(error)
    if found is not None:
        return found
    text = str(error)
    match = re.search(r"os error (\d+)", text)
    if match:
        code = int(match.group(1))
        return OSError(code, os.strerror(code))
    return None
