"""Parallel degrees, the device mesh, and how the model is wrapped (the order torchtitan uses).

:class:`ParallelDims` checks ``data_parallel_replicate_degree x data_parallel_shard_degree x
tensor_parallel_degree == WORLD_SIZE`` and builds one :class:`DeviceMesh` with the dims that are
enabled, named ``dp_replicate``, ``dp_shard``, ``tp`` (rank-major in that order). Other code asks
``dims.fsdp_enabled`` and friends instead of redoing the arithmetic.

:func:`parallelize` applies, in order: tensor parallel (DTensor ``parallelize_module``), activation
checkpointing, per-block ``torch.compile`` (after AC wrapping, so the compiled region includes the
checkpointed block, and before FSDP, so FSDP's hooks stay outside the graph), then FSDP2
``fully_shard`` (HSDP when the replicate degree is also > 1) or DDP (composable ``replicate``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh

from softpick.train.config import ActivationCheckpoint, ConfigError, JobConfig

TORCH_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class ParallelDims:
    """Degrees of each parallelism; ``dp_shard = -1`` takes the ranks the others leave."""

    dp_replicate: int
    dp_shard: int
    tp: int
    world_size: int

    def __post_init__(self) -> None:
        for name, value in (("data_parallel_replicate_degree", self.dp_replicate),
                            ("tensor_parallel_degree", self.tp)):
            if value < 1:
                raise ConfigError(f"training.{name} must be >= 1, got {value}.")
        if self.dp_shard == -1:
            rest, left = divmod(self.world_size, self.dp_replicate * self.tp)
            if left:
                raise ConfigError(self._describe("do not divide"))
            self.dp_shard = rest
        if self.dp_shard < 1:
            raise ConfigError(f"training.data_parallel_shard_degree must be -1 or >= 1, got {self.dp_shard}.")
        if self.dp_replicate * self.dp_shard * self.tp != self.world_size:
            raise ConfigError(self._describe("do not multiply to"))

    def _describe(self, verb: str) -> str:
        return (
            f"parallel degrees data_parallel_replicate_degree={self.dp_replicate} x "
            f"data_parallel_shard_degree={self.dp_shard} x tensor_parallel_degree={self.tp} "
            f"{verb} WORLD_SIZE={self.world_size}."
        )

    @property
    def dp_enabled(self) -> bool:
        return self.dp_replicate * self.dp_shard > 1

    @property
    def fsdp_enabled(self) -> bool:
        return self.dp_shard > 1

    @property
    def ddp_enabled(self) -> bool:
        """Pure replication (DDP); with dp_shard > 1 replication is part of HSDP instead."""
        return self.dp_replicate > 1 and self.dp_shard == 1

    @property
    def tp_enabled(self) -> bool:
        return self.tp > 1

    @property
    def dp_degree(self) -> int:
        """Number of data-parallel ranks (distinct data streams)."""
        return self.dp_replicate * self.dp_shard

    def dp_rank(self, rank: int) -> int:
        """Data-parallel index of global ``rank`` (TP ranks of one group share data)."""
        return rank // self.tp

    def build_mesh(self, device_type: str) -> DeviceMesh | None:
        """One mesh over all ranks with the enabled dims; None for a single process."""
        dims = [(n, d) for n, d in (("dp_replicate", self.dp_replicate), ("dp_shard", self.dp_shard),
                                    ("tp", self.tp)) if d > 1]
        if not dims:
            return None
        names, shape = zip(*dims)
        return init_device_mesh(device_type, tuple(shape), mesh_dim_names=tuple(names))


def unwrap(module: nn.Module) -> nn.Module:
    """The block inside activation-checkpoint and torch.compile wrappers."""
    for attr in ("_checkpoint_wrapped_module", "_orig_mod"):
        if hasattr(module, attr):
            return unwrap(getattr(module, attr))
    return module


def transformer_blocks(model: nn.Module) -> tuple[nn.ModuleList, list[int]]:
    """The ModuleList holding the decoder blocks (classes in ``model._no_split_modules``), wrapped or not."""
    names = set(getattr(model, "_no_split_modules", None) or [])
    for module in model.modules():
        if isinstance(module, nn.ModuleList) and len(module) and type(unwrap(module[0])).__name__ in names:
            return module, list(range(len(module)))
    raise ValueError(
        f"cannot find the transformer blocks of {type(model).__name__}: no ModuleList of {sorted(names)}."
    )


PER_HEAD_PARAMETERS = ("sinks", "ssmax_scale")
"""Attention parameters with one entry per query head, sharded with the heads under tensor parallel."""


def apply_tp(model: nn.Module, tp_mesh: DeviceMesh) -> None:
    """Megatron-style TP inside each block: q/k/v, gate/up and the output gate column-wise, o and down row-wise.

    Each rank keeps num_heads / tp query heads and num_key_value_heads / tp K/V heads (so GQA groups
    stay whole) and their per-head parameters; embeddings, norms and the LM head stay replicated.
    """
    from torch.distributed.tensor import Shard, distribute_tensor
    from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, parallelize_module

    blocks, _ = transformer_blocks(model)
    tp = tp_mesh.size()
    plan_names = {"q_proj": ColwiseParallel(), "k_proj": ColwiseParallel(), "v_proj": ColwiseParallel(),
                  "o_proj": RowwiseParallel(), "gate_proj": ColwiseParallel(), "up_proj": ColwiseParallel(),
                  "down_proj": RowwiseParallel(), "g_proj": ColwiseParallel()}
    for block in blocks:
        plan = {}
        for name, module in block.named_modules():
            leaf = name.rsplit(".", 1)[-1]
            if leaf in plan_names and isinstance(module, nn.Linear):
                plan[name] = plan_names[leaf]
            for attr in ("num_heads", "num_key_value_heads"):
                heads = getattr(module, attr, None)
                if isinstance(heads, int) and not isinstance(module, nn.Linear):
                    if heads % tp:
                        raise ConfigError(f"{attr}={heads} is not divisible by tensor_parallel_degree={tp}.")
                    setattr(module, attr, heads // tp)
            for attr in PER_HEAD_PARAMETERS:  # sinks, SSMax scales: each rank keeps its heads' entries
                param = getattr(module, attr, None)
                if isinstance(param, nn.Parameter):
                    module.register_parameter(attr, nn.Parameter(distribute_tensor(param.data, tp_mesh, [Shard(0)])))
        if not plan:
            raise ValueError(f"no q/k/v/o/gate/up/down projections to shard in {type(block).__name__}.")
        parallelize_module(block, tp_mesh, plan)


def saved_ops() -> set:
    """The ops whose outputs selective AC by op keeps: matmuls, SDPA, and our fused attention forwards
    (``softpick::attention_fwd``, Triton; ``softpick::cute_attention_fwd``, Hopper): without them the
    attention kernel reruns in the backward."""
    import softpick.ops.attention.cute.launch  # noqa: F401  (registers the ops; imports no DSL)
    import softpick.ops.attention.triton.training  # noqa: F401

    return {torch.ops.aten.mm.default, torch.ops.aten.addmm.default, torch.ops.aten.bmm.default,
            torch.ops.aten._scaled_dot_product_flash_attention.default,
            torch.ops.aten._scaled_dot_product_efficient_attention.default,
            torch.ops.softpick.attention_fwd.default, torch.ops.softpick.cute_attention_fwd.default}


def _selective_op_context():
    """Selective AC by op: keep matmul and attention outputs, recompute the cheap elementwise ops."""
    from torch.utils.checkpoint import CheckpointPolicy, create_selective_checkpoint_contexts

    save = saved_ops()

    def policy(ctx, func, *args, **kwargs):
        return CheckpointPolicy.MUST_SAVE if func in save else CheckpointPolicy.PREFER_RECOMPUTE

    return create_selective_checkpoint_contexts(policy)


def apply_ac(model: nn.Module, cfg: ActivationCheckpoint) -> None:
    """Wrap blocks in activation checkpointing: all (full), every N-th (selective N) or per op."""
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper

    blocks, indices = transformer_blocks(model)
    for i in indices:
        if cfg.mode == "full":
            blocks[i] = checkpoint_wrapper(blocks[i], preserve_rng_state=False)
        elif cfg.selective_ac_option == "op":
            blocks[i] = checkpoint_wrapper(blocks[i], preserve_rng_state=False, context_fn=_selective_op_context)
        elif i % int(cfg.selective_ac_option) == 0:
            blocks[i] = checkpoint_wrapper(blocks[i], preserve_rng_state=False)


def apply_compile(model: nn.Module) -> None:
    """``torch.compile`` each block and put the compiled module in its place.

    FSDP is applied to the compiled wrapper afterwards, so its hooks run outside the compiled graph.
    The wrapper adds ``_orig_mod`` to parameter names; DCP's state-dict helpers remove it.
    """
    blocks, indices = transformer_blocks(model)
    for i in indices:
        blocks[i] = torch.compile(blocks[i])


def apply_fsdp(model: nn.Module, mesh: DeviceMesh, *, param_dtype: torch.dtype, reduce_dtype: torch.dtype,
               cpu_offload: bool, reshard_after_forward: str) -> None:
    """FSDP2 ``fully_shard`` per block, then the root (HSDP when ``mesh`` is 2-D)."""
    from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, OffloadPolicy, fully_shard

    kwargs = {
        "mesh": mesh,
        "mp_policy": MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=reduce_dtype),
        "offload_policy": CPUOffloadPolicy() if cpu_offload else OffloadPolicy(),
    }
    blocks, indices = transformer_blocks(model)
    for i in indices:
        # "default": keep the last block unsharded after forward, since backward needs it at once
        reshard = {"always": True, "never": False}.get(reshard_after_forward, i < len(indices) - 1)
        fully_shard(blocks[i], reshard_after_forward=reshard, **kwargs)
    fully_shard(model, reshard_after_forward=reshard_after_forward == "always", **kwargs)


def apply_float8(model: nn.Module, config: JobConfig, device: torch.device) -> None:
    """Swap nn.Linear (except the LM head) for torchao Float8Linear (CUDA, compute capability >= 8.9)."""
    if device.type != "cuda" or torch.cuda.get_device_capability(device) < (8, 9):
        raise ConfigError("float8 training needs a CUDA GPU with compute capability >= 8.9 (Ada, Hopper or newer).")
    try:
        from torchao.float8 import Float8LinearConfig, convert_to_float8_training
    except ImportError:
        raise ConfigError("float8 needs torchao: pip install torchao (or drop --float8.enable_float8_linear).") from None
    cfg = Float8LinearConfig(enable_fsdp_float8_all_gather=config.float8.enable_fsdp_float8_all_gather)
    convert_to_float8_training(model, config=cfg, module_filter_fn=lambda mod, fqn: "lm_head" not in fqn)


def parallelize(model: nn.Module, dims: ParallelDims, mesh: DeviceMesh | None, config: JobConfig,
                device: torch.device) -> nn.Module:
    """Apply float8, TP, AC, compile and FSDP/DDP to ``model`` (in that order) on ``device``."""
    if config.float8.enable_float8_linear or "float8" in config.model.converters:
        apply_float8(model, config, device)
    if dims.tp_enabled:
        apply_tp(model, mesh["tp"])
    if config.activation_checkpoint.mode != "none":
        apply_ac(model, config.activation_checkpoint)
    if config.training.compile:
        apply_compile(model)
    if config.training.enable_cpu_offload and device.type != "cuda":
        raise ConfigError("training.enable_cpu_offload moves FSDP state from GPUs to the host; it needs CUDA.")
    if dims.fsdp_enabled:
        dp_mesh = mesh["dp_replicate", "dp_shard"] if dims.dp_replicate > 1 else mesh["dp_shard"]
        cuda = device.type == "cuda"
        apply_fsdp(
            model, dp_mesh,
            param_dtype=TORCH_DTYPES[config.training.mixed_precision_param] if cuda else torch.float32,
            reduce_dtype=TORCH_DTYPES[config.training.mixed_precision_reduce],
            cpu_offload=config.training.enable_cpu_offload,
            reshard_after_forward=config.training.fsdp_reshard_after_forward,
        )
    elif config.training.enable_cpu_offload:
        raise ConfigError("training.enable_cpu_offload needs FSDP (data_parallel_shard_degree > 1).")
    if dims.ddp_enabled:
        from torch.distributed._composable.replicate import replicate

        replicate(model, device_mesh=mesh["dp_replicate"], bucket_cap_mb=100)
    return model
