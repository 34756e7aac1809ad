"""Job configuration with flame's flag names: ``--section.key value`` over a toml file over defaults.

Precedence: command line > ``--job.config_file`` toml > the defaults below. Every field carries its
help text, and ``softpick train -h`` prints all of them.

Booleans follow torchtitan: ``--training.compile`` alone sets True (like ``store_true``). To switch
off a flag that a toml file turned on, give a value: ``--training.compile false`` (true/false, 1/0,
yes/no). List fields take comma-separated strings (``--model.converters float8``) or toml arrays.

Flags that flame has but this trainer does not implement (pipeline and context parallel, compiled
autograd, ...) are declared in one table, :data:`FLAME_ONLY`: they are accepted, and setting most of
them to anything but their default fails at start-up.
Unknown keys, bad types and inconsistent values raise :class:`ConfigError` with one line naming them.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from softpick.errors import UserError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib


class ConfigError(UserError, ValueError):
    """A bad flag, toml key or value; the message is one line that names it (exit code 2)."""


def opt(default: Any, help: str, choices: tuple | None = None) -> Any:
    """A config field with its help text (shown by ``-h``) and optional allowed values."""
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata={"help": help, "choices": choices})
    return field(default=default, metadata={"help": help, "choices": choices})


@dataclass
class Job:
    config_file: str | None = opt(None, "Job config file (toml) giving defaults for every section")
    dump_folder: str = opt("./outputs", "Folder to dump job outputs (checkpoints, metrics, hf export)")
    description: str = opt("default job", "Description of the job")
    print_args: bool = opt(False, "Print the args to terminal")


@dataclass
class Model:
    config: str | None = opt(
        None,
        "Path to the model config: a json file or a folder with config.json (ours, e.g. "
        "configs/softpick_transformer_340M.json, or any HF causal-LM config). Required",
    )
    tokenizer_path: str | None = opt(
        None, "Tokenizer path (an HF tokenizer folder or hub id). Default: the embedded tokenizer (offline); "
        "'none' overrides a toml's hub name (flame's fla.toml) to train offline"
    )
    name: str = opt("fla", "Which model to train (kept for flame compatibility; the config decides)")
    converters: list[str] = opt([], "Comma separated list of converters to apply to the model: float8")
    print_after_conversion: bool = opt(False, "Print the model after all converters and parallelisms")


@dataclass
class Profiling:
    enable_profiling: bool = opt(False, "Whether to enable pytorch profiler")
    save_traces_folder: str = opt("profile_traces", "Trace files location, under job.dump_folder")
    profile_freq: int = opt(10, "How often to collect profiler traces, in iterations")
    enable_memory_snapshot: bool = opt(False, "Whether to dump a CUDA memory snapshot")
    save_memory_snapshot_folder: str = opt("memory_snapshot", "Memory snapshot files location")


@dataclass
class Optimizer:
    name: str = opt("AdamW", "Optimizer to use", ("AdamW", "Adam"))
    lr: float = opt(8e-4, "Peak learning rate")
    eps: float = opt(1e-8, "Epsilon value for the optimizer")
    beta1: float = opt(0.9, "AdamW beta1")
    beta2: float = opt(0.95, "AdamW beta2")
    weight_decay: float = opt(0.1, "Weight decay (decoupled, AdamW)")
    implementation: str = opt(
        "fused",
        "fused (CUDA only; falls back to foreach on CPU), foreach, or for-loop",
        ("fused", "foreach", "for-loop"),
    )
    fused: bool | None = opt(None, "Deprecated alias: true means implementation=fused, false foreach")
    scheduler: str | None = opt(
        None, "Deprecated alias of lr_scheduler.decay_type (wsd needs lr_scheduler.decay_ratio)",
        ("wsd", "cosine", "linear"),
    )
    min_lr_ratio: float | None = opt(None, "Deprecated alias of lr_scheduler.lr_min")


@dataclass
class LRScheduler:
    warmup_steps: int = opt(200, "Steps of linear warmup from lr/(warmup_steps+1) to lr")
    decay_ratio: float | None = opt(
        None,
        "Share of the steps spent decaying; the lr stays at its peak between warmup and decay "
        "(Warmup-Stable-Decay, arXiv 2404.06395). None: decay right after warmup",
    )
    decay_type: str = opt("linear", "Shape of the decay to lr_min", ("linear", "sqrt", "cosine"))
    lr_min: float = opt(0.0, "Final learning rate as a ratio of optimizer.lr (0.1 means lr/10)")


@dataclass
class Training:
    batch_size: int = opt(8, "Batch size per data-parallel rank (must be 1 with --training.varlen)")
    seq_len: int = opt(2048, "Tokens per row; documents are concatenated and cut into windows")
    context_len: int = opt(2048, "Max length of one document piece in varlen mode; = seq_len otherwise")
    varlen: bool = opt(False, "Pack documents into one row with cu_seqlens (softpick models only)")
    warmup_steps: int | None = opt(None, "Deprecated alias of lr_scheduler.warmup_steps")
    gradient_accumulation_steps: int = opt(1, "Micro-batches accumulated per optimizer step")
    steps: int = opt(10000, "How many train steps (optimizer updates) to run")
    max_norm: float = opt(1.0, "Max norm for gradient clipping (<= 0 disables clipping)")
    skip_nan_inf: bool = opt(
        False, "Skip the update when the loss or grad norm is NaN/Inf (counted); off: such a step stops the run"
    )
    skip_nan_inf_limit: int = opt(
        10, "With skip_nan_inf: stop the run after this many consecutive skipped steps (0: no limit)"
    )
    dataset: str | None = opt(
        None, "Dataset(s), comma separated: hub names, local folders or data-file types. Default: the embedded "
        "corpus (offline); 'none' overrides a toml's hub name to train offline"
    )
    dataset_name: str | None = opt(None, "Dataset config name(s), comma separated")
    dataset_split: str | None = opt(None, "Dataset split(s), comma separated (default train)")
    data_dir: str | None = opt(None, "Data dir(s), comma separated")
    data_files: str | None = opt(None, "Data file(s) or globs, comma separated (one entry per dataset)")
    data_probs: str | None = opt(None, "Sampling probabilities per dataset, comma separated, sum 1")
    streaming: bool = opt(False, "Load datasets in streaming mode (for huge datasets)")
    num_workers: int = opt(0, "Data loader worker processes; 0 loads in the main process")
    prefetch_factor: int = opt(2, "Batches loaded in advance by each worker")
    pin_memory: bool = opt(False, "Pin host memory of batches")
    data_parallel_replicate_degree: int = opt(
        1, "Ranks over which weights are replicated; with shard degree > 1 this is HSDP, else DDP. 1: off"
    )
    data_parallel_shard_degree: int = opt(
        -1, "Ranks over which weights are sharded (FSDP2). -1: the ranks left over after the other degrees"
    )
    enable_cpu_offload: bool = opt(False, "Offload FSDP parameters, gradients and optimizer state to CPU")
    tensor_parallel_degree: int = opt(1, "Tensor parallelism degree. 1 means disabled")
    fsdp_reshard_after_forward: str = opt(
        "default", "FSDP reshard_after_forward policy", ("default", "always", "never")
    )
    mixed_precision_param: str = opt(
        "bfloat16", "Parameter dtype in forward/backward on CUDA (FSDP policy or autocast)",
        ("bfloat16", "float32"),
    )
    mixed_precision_reduce: str = opt("float32", "Gradient reduction dtype under FSDP", ("float32",))
    compile: bool = opt(False, "torch.compile each transformer block (and the loss's per-chunk softmax)")
    fused_loss: bool = opt(
        True, "Softpick models: loss from the LM head in token chunks, never the [tokens, vocab] logits "
        "(softpick.ops.cross_entropy); false: the plain LM head + cross-entropy"
    )
    gc_freq: int = opt(50, "Python garbage collection interval, in steps")
    seed: int | None = opt(None, "Base RNG seed for the init and the data order (None: 42)")
    deterministic: bool = opt(False, "Use deterministic algorithms wherever possible, may be slower")


@dataclass
class Metrics:
    log_freq: int = opt(10, "How often to log metrics, in steps")
    enable_tensorboard: bool = opt(False, "Whether to log metrics to TensorBoard")
    progress_bar: bool = opt(True, "Show a tqdm progress bar on rank 0 (hidden anyway when stderr is not a terminal)")
    save_tb_folder: str = opt("tb", "Folder for TensorBoard files, under job.dump_folder")
    rank_0_only: bool = opt(True, "Log only on rank 0 (else every rank writes its own TensorBoard folder)")
    enable_wandb: bool = opt(False, "Log to Weights & Biases (WANDB_MODE=offline works without network)")
    peak_flops: float | None = opt(
        None, "Peak bf16 dense FLOP/s of one device for MFU; default from a table by GPU name"
    )
    analysis_freq: int = opt(
        0, "Every N steps log sink rate, first-token mass, sparsity, max |activation| and kurtosis per layer "
        "on a held-out batch (as softpick analyze); 0 = off"
    )
    analysis_samples: int = opt(8, "Documents in the held-out batch of metrics.analysis_freq")


@dataclass
class Checkpoint:
    enable_checkpoint: bool = opt(False, "Whether to save (and resume from) checkpoints")
    folder: str = opt("checkpoint", "Checkpoints go to {job.dump_folder}/{checkpoint.folder}/step-N")
    interval_type: str = opt(
        "steps", "Unit of checkpoint.interval: steps (flame also spells it step) or seconds of wall time",
        ("steps", "step", "seconds"),
    )
    interval: int = opt(500, "Checkpointing interval, in steps or seconds (see interval_type)")
    model_weights_only: bool = opt(
        False, "At the end save model weights only (in export_dtype); during training full checkpoints"
    )
    export_dtype: str = opt(
        "float32", "Dtype of the final weights-only checkpoint", ("float16", "bfloat16", "float32")
    )
    create_seed_checkpoint: bool = opt(
        False, "Save the initial weights as step-0 (weights only) and exit; needs one process"
    )
    async_mode: str = opt(
        "disabled", "disabled | async (dcp.async_save) | async_with_pinned_mem (treated as async)",
        ("disabled", "async", "async_with_pinned_mem"),
    )
    keep_latest_k: int = opt(0, "Keep only the latest k checkpoints; 0 keeps all")
    load_step: int = opt(-1, "Load the checkpoint at this step; -1 loads the latest if any")
    exclude_from_loading: list[str] = opt(
        [], "Entries not loaded on resume, comma separated: model, optimizer, lr_scheduler, train_state, "
        "dataloader, rng"
    )
    convert_to_hf_on_save: bool = opt(False, "Also write an HF export at every save")


@dataclass
class ActivationCheckpoint:
    mode: str = opt("none", "Activation checkpointing: none, selective or full", ("none", "selective", "full"))
    selective_ac_option: str = opt(
        "2", "With mode selective: an integer N checkpoints every N-th block; 'op' saves matmul outputs"
    )


@dataclass
class Float8:
    enable_float8_linear: bool = opt(False, "Swap nn.Linear for torchao Float8Linear (needs torchao)")
    enable_fsdp_float8_all_gather: bool = opt(False, "float8 all-gather in FSDP (needs torchao)")
    scaling_type_input: str = opt("dynamic", "float8 scaling for input (delayed: not supported)", ("dynamic", "delayed"))
    scaling_type_weight: str = opt("dynamic", "float8 scaling for weight (delayed: not supported)", ("dynamic", "delayed"))
    scaling_type_grad_output: str = opt(
        "dynamic", "float8 scaling for grad output (delayed: not supported)", ("dynamic", "delayed")
    )


@dataclass
class Comm:
    init_timeout_seconds: int = opt(300, "Timeout for collectives during initialization, seconds")
    train_timeout_seconds: int = opt(100, "Timeout for collectives after the first step, seconds")
    trace_buf_size: int = opt(20000, "Flight recorder ring buffer size (NCCL); 0 disables")


@dataclass(frozen=True)
class FlameOnly:
    """A flame flag this trainer accepts but does not implement (its value is kept in
    ``JobConfig.flame_only`` and read by nothing)."""

    default: Any
    kind: Any
    help: str
    any_value: bool = False
    """True: any value is accepted (it changes nothing here); False: anything but the default fails."""
    choices: tuple | None = None


FLAME_ONLY: dict[str, FlameOnly] = {
    "job.use_for_integration_test": FlameOnly(False, bool, "Add this config to flame's integration tests", True),
    "model.norm_type": FlameOnly(None, str | None, "The model config decides the norm; must stay unset"),
    "optimizer.early_step_in_backward": FlameOnly(False, bool, "Apply the optimizer in the backward"),
    "training.persistent_workers": FlameOnly(False, bool, "Keep workers alive between epochs (they live for the run)", True),
    "training.disable_loss_parallel": FlameOnly(False, bool, "Loss parallel is not used", True),
    "metrics.disable_color_printing": FlameOnly(False, bool, "Logs are not coloured", True),
    "checkpoint.hf_upload_enabled": FlameOnly(False, bool, "Upload checkpoints to the HF hub (no network)"),
    "checkpoint.hf_repo_base_name": FlameOnly(None, str | None, "HF hub repo for uploads", True),
    "checkpoint.hf_upload_format": FlameOnly("dcp", str, "Upload format", True, ("dcp", "hf")),
    "float8.precompute_float8_dynamic_scale_for_fsdp": FlameOnly(False, bool, "Precompute float8 scales for FSDP"),
    "memory_estimation.enabled": FlameOnly(False, bool, "Estimate memory usage for FSDP"),
    "memory_estimation.disable_fake_mode": FlameOnly(False, bool, "Estimate memory without FakeTensorMode"),
    "experimental.enable_async_tensor_parallel": FlameOnly(False, bool, "Async tensor parallel"),
    "experimental.pipeline_parallel_degree": FlameOnly(1, int, "Pipeline parallelism degree (must be 1)"),
    "experimental.pipeline_parallel_split_points": FlameOnly([], list[str], "Pipeline split points"),
    "experimental.pipeline_parallel_schedule": FlameOnly("1F1B", str, "Pipeline schedule", True),
    "experimental.pipeline_parallel_schedule_csv": FlameOnly("", str, "Pipeline schedule csv"),
    "experimental.pipeline_parallel_microbatches": FlameOnly(None, int | None, "Pipeline microbatches"),
    "experimental.enable_compiled_autograd": FlameOnly(False, bool, "Compiled autograd"),
    "experimental.context_parallel_degree": FlameOnly(1, int, "Context parallelism degree (must be 1)"),
    "experimental.context_parallel_rotate_method": FlameOnly("allgather", str, "Context parallel kv exchange", True),
    "experimental.custom_model_path": FlameOnly("", str, "Import path of a custom model"),
}
"""Flame's flags that are accepted for compatibility and implemented by nothing: "section.key" ->
what it means in flame. Those with ``any_value`` are accepted with any value; the others only at
their default, since a run that set them would not be the run asked for."""


@dataclass
class JobConfig:
    job: Job = field(default_factory=Job)
    model: Model = field(default_factory=Model)
    profiling: Profiling = field(default_factory=Profiling)
    optimizer: Optimizer = field(default_factory=Optimizer)
    lr_scheduler: LRScheduler = field(default_factory=LRScheduler)
    training: Training = field(default_factory=Training)
    metrics: Metrics = field(default_factory=Metrics)
    checkpoint: Checkpoint = field(default_factory=Checkpoint)
    activation_checkpoint: ActivationCheckpoint = field(default_factory=ActivationCheckpoint)
    float8: Float8 = field(default_factory=Float8)
    comm: Comm = field(default_factory=Comm)
    flame_only: dict[str, Any] = field(default_factory=dict)
    """Values given for :data:`FLAME_ONLY` flags ("section.key" -> value); nothing reads them."""

    def to_dict(self) -> dict[str, dict[str, Any]]:
        return dataclasses.asdict(self)


_HINTS = typing.get_type_hints(JobConfig)


def parse_bool(text: str) -> bool:
    """``true/false``, ``1/0``, ``yes/no``, ``on/off`` (any case) to bool."""
    low = str(text).strip().lower()
    if low in ("true", "1", "yes", "on"):
        return True
    if low in ("false", "0", "no", "off"):
        return False
    raise ValueError(f"expected true or false, got {text!r}")


def _convert(key: str, kind: Any, value: Any, choices: tuple | None) -> Any:
    """Check and convert one value (from toml or the command line) to the field's type."""
    args = [a for a in typing.get_args(kind) if a is not type(None)]
    optional = type(None) in typing.get_args(kind)
    base = args[0] if optional else kind
    try:
        if value is None or (optional and isinstance(value, str) and value.lower() in ("none", "null")):
            if not optional:
                raise ValueError("None is not allowed")
            return None
        if base is bool:
            out = value if isinstance(value, bool) else parse_bool(value)
        elif base is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError(f"expected an integer, got {value!r}")
            out = int(value)
        elif base is float:
            if isinstance(value, bool):
                raise ValueError(f"expected a number, got {value!r}")
            out = float(value)
        elif typing.get_origin(base) is list:
            out = [s.strip() for s in value.split(",") if s.strip()] if isinstance(value, str) else list(value)
        else:
            if not isinstance(value, (str, int, float)) or isinstance(value, bool):
                raise ValueError(f"expected a string, got {value!r}")
            out = str(value)
    except ValueError as err:
        raise ConfigError(f"bad value for {key}: {err}.") from None
    if choices is not None and out not in choices:
        raise ConfigError(f"bad value for {key}: {out!r} is not one of {', '.join(map(str, choices))}.")
    return out


