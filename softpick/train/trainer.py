"""``softpick train``: the training loop (flame-compatible flags; one process or torchrun).

Examples::

    softpick train --job.config_file configs/tiny_cpu.toml                    # CPU, one process
    softpick train --job.config_file configs/fla.toml --model.config configs/softpick_transformer_340M.json
    NGPU=8 bash train.sh --job.config_file configs/fla.toml ...               # torchrun, NCCL

``main`` parses the config, builds a :class:`Trainer` (each build step is one labelled method call),
runs ``train()`` and closes. Under torchrun the process ends with ``os._exit`` after
``destroy_process_group`` (see :func:`_exit_distributed`). A user mistake or an expected stop (NaN/Inf,
a full disk, SIGTERM/SIGINT; exit codes in ``stops.py``) ends in one line on stderr from rank 0; the
faults tried and what each keeps are listed in docs/faults.md.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import gc
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.profiler import record_function

from softpick._compat import set_pg_timeout
from softpick.errors import UserError, debug_enabled, one_line, record_for_launcher
from softpick.models.export import set_trained_context
from softpick.train.checkpoint import (
    CheckpointManager, ModelState, export_hf, export_os_error, full_model_state, step_dirs, step_folders,
)
from softpick.train.config import ConfigError, JobConfig, parse_args
from softpick.train.data import build_loader
from softpick.train.lock import DumpLock, check_writable
from softpick.train.metrics import (
    MetricsLogger, Throughput, check_wandb, flops_per_token, model_flops_shape, non_embedding_params, peak_flops,
    peak_memory_gib, profiling,
)
from softpick.train.optim import build_lr_scheduler, build_optimizer
from softpick.train.parallel import ParallelDims, parallelize
from softpick.train.stops import CheckpointWriteError, Interrupted, NonFinite, StopSignals, mount_point

logger = logging.getLogger("softpick.train")

VARLEN_MODEL_TYPES = ("softpick_transformer",)
"""Model types whose forward takes ``cu_seqlens=`` (packed documents, batch 1)."""


def load_model_config(path: str | None) -> Any:
    """The model config of ``--model.config``: ours, fla's transformer json, any HF type, or a hub id."""
    from softpick.models.loading import load_model_config as load

    try:
        return load(path, flag="model.config")
    except UserError as err:
        raise ConfigError(str(err)) from None


def load_tokenizer(path: str | None) -> Any:
    """The tokenizer of ``--model.tokenizer_path`` (a folder or a hub id), or the embedded one when None."""
    if path is None:
        from softpick.corpus import embedded_tokenizer

        return embedded_tokenizer()
    from softpick.models.loading import load_tokenizer as load

    try:
        return load(path, flag="model.tokenizer_path")
    except UserError as err:
        raise ConfigError(str(err)) from None


def clean_name(name: str) -> str:
    """A parameter or buffer name without the AC / compile wrapper segments."""
    return ".".join(part for part in name.split(".") if part not in ("_checkpoint_wrapped_module", "_orig_mod"))


def clip_grad_norm_(params: list[nn.Parameter], max_norm: float) -> torch.Tensor:
    """Clip the global L2 norm of the gradients to ``max_norm`` (no clipping if <= 0); returns the norm.

    Works when gradients mix plain tensors and DTensors on different meshes (TP without FSDP): norms
    are taken per group with ``get_total_norm``, made global with ``full_tensor()`` and combined.
    """
    groups: dict[Any, list[nn.Parameter]] = {}
    for p in params:
        if p.grad is not None:
            mesh = getattr(p.grad, "device_mesh", None)
            groups.setdefault(id(mesh) if mesh is not None else None, []).append(p)
    norms = []
    for group in groups.values():
        norm = torch.nn.utils.get_total_norm([p.grad for p in group], 2.0, foreach=True)
        norms.append(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)
    total = torch.stack([n.float() for n in norms]).norm() if norms else torch.zeros(())
    if max_norm > 0:
        for group in groups.values():  # one call per group: foreach ops cannot mix Tensor and DTensor
            torch.nn.utils.clip_grads_with_norm_(group, max_norm, total, foreach=True)
    return total