def _all_fields() -> dict[str, tuple[type | None, dataclasses.Field, Any]]:
    """``"section.key" -> (section class, field, type)`` for every option, the :data:`FLAME_ONLY`
    ones included (section class None, a field made from their table entry)."""
    out = {}
    for sec_name, sec_cls in _HINTS.items():
        if not dataclasses.is_dataclass(sec_cls):
            continue  # flame_only
        hints = typing.get_type_hints(sec_cls)
        for f in dataclasses.fields(sec_cls):
            out[f"{sec_name}.{f.name}"] = (sec_cls, f, hints[f.name])
    for key, flag in FLAME_ONLY.items():
        help_ = f"Flame compatibility, not implemented: {flag.help}" + ("" if flag.any_value else "; only the default")
        out[key] = (None, opt(flag.default, help_, flag.choices), flag.kind)
    return out


def build_parser() -> argparse.ArgumentParser:
    """The argparse parser: one group per section, every option with its help; defaults suppressed."""
    parser = _Parser(
        prog="softpick train",
        description="Train a causal LM with flame-compatible flags. Precedence: command line > "
        "--job.config_file toml > defaults. Booleans: --flag sets true, --flag false sets false. Relative "
        "input paths in a toml (model.config, model.tokenizer_path, training.dataset, data_files, data_dir) "
        "are read beside the toml when they exist there, else from the current folder. Offline with a toml "
        "that names hub models or datasets (flame's fla.toml): add --model.tokenizer_path none "
        "--training.dataset none (the embedded tokenizer and corpus) or give local ones.",
        argument_default=argparse.SUPPRESS,
        allow_abbrev=False,
    )
    groups: dict[str, argparse._ArgumentGroup] = {}
    for key, (_, f, kind) in _all_fields().items():
        section = key.split(".")[0]
        group = groups.setdefault(section, parser.add_argument_group(section))
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        help_ = f"{f.metadata['help']} (default: {default!r})"
        choices = f.metadata["choices"]
        if kind is bool or typing.get_args(kind)[:1] == (bool,):
            group.add_argument(f"--{key}", nargs="?", const="true", metavar="true|false", help=help_)
        else:
            metavar = "{" + ",".join(map(str, choices)) + "}" if choices else key.split(".")[1].upper()
            group.add_argument(f"--{key}", metavar=metavar, help=help_)
    return parser


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> typing.NoReturn:
        raise ConfigError(f"{message} (see softpick train -h).")


def load_toml(path: str) -> dict[str, dict[str, Any]]:
    """Read a job toml file; ConfigError when it cannot be read."""
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"job.config_file {path!r} does not exist.") from None
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"job.config_file {path!r} is not valid toml: {err}.") from None


def parse_args(argv: list[str] | None = None) -> JobConfig:
    """Build a validated :class:`JobConfig` from ``argv`` (``--section.key value`` pairs)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    cli = vars(build_parser().parse_args(argv))
    config_file = cli.get("job.config_file")
    values = _flatten(load_toml(config_file), config_file) if config_file else {}
    if config_file:
        values = resolve_toml_paths(values, Path(config_file).parent)
    values.update(cli)
    return _build(values)


TOML_INPUT_PATHS = ("model.config", "model.tokenizer_path", "training.dataset", "training.data_files",
                    "training.data_dir")
"""Keys of a job toml that name inputs (comma-separated for the training ones); see resolve_toml_paths."""


def resolve_toml_paths(values: dict[str, Any], toml_dir: Path) -> dict[str, Any]:
    """Relative input paths of a toml (:data:`TOML_INPUT_PATHS`) read beside the toml when they exist there.

    A value that is not found beside the toml stays as written: a path from the current folder (as
    flame's fla.toml writes ``configs/...``), a hub name or a data-file type. Globs resolve when their
    folder exists beside the toml. Outputs (``job.dump_folder``) stay relative to the current folder, as
    in flame and torchtitan.
    """
    out = dict(values)
    for key in TOML_INPUT_PATHS:
        value = out.get(key)
        if not isinstance(value, str) or value.lower() in ("none", "null", ""):
            continue
        parts = []
        for item in value.split(",") if key.startswith("training.") else [value]:
            item = item.strip()
            path = Path(item).expanduser()
            beside = toml_dir / path
            probe = beside.parent if any(c in item for c in "*?[") else beside
            parts.append(str(beside) if not path.is_absolute() and item and probe.exists() else item)
        out[key] = ",".join(parts)
    return out


def from_dict(sections: dict[str, dict[str, Any]], where: str = "the job config") -> JobConfig:
    """A validated :class:`JobConfig` from ``{section: {key: value}}`` over the defaults, the typed
    entry for code (``softpick demo``, ``softpick experiment``): the same keys as the flags and the
    toml tables, each value checked and converted as the command line's (strings such as "true" or
    "1,2" are read as on the command line), the same validation; ConfigError names ``where``."""
    return _build(_flatten(sections, where))


def to_argv(sections: dict[str, dict[str, Any]]) -> list[str]:
    """The ``softpick train`` flags that give the same config as ``from_dict(sections)``: what a
    program prints as "the same as", or hands to torchrun."""
    argv: list[str] = []
    for section, items in sections.items():
        for name, value in items.items():
            if isinstance(value, bool):
                text = "true" if value else "false"
            elif isinstance(value, (list, tuple)):
                text = ",".join(str(v) for v in value)
            else:
                text = "none" if value is None else str(value)
            argv += [f"--{section}.{name}", text]
    return argv


def _flatten(sections: dict[str, Any], where: str) -> dict[str, Any]:
    """``{section: {key: value}}`` -> ``{"section.key": value}``; ConfigError for unknown keys."""
    fields = _all_fields()
    values: dict[str, Any] = {}
    for section, items in sections.items():
        if not isinstance(items, dict):
            raise ConfigError(f"unknown key {section!r} in {where}: expected [section] tables.")
        for name, value in items.items():
            key = f"{section}.{name}"
            if key not in fields:
                raise ConfigError(f"unknown key {key!r} in {where}.")
            values[key] = value
    return values


def _build(values: dict[str, Any]) -> JobConfig:
    """Defaults, then ``values`` ("section.key" -> raw value) converted and checked, then aliases and validation."""
    fields = _all_fields()
    config = JobConfig()
    for key, value in values.items():
        section_cls, f, kind = fields[key]
        section, name = key.split(".")
        value = _convert(key, kind, value, f.metadata["choices"])
        if section_cls is None:
            config.flame_only[key] = value
        else:
            setattr(getattr(config, section), name, value)
    _apply_aliases(config)
    validate(config)
    return config


def _apply_aliases(config: JobConfig) -> None:
    """Map flame's older flag names onto the current ones."""
    opt_, sched = config.optimizer, config.lr_scheduler
    if opt_.fused is not None:
        opt_.implementation = "fused" if opt_.fused else "foreach"
    if config.training.warmup_steps is not None:
        sched.warmup_steps = config.training.warmup_steps
    if opt_.min_lr_ratio is not None:
        sched.lr_min = opt_.min_lr_ratio
    if opt_.scheduler is not None:
        if opt_.scheduler == "wsd":
            if sched.decay_ratio is None:
                raise ConfigError("optimizer.scheduler wsd needs --lr_scheduler.decay_ratio (e.g. 0.1).")
        else:
            sched.decay_type = opt_.scheduler