class Trainer:
    """Holds everything one run needs; ``__init__`` is the list of build steps."""

    def __init__(self, config: JobConfig):
        self.config = config
        tr = config.training
        self.dump = Path(config.job.dump_folder)

        # distributed: check degrees first, so a bad launch fails before any work
        world = int(os.environ.get("WORLD_SIZE", "1"))
        self.dims = ParallelDims(tr.data_parallel_replicate_degree, tr.data_parallel_shard_degree,
                                 tr.tensor_parallel_degree, world)
        self.device = self._init_distributed(world)
        self.rank = dist.get_rank() if dist.is_initialized() else 0
        self.mesh = self.dims.build_mesh(self.device.type)
        if config.checkpoint.create_seed_checkpoint and world > 1:
            raise ConfigError(f"checkpoint.create_seed_checkpoint needs one process (NGPU=1), not {world}.")
        if config.profiling.enable_memory_snapshot and self.device.type != "cuda":
            raise ConfigError("profiling.enable_memory_snapshot needs a CUDA device.")
        checkpoints = self.dump / config.checkpoint.folder
        self._on_rank0(lambda: check_writable(self.dump, "job.dump_folder"))  # before any work
        if config.checkpoint.enable_checkpoint:
            self._on_rank0(lambda: check_writable(checkpoints, "checkpoint.folder"))
        if config.metrics.enable_wandb:
            self._on_rank0(check_wandb)  # no login: one line now, not a traceback after the model is built
        self.seed = 42 if tr.seed is None else tr.seed
        if tr.deterministic:
            torch.use_deterministic_algorithms(True)
            torch.backends.cudnn.benchmark = False

        # tokenizer and model config
        self.tokenizer = load_tokenizer(config.model.tokenizer_path)
        self.model_config = load_model_config(config.model.config)
        self._check_model_config()

        # data (before the model, so a dataset that cannot load fails fast): one stream per dp rank
        self.loader = build_loader(tr, self.tokenizer, rank=self.dims.dp_rank(self.rank),
                                   world=self.dims.dp_degree, seed=self.seed)

        # build the model and apply TP / AC / compile / FSDP or DDP
        self.model, self.flops_fn = self._build_parallel_model()
        if config.model.print_after_conversion and self.rank == 0:
            print(self.model)

        # optimizer and lr schedule (after parallelizing: they see the sharded parameters)
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = build_optimizer(self.params, config.optimizer, self.device)
        self.scheduler = build_lr_scheduler(self.optimizer, config.lr_scheduler, tr.steps)

        # the dump folder is this run's from here on (rank 0 holds the lock; released by close())
        self.lock: DumpLock | None = self._on_rank0(lambda: DumpLock(self.dump))
        try:
            # checkpoints: resume when one exists (after checking it is whole and of this model)
            self.state: dict[str, Any] = {"step": 0, "skipped": 0, "tokens": 0}
            self.skipped_in_a_row = 0
            self.checkpointer = CheckpointManager(
                config.checkpoint, checkpoints, model=self.model, optimizer=self.optimizer,
                scheduler=self.scheduler, loader=self.loader, train_state=self.state, model_config=self.model_config,
            )
            if config.checkpoint.enable_checkpoint and self.checkpointer.load(config.checkpoint.load_step,
                                                                               max_step=tr.steps):
                if self.checkpointer.resumed_weights_only:
                    logger.warning("started from the model weights of step %d (a weights-only checkpoint): the "
                                   "optimizer state, lr schedule (warmup included), data order and RNG start "
                                   "afresh", self.state["step"])
                else:
                    logger.info("resumed from step %d", self.state["step"])

            # metrics
            self.metrics = MetricsLogger(config.metrics, self.dump, rank=self.rank, total_steps=tr.steps,
                                         start_step=self.state["step"], job_config=config)
        except BaseException:
            self._release()
            raise
        self.live_analysis = self._live_analysis()
        self.throughput = Throughput(self.flops_fn, peak_flops(self.device, config.metrics.peak_flops),
                                     split=self.dims.tp)
        if self.rank == 0:
            self._log_setup()

    def _live_analysis(self) -> Any:
        """The probe of ``--metrics.analysis_freq`` (None when off)."""
        cfg = self.config.metrics
        if cfg.analysis_freq <= 0:
            return None
        from softpick.train.live_analysis import LiveAnalysis

        tp_group = self.mesh["tp"].get_group() if self.dims.tp_enabled else None
        return LiveAnalysis(self.config.training, self.tokenizer, samples=cfg.analysis_samples, seed=self.seed,
                            device=self.device, tp_group=tp_group)

    def _on_rank0(self, fn: Any) -> Any:
        """``fn()`` on rank 0 (None elsewhere); a UserError there is raised on every rank, so no rank
        is left waiting in a collective."""
        result, error = None, None
        if self.rank == 0:
            try:
                result = fn()
            except UserError as err:
                error = err
        if dist.is_initialized():
            box = [error]
            dist.broadcast_object_list(box, src=0)
            error = box[0]
        if error is not None:
            raise error
        return result

    def _release(self) -> None:
        if getattr(self, "lock", None) is not None:
            self.lock.release()

    def _log_setup(self) -> None:
        """One INFO line each for the model, the layout and the batch (what a log reader needs first)."""
        tr, n_params = self.config.training, sum(p.numel() for p in self.model.parameters())
        logger.info("model %s (%s attention): %.1fM parameters", self.model_config.model_type,
                    getattr(self.model_config, "attn_type", "softmax"), n_params / 1e6)
        logger.info("%d process(es) on %s: data_parallel_replicate %d x data_parallel_shard %d x tensor_parallel %d; "
                    "compile %s, activation checkpointing %s", self.dims.world_size, self.device.type,
                    self.dims.dp_replicate, self.dims.dp_shard, self.dims.tp, "on" if tr.compile else "off",
                    self.config.activation_checkpoint.mode)
        logger.info("global batch %d x %d tokens (%d per rank x %d accumulation x %d data-parallel ranks), "
                    "%d steps", tr.batch_size * tr.gradient_accumulation_steps * self.dims.dp_degree, tr.seq_len,
                    tr.batch_size, tr.gradient_accumulation_steps, self.dims.dp_degree, tr.steps)

    def _log_compile(self) -> None:
        """After the first step: how many graphs torch.compile built, and its graph breaks (proof it applied)."""
        from torch._dynamo.utils import counters

        graphs, breaks = counters["stats"]["unique_graphs"], sum(counters["graph_break"].values())
        if graphs == 0:
            logger.warning("training.compile is on but torch.compile built no graph.")
        else:
            logger.info("torch.compile built %d graph(s) with %d graph break(s)", graphs, breaks)

    # -- build steps -----------------------------------------------------------------------------
    def _init_distributed(self, world: int) -> torch.device:
        cuda = torch.cuda.is_available()
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0"))) if cuda else torch.device("cpu")
        if cuda:
            torch.cuda.set_device(device)
        if world > 1 and not dist.is_initialized():
            os.environ.setdefault("TORCH_NCCL_TRACE_BUFFER_SIZE", str(self.config.comm.trace_buf_size))
            timeout = datetime.timedelta(seconds=self.config.comm.init_timeout_seconds)
            dist.init_process_group("nccl" if cuda else "gloo", timeout=timeout)
        return device

    def _check_model_config(self) -> None:
        vocab, model_type = len(self.tokenizer), self.model_config.model_type
        tr = self.config.training
        longest = tr.context_len if tr.varlen else tr.seq_len
        max_positions = getattr(self.model_config, "max_position_embeddings", None)
        if isinstance(max_positions, int) and longest > max_positions:
            flag = "training.context_len" if tr.varlen else "training.seq_len"
            raise ConfigError(f"{flag} {longest} is longer than model.config max_position_embeddings "
                              f"{max_positions}; lower {flag} or raise max_position_embeddings.")
        if vocab > self.model_config.vocab_size:
            raise ConfigError(
                f"the tokenizer has {vocab} tokens but model.config vocab_size is {self.model_config.vocab_size}."
            )
        if self.config.training.varlen and model_type not in VARLEN_MODEL_TYPES:
            raise ConfigError(
                f"training.varlen needs a model whose forward takes cu_seqlens ({', '.join(VARLEN_MODEL_TYPES)}); "
                f"model.config has model_type {model_type!r}."
            )

    def _build_parallel_model(self) -> tuple[nn.Module, Any]:
        """The parallelized model and its FLOPs-per-token function.

        Sharded runs (FSDP or TP) build the model on the meta device, shard it, then fill in rank 0's
        seeded init, so every layout starts from the weights one process would use.
        """
        sharded = self.dims.fsdp_enabled or self.dims.tp_enabled
        seed_model = self._build_model() if self.rank == 0 or not sharded else None
        if sharded:
            with torch.device("meta"):
                model = self._build_model()
        else:
            model = seed_model.to(self.device)
        if hasattr(model, "fuse_linear_cross_entropy"):  # softpick models: the loss without [tokens, vocab] logits
            model.fuse_linear_cross_entropy = self.config.training.fused_loss
        layers, heads, head_dim = model_flops_shape(self.model_config)
        n_params = non_embedding_params(model)
        model = parallelize(model, self.dims, self.mesh, self.config, self.device)
        if sharded:
            self._materialize(model, seed_model)
        model.train()
        return model, lambda span: flops_per_token(n_params, layers, heads, head_dim, span)

    def _build_model(self) -> nn.Module:
        """The full model in float32, initialized from ``seed`` (under a meta-device context: shapes only)."""
        from transformers import AutoModelForCausalLM

        torch.manual_seed(self.seed)
        return AutoModelForCausalLM.from_config(self.model_config, dtype=torch.float32)

    def _materialize(self, model: nn.Module, seed_model: nn.Module | None) -> None:
        """Allocate the sharded meta model and copy rank 0's initial weights into every shard.

        Parameters and persistent buffers come through ``set_model_state_dict(broadcast_from_rank0)``;
        non-persistent buffers (e.g. RoPE frequencies) are broadcast from rank 0 one by one.
        """
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict, set_model_state_dict

        cpu_offload = self.config.training.enable_cpu_offload
        model.to_empty(device="cpu" if cpu_offload else self.device)
        if cpu_offload:  # FSDP offloads parameters only; buffers (RoPE tables) stay on the GPU
            for module in model.modules():
                for key, buffer in module._buffers.items():
                    if buffer is not None:
                        module._buffers[key] = buffer.to(self.device)
        full = get_model_state_dict(seed_model) if seed_model is not None else {}
        options = StateDictOptions(full_state_dict=True, broadcast_from_rank0=True)
        set_model_state_dict(model, full, options=options)
        source = dict(seed_model.named_buffers()) if seed_model is not None else {}
        for name, buffer in model.named_buffers():
            if seed_model is not None:
                buffer.copy_(source[clean_name(name)])
            dist.broadcast(buffer, src=0)

    # -- training --------------------------------------------------------------------------------
    def _autocast(self) -> contextlib.AbstractContextManager:
        """bf16 autocast on CUDA when FSDP's mixed-precision policy does not already cast the params."""
        tr = self.config.training
        if self.device.type == "cuda" and tr.mixed_precision_param == "bfloat16" and not self.dims.fsdp_enabled:
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def train_step(self, batches: list[dict[str, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Forward/backward over the micro-batches, clip, and step; returns (mean loss, grad norm)."""
        accum = len(batches)
        loss_sum = torch.zeros((), device=self.device)
        for i, batch in enumerate(batches):
            if self.dims.fsdp_enabled:  # reduce-scatter gradients only after the last micro-batch
                self.model.set_requires_gradient_sync(i == accum - 1)
            input_ids, kwargs = self._model_inputs(batch)
            with self._autocast(), record_function("forward"):
                loss = self.model(input_ids=input_ids, labels=input_ids, **kwargs).loss / accum
            with record_function("backward"):
                loss.backward()
            loss_sum += loss.detach()
        with record_function("clip_grad_norm"):
            grad_norm = clip_grad_norm_(self.params, self.config.training.max_norm)
        loss = self._global_mean(loss_sum)
        # one value on the host per step (a sync point): a NaN/Inf never reaches the weights
        if torch.isfinite(grad_norm + loss).item():
            self.optimizer.step()
            self.skipped_in_a_row = 0
        else:
            self._skip_or_stop(loss.item(), grad_norm.item())
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        return loss, grad_norm

    def _model_inputs(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, Any]]:
        """input_ids on the device and the packed-document kwargs of a varlen batch, copied without waiting
        for the GPU (the loader made them on the host: positions, and the bucketed longest piece, which the
        kernels take as a host int). Under torch.compile the document count is marked dynamic up front, so
        no step recompiles for a new count."""
        def to_device(t: torch.Tensor) -> torch.Tensor:
            return t.pin_memory().to(self.device, non_blocking=True) if self.device.type == "cuda" else t

        input_ids = to_device(batch["input_ids"])
        if "cu_seqlens" not in batch:
            return input_ids, {}
        cu_seqlens = to_device(batch["cu_seqlens"])
        if self.config.training.compile:
            torch._dynamo.mark_dynamic(cu_seqlens, 0)
        return input_ids, {"cu_seqlens": cu_seqlens, "position_ids": to_device(batch["position_ids"]),
                           "max_seqlen": int(batch["max_seqlen"])}

    def _skip_or_stop(self, loss: float, grad_norm: float) -> None:
        """A step whose loss or grad norm is NaN/Inf: skip it (skip_nan_inf, within the limit) or stop."""
        tr, step = self.config.training, self.state["step"] + 1
        values = f"loss {loss:.6g}, grad norm {grad_norm:.6g}"
        if not tr.skip_nan_inf:
            raise NonFinite(f"step {step}: {values} is not finite; stopped before the update, no checkpoint written "
                            f"(the saved ones are kept). Lower --optimizer.lr, or pass --training.skip_nan_inf to "
                            f"skip such steps.")
        self.state["skipped"] += 1
        self.skipped_in_a_row += 1
        logger.warning("step %d: %s: update skipped", step, values)
        if 0 < tr.skip_nan_inf_limit <= self.skipped_in_a_row:
            raise NonFinite(f"step {step}: {self.skipped_in_a_row} steps in a row skipped for a non-finite loss or "
                            f"grad norm ({values}); stopped, no checkpoint written (the saved ones are kept). Lower "
                            f"--optimizer.lr, or raise --training.skip_nan_inf_limit.")

    def _global_mean(self, value: torch.Tensor) -> torch.Tensor:
        """The mean of ``value`` over all ranks (a new tensor)."""
        value = value.detach().clone()
        if dist.is_initialized():
            dist.all_reduce(value, op=dist.ReduceOp.AVG)
        return value

    def _stop_requested(self, signals: StopSignals) -> bool:
        """Whether any rank got SIGTERM/SIGINT (one tiny all_reduce per step under torchrun)."""
        if not dist.is_initialized():
            return signals.received is not None
        flag = torch.tensor([float(signals.received is not None)], device=self.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())

    def _after_first_step(self) -> None:
        """Start-up is over (also for a resumed run): the tighter collective timeout; compile report."""
        if dist.is_initialized():
            timeout = datetime.timedelta(seconds=self.config.comm.train_timeout_seconds)
            set_pg_timeout(timeout)
        if self.config.training.compile and self.rank == 0:
            self._log_compile()

    def _stop(self, signals: StopSignals, step: int) -> Interrupted:
        """Write a checkpoint of ``step`` (when on) after a signal; the Interrupted error to raise."""
        name = signals.name or "a signal on another rank"
        if not self.config.checkpoint.enable_checkpoint:
            return Interrupted(f"stopped by {name} after step {step}; nothing saved (checkpointing is off: "
                               f"--checkpoint.enable_checkpoint keeps the progress of a run).")
        self.checkpointer.wait()  # an async save of this very step counts
        path = self.checkpointer.folder / f"step-{step}"
        if self.checkpointer.last_saved != step:
            path = self.checkpointer.save_full(step)
        rerun = ("rerun the same command without --checkpoint.load_step" if self.config.checkpoint.load_step != -1
                 else "rerun the same command")
        return Interrupted(f"stopped by {name} after step {step}; checkpoint {path} written, {rerun} to resume.")

    def train(self) -> None:
        """Run the steps left, then export ``hf/``; however the steps end, gc is back on and a pending
        async save (of an earlier, good step) is published."""
        cfg = self.config
        if cfg.checkpoint.create_seed_checkpoint:
            self.checkpointer.save(0, {"model": ModelState(self.model)})
            logger.info("wrote the seed checkpoint %s", self.checkpointer.folder / "step-0")
            return
        gc.disable()
        start, skipped = self.state["step"], self.state["skipped"]
        try:
            self._steps()
        finally:  # also when a step raises: Trainer runs in-process under `softpick experiment`
            gc.enable()
            self.checkpointer.wait()
        done = self.state["step"] - start
        if done > 0 and self.state["skipped"] - skipped == done:
            raise NonFinite(f"every one of the {done} steps of this run was skipped for a non-finite loss or grad "
                            f"norm: nothing was trained and no hf/ export written. Lower --optimizer.lr, or check "
                            f"the data and the model config.")
        self.export_hf(self.dump / "hf")  # every run ends with a model folder, checkpointing on or off

    def _steps(self) -> None:
        """The training loop; the first SIGTERM/SIGINT stops it after a whole step (see :meth:`_stop`)."""
        tr, cfg = self.config.training, self.config
        data = iter(self.loader)
        first_step = True
        with StopSignals() as signals, profiling(cfg.profiling, self.dump, rank=self.rank,
                                                 start_step=self.state["step"], device=self.device) as profiler:
            while self.state["step"] < tr.steps:
                step = self.state["step"] + 1
                if step % tr.gc_freq == 0:
                    gc.collect(1)
                batches = [next(data) for _ in range(tr.gradient_accumulation_steps)]
                lr = self.scheduler.get_last_lr()[0]
                for batch in batches:
                    self.throughput.add(batch)
                loss, grad_norm = self.train_step(batches)
                if first_step:
                    self._after_first_step()
                    first_step = False
                self.state["step"] = step
                self.state["tokens"] += sum(b["input_ids"].numel() for b in batches) * self.dims.dp_degree
                self.metrics.step()
                probed = self.live_analysis is not None and step % cfg.metrics.analysis_freq == 0
                if step % cfg.metrics.log_freq == 0 or step == tr.steps or probed:
                    self.metrics.log(step, {
                        "loss": loss.item(), "grad_norm": grad_norm.item(), "lr": lr,
                        **self.throughput.report(), "memory_gib": peak_memory_gib(self.device),
                        "tokens": self.state["tokens"], "skipped": self.state["skipped"],
                        **(self.live_analysis(self.model, self._autocast()) if probed else {}),
                    })
                saved = self.checkpointer.maybe_save(step, last=step == tr.steps)
                if saved is not None and cfg.checkpoint.convert_to_hf_on_save:
                    self.export_hf(self.dump / "hf-checkpoints" / saved.name)
                if profiler is not None:
                    profiler.step()
                if step < tr.steps and self._stop_requested(signals):
                    raise self._stop(signals, step)

    def export_hf(self, out_dir: Path) -> None:
        """Gather the full weights and write an HF model folder (rank 0 writes; beside and renamed).

        A failed write (a full disk, ...) stops every rank with one line (exit 4) that names where the
        weights are: the checkpoint of this step when there is one, else a rescue copy (:meth:`_rescue`).
        """
        state = full_model_state(self.model)

        def write() -> None:
            dtype = {"float16": torch.float16, "bfloat16": torch.bfloat16}.get(self.config.checkpoint.export_dtype,
                                                                            torch.float32)
            tr = self.config.training  # the context analyze evaluates at by default
            try:
                export_hf(self.model_config, state, out_dir, tokenizer=self.tokenizer, dtype=dtype)
                set_trained_context(out_dir, min(tr.context_len, tr.seq_len) if tr.varlen else tr.seq_len)
            except Exception as err:  # noqa: BLE001 - only disk errors are turned into one line
                os_error = export_os_error(err)
                if os_error is None:
                    raise
                raise self._export_failed(os_error, out_dir, state, dtype) from err

        self._on_rank0(write)
        if dist.is_initialized():
            dist.barrier()

    def _export_failed(self, error: OSError, out_dir: Path, state: dict[str, torch.Tensor],
                       dtype: torch.dtype) -> CheckpointWriteError:
        """The one-line error of a failed export; it names where this step's weights are kept."""
        step = self.state["step"]
        saved = step_dirs(self.checkpointer.folder).get(step)
        if saved is not None:
            kept = (f"the weights of step {step} are in checkpoint {saved} (rerun the same command once there is "
                    f"space, or softpick convert dcp-to-hf --path {self.dump})")
        else:
            kept = self._rescue(state, dtype, step)
        reason = {errno.ENOSPC: "no space left", errno.EDQUOT: "disk quota exceeded"}.get(error.errno,
                                                                                          error.strerror or str(error))
        return CheckpointWriteError(f"{reason} on {mount_point(out_dir)} while writing the HF export {out_dir} (an "
                                    f"earlier one there is left as it was); {kept}.")

    def _rescue(self, state: dict[str, torch.Tensor], dtype: torch.dtype, step: int) -> str:
        """Save the weights of a run whose export failed (no checkpoint of this step) as an HF folder in the
        system's temporary folder; the phrase naming it (or saying that this failed too)."""
        import tempfile

        rescue = Path(tempfile.gettempdir()) / f"softpick-rescue-{self.dump.resolve().name}-step-{step}-{os.getpid()}"
        try:
            export_hf(self.model_config, state, rescue, tokenizer=self.tokenizer, dtype=dtype)
        except Exception as err:  # noqa: BLE001 - the disk of the temporary folder may be full too
            return (f"the trained weights could not be rescued either ({export_os_error(err) or err}); they are "
                    f"lost: free space and train again with --checkpoint.enable_checkpoint")
        return (f"the trained weights of step {step} were saved to {rescue} instead (an HF model folder: move it "
                f"where it belongs)")

    def close(self) -> None:
        self.metrics.close()
        self._release()


def _exit_distributed(code: int) -> None:
    """End a torchrun worker: destroy the process group, flush, and ``os._exit``.

    With gloo, normal interpreter shutdown after ``destroy_process_group`` sometimes aborts with
    "terminate called without an active exception" although all work is done; leaving through
    ``os._exit`` skips the destructors that cause it.
    """
    dist.destroy_process_group()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def main(argv: list[str] | None = None) -> int:
    """``softpick train [--section.key value ...]``; returns 0, or the exit code of a user error or an
    expected stop (stops.py) after one line on stderr from rank 0 (``--debug``: the traceback)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = debug_enabled(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        code = _run([a for a in argv if a != "--debug"])
    except UserError as err:
        if debug:
            raise
        line = f"softpick train: {one_line(err)}"
        if int(os.environ.get("RANK", "0")) == 0:
            print(line, file=sys.stderr)
        code = err.exit_code
        record_for_launcher(line, code)
    except KeyboardInterrupt:  # Ctrl-C before the loop took over SIGINT (start-up) or at the export
        if debug:
            raise
        line = ("softpick train: interrupted (SIGINT) outside the training steps (start-up or the final export); "
                "nothing is left half-written and the files saved before are kept: rerun the same command.")
        if int(os.environ.get("RANK", "0")) == 0:
            print(line, file=sys.stderr)
        code = 130
        record_for_launcher(line, code)
    if dist.is_initialized():
        _exit_distributed(code)
    return code


LOADABLE = ("model", "optimizer", "lr_scheduler", "train_state", "dataloader", "rng")
"""The entries of a full checkpoint (``checkpoint.exclude_from_loading`` names some of them)."""


def check_dump_folder(config: JobConfig) -> None:
    """ConfigError (one line) when this run would silently start over on a dump folder that holds a run:
    checkpoints while checkpointing is off, or a finished run's ``hf/`` without a checkpoint to resume
    (its export and metrics would be replaced and mixed). ``checkpoint.load_step`` needs checkpointing."""
    ck, dump = config.checkpoint, config.job.dump_folder
    if not dump.strip():
        raise ConfigError("job.dump_folder is empty; give the folder for the run's checkpoints, metrics and hf/ "
                          "export (e.g. --job.dump_folder outputs/run1).")
    if ck.load_step != -1 and not ck.enable_checkpoint:
        raise ConfigError(f"checkpoint.load_step {ck.load_step} needs --checkpoint.enable_checkpoint (with "
                          f"checkpointing off nothing is loaded and the run would start from scratch).")
    if ck.load_step < -1:
        raise ConfigError(f"checkpoint.load_step must be a step >= 0, or -1 for the latest; got {ck.load_step}.")
    if not ck.folder.strip():
        raise ConfigError("checkpoint.folder is empty; give a folder name (default: checkpoint).")
    unknown = [e for e in ck.exclude_from_loading if e not in LOADABLE]
    if unknown:
        raise ConfigError(f"checkpoint.exclude_from_loading: unknown entry {unknown[0]!r}; use any of "
                          f"{', '.join(LOADABLE)}.")
    dump = Path(dump)
    saved = sorted(step_folders(dump / ck.folder))
    if saved and ck.create_seed_checkpoint:
        raise ConfigError(f"checkpoint.create_seed_checkpoint: {dump / ck.folder} already holds checkpoints "
                          f"(steps {', '.join(map(str, saved))}); give another --job.dump_folder.")
    if saved and not ck.enable_checkpoint:
        raise ConfigError(f"job.dump_folder {str(dump)!r} holds checkpoints (steps {', '.join(map(str, saved))}) but "
                          f"checkpointing is off: this run would start from scratch and replace its hf/ and mix its "
                          f"metrics; pass --checkpoint.enable_checkpoint to resume it, or give another "
                          f"--job.dump_folder.")
    if not saved and (dump / "hf").exists() and not ck.create_seed_checkpoint:
        raise ConfigError(f"job.dump_folder {str(dump)!r} holds a finished run ({dump / 'hf'}) and no checkpoint to "
                          f"resume: this run would start from scratch and replace it; give another "
                          f"--job.dump_folder (or move {dump / 'hf'} away).")


def _run(argv: list[str]) -> int:
    config = parse_args(argv)
    if config.job.print_args and int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps(config.to_dict(), indent=2))
    check_dump_folder(config)
    trainer = Trainer(config)
    try:
        trainer.train()
    finally:
        trainer.close()
    return 0

if __name__ == "__main__":  # under torchrun (train.sh): @record puts a bug's traceback in torchrun's summary
    from torch.distributed.elastic.multiprocessing.errors import record

    sys.exit(record(main)())