def split_list(text: str | None) -> list[str]:
    """``"a,b"`` -> ``["a", "b"]``; None or "" -> []."""
    return [s.strip() for s in text.split(",")] if text else []


def validate(config: JobConfig) -> None:
    """Raise ConfigError (one line) for values that cannot work together."""
    for key, value in config.flame_only.items():
        if not FLAME_ONLY[key].any_value and value != FLAME_ONLY[key].default:
            raise ConfigError(f"{key}={value!r} is not supported by softpick train; leave it at its default.")
    for name in ("scaling_type_input", "scaling_type_weight", "scaling_type_grad_output"):
        if getattr(config.float8, name) == "delayed":
            raise ConfigError(f"float8.{name}='delayed' is not supported (torchao removed delayed scaling); "
                              "use dynamic, the default.")
    if config.checkpoint.interval_type == "step":  # flame's spelling
        config.checkpoint.interval_type = "steps"
    tr, sch = config.training, config.lr_scheduler
    positive = {
        "training.batch_size": tr.batch_size, "training.seq_len": tr.seq_len,
        "training.context_len": tr.context_len, "training.steps": tr.steps,
        "training.gradient_accumulation_steps": tr.gradient_accumulation_steps,
        "metrics.log_freq": config.metrics.log_freq, "checkpoint.interval": config.checkpoint.interval,
        "training.prefetch_factor": tr.prefetch_factor, "training.gc_freq": tr.gc_freq,
        "profiling.profile_freq": config.profiling.profile_freq,
    }
    for key, value in positive.items():
        if value < 1:
            raise ConfigError(f"{key} must be >= 1, got {value}.")
    for key, value in {"training.num_workers": tr.num_workers, "lr_scheduler.warmup_steps": sch.warmup_steps,
                       "training.skip_nan_inf_limit": tr.skip_nan_inf_limit,
                       "checkpoint.keep_latest_k": config.checkpoint.keep_latest_k}.items():
        if value < 0:
            raise ConfigError(f"{key} must be >= 0, got {value}.")
    if tr.varlen and tr.batch_size != 1:
        raise ConfigError(f"training.batch_size must be 1 with training.varlen, got {tr.batch_size}.")
    if sch.decay_ratio is not None and not 0.0 <= sch.decay_ratio <= 1.0:
        raise ConfigError(f"lr_scheduler.decay_ratio must be in [0, 1], got {sch.decay_ratio}.")
    if not 0.0 <= sch.lr_min <= 1.0:
        raise ConfigError(f"lr_scheduler.lr_min is a ratio of optimizer.lr in [0, 1], got {sch.lr_min}.")
    finite = {"optimizer.lr": config.optimizer.lr, "optimizer.eps": config.optimizer.eps,
              "optimizer.beta1": config.optimizer.beta1, "optimizer.beta2": config.optimizer.beta2,
              "optimizer.weight_decay": config.optimizer.weight_decay, "training.max_norm": tr.max_norm}
    for key, value in finite.items():  # nan and inf pass every comparison below unnoticed
        if not math.isfinite(value):
            raise ConfigError(f"{key} must be a finite number, got {value}.")
    if config.optimizer.lr <= 0:
        raise ConfigError(f"optimizer.lr must be > 0, got {config.optimizer.lr}.")
    for key in ("beta1", "beta2"):
        if not 0.0 <= getattr(config.optimizer, key) < 1.0:
            raise ConfigError(f"optimizer.{key} must be in [0, 1), got {getattr(config.optimizer, key)}.")
    if config.optimizer.eps < 0 or config.optimizer.weight_decay < 0:
        raise ConfigError("optimizer.eps and optimizer.weight_decay must be >= 0, got "
                          f"{config.optimizer.eps} and {config.optimizer.weight_decay}.")
    if tr.seed is not None and tr.seed < 0:
        raise ConfigError(f"training.seed must be >= 0, got {tr.seed}.")
    if tr.seq_len < 2:
        raise ConfigError(f"training.seq_len must be >= 2 (a row of {tr.seq_len} token has no next token to "
                          f"predict: every loss would be NaN), got {tr.seq_len}.")
    if config.activation_checkpoint.mode == "selective":
        option = config.activation_checkpoint.selective_ac_option
        if option != "op" and not (option.isdigit() and int(option) >= 1):
            raise ConfigError(
                f"activation_checkpoint.selective_ac_option must be 'op' or an integer >= 1, got {option!r}."
            )
    _validate_data(tr)


def _validate_data(tr: Training) -> None:
    datasets = split_list(tr.dataset)
    n = len(datasets)
    for key in ("dataset_name", "dataset_split", "data_dir", "data_files"):
        items = split_list(getattr(tr, key))
        if items and n and len(items) != n:
            raise ConfigError(
                f"training.{key} has {len(items)} entries but training.dataset has {n}; give one per dataset."
            )
    if tr.data_probs is None:
        if n > 1:
            raise ConfigError(f"training.data_probs is needed to mix the {n} datasets in training.dataset.")
        return
    try:
        probs = [float(p) for p in split_list(tr.data_probs)]
    except ValueError:
        raise ConfigError(f"training.data_probs must be comma separated numbers, got {tr.data_probs!r}.") from None
    if len(probs) != max(n, 1):
        raise ConfigError(
            f"training.data_probs has {len(probs)} entries but training.dataset has {max(n, 1)}."
        )
    if any(p < 0 for p in probs) or not math.isclose(sum(probs), 1.0, abs_tol=1e-6):
        raise ConfigError(f"training.data_probs must be >= 0 and sum to 1, got {tr.data_probs} (sum {sum(probs):g}).")
