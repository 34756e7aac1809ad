"""Convert between training checkpoints (DCP) and Hugging Face model folders.

    python -m softpick.train.convert dcp-to-hf --path DUMP_FOLDER [--step N] [--out DIR] [--tokenizer DIR]
    python -m softpick.train.convert hf-to-dcp --model HF_DIR --checkpoint DUMP_FOLDER/checkpoint/step-0
    python -m softpick.train.convert fla-to-hf SRC OUT [--dtype bfloat16]

``dcp-to-hf`` reads ``{path}/checkpoint/step-N`` (N = the latest by default; any number of ranks may
have written it) and writes ``save_pretrained`` files to ``--out`` (default ``{path}/hf-checkpoints/step-N``). The
model config comes from ``--config`` or from the ``hf`` export the trainer wrote beside it.
``hf-to-dcp`` writes the weights of an HF model as a weights-only DCP checkpoint; put it at
``step-0`` of a run's checkpoint folder and ``softpick train --checkpoint.enable_checkpoint`` starts
from those weights (continual training). ``fla-to-hf`` converts a checkpoint folder in fla's ``transformer``
format (the softpick authors' published models; config and weights, safetensors or .bin, sharded or not)
to our model (:mod:`softpick.models.fla`); a softmax one comes out as a Llama checkpoint. All run in one
process, on CPU.

None of them deletes or overwrites a folder it did not write (:mod:`softpick.train.outputs`): an
existing ``--out`` / ``OUT`` with files needs ``--overwrite``; a folder holding a training run or a
checkpoint (``--checkpoint`` on a full checkpoint, or on the dump folder) is never replaced. Outputs are
written beside the target and renamed into place, so a full disk leaves no partial folder.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import sys
from pathlib import Path

import torch
import torch.distributed.checkpoint as dcp

from softpick.errors import UserError, run_command
from softpick.train import outputs
from softpick.train.checkpoint import (
    STEP_DIR, ModelState, check_model_fits, export_hf, export_os_error, load_weights, pick_checkpoint, seal,
)
from softpick.train.stops import CheckpointWriteError, mount_point

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def write_error(error: BaseException, out: Path, what: str) -> CheckpointWriteError:
    """One line for a failed write of ``out`` (no space left, read-only disk, ...; exit code 4); the error
    itself when it is not about the disk (a bug)."""
    os_error = export_os_error(error)
    if os_error is None:
        raise error
    reason = ("no space left" if os_error.errno == errno.ENOSPC else os_error.strerror or str(os_error))
    kept = "left as it was" if out.exists() else "not created"
    return CheckpointWriteError(f"cannot write {what} {out}: {reason} on {mount_point(out.parent)}; nothing was "
                                f"written ({out.name} is {kept}). Free space, or give another folder.")


def dcp_to_hf(path: str | Path, *, step: int = -1, config: str | None = None, tokenizer: str | None = None,
              out: str | Path | None = None, dtype: str = "float32", folder: str = "checkpoint",
              overwrite: bool = False) -> Path:
    """Write the model of checkpoint ``step`` under dump folder ``path`` as an HF folder; returns it.

    The checkpoint is checked as a resume checks it (whole, of this model config, strict shapes);
    ``out`` as :func:`softpick.train.outputs.check_output` checks it (``overwrite``: ``--overwrite``);
    UserError (one line) otherwise.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from softpick.train.trainer import load_model_config, load_tokenizer

    path = Path(path)
    if not path.is_dir():
        raise UserError(f"--path {str(path)!r} is not a folder; give the run's job.dump_folder.")
    checkpoint = pick_checkpoint(path / folder, step)
    if checkpoint is None:
        raise UserError(f"no checkpoints in {path / folder}; --path is the run's job.dump_folder.")
    step = int(checkpoint.name.split("-")[1])
    default = path / "hf-checkpoints" / f"step-{step}"
    out = outputs.check_output(out if out is not None else default, "--out", overwrite=overwrite,
                               inputs=(checkpoint,), own=out is None)
    if config is None:
        if not (path / "hf" / "config.json").is_file():
            raise UserError(f"give --config: {path / 'hf' / 'config.json'} does not exist.")
        config = str(path / "hf")
    model_config = load_model_config(config)
    model = AutoModelForCausalLM.from_config(model_config, dtype=torch.float32)
    check_model_fits(checkpoint, model, model_config)
    load_weights(checkpoint, model)
    tok = load_tokenizer(tokenizer) if tokenizer else None
    if tok is None and (path / "hf" / "tokenizer_config.json").is_file():
        tok = AutoTokenizer.from_pretrained(str(path / "hf"))
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        return export_hf(model_config, model.state_dict(), out, tokenizer=tok, dtype=DTYPES[dtype])
    except Exception as err:  # noqa: BLE001 - write_error re-raises what is not a disk error
        raise write_error(err, out, "the model folder") from None


def hf_to_dcp(model_dir: str | Path, checkpoint: str | Path, *, overwrite: bool = False) -> Path:
    """Save the weights of the HF model in ``model_dir`` as a DCP checkpoint folder ``checkpoint``
    (with a manifest). It carries no ``model_config.json``: a continual run from it may change
    switches that keep the shapes (e.g. attn_type); names and shapes are still checked. An existing
    checkpoint or dump folder at ``checkpoint`` is never replaced; another folder with files only with
    ``overwrite``."""
    import softpick.models  # noqa: F401  (registers our model type)
    from safetensors import SafetensorError
    from transformers import AutoModelForCausalLM

    model_dir = Path(model_dir)
    final = outputs.check_output(checkpoint, "--checkpoint", overwrite=overwrite, inputs=(model_dir,))
    if not (model_dir / "config.json").is_file():
        raise UserError(f"--model {str(model_dir)!r} has no config.json; give a folder written by save_pretrained.")
    try:
        json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
        model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
    except (OSError, ValueError, RuntimeError, SafetensorError) as err:
        first = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
        raise UserError(f"--model {str(model_dir)!r} cannot be loaded ({first}).") from None
    step = int(final.name.split("-")[1]) if STEP_DIR.match(final.name) else 0
    partial = outputs.partial_path(final)
    try:
        partial.mkdir(parents=True)
        dcp.save({"model": ModelState(model)}, checkpoint_id=str(partial))
        seal(partial, step, None)
        return outputs.replace_folder(partial, final)
    except BaseException as err:
        outputs.remove_partial(partial)
        if isinstance(err, Exception):
            raise write_error(err, final, "the checkpoint") from None
        raise


def fla_to_hf(src: str | Path, out: str | Path, *, dtype: str | None = None, overwrite: bool = False) -> Path:
    """:func:`softpick.models.fla.convert_fla_checkpoint`, written beside ``out`` and renamed into place;
    ``out`` is checked as ``dcp-to-hf --out`` is."""
    from safetensors import SafetensorError

    from softpick.models.fla import convert_fla_checkpoint

    out = outputs.check_output(out, "OUT", overwrite=overwrite, inputs=(src,))
    if not Path(src).is_dir():
        raise UserError(f"SRC {str(src)!r} is not a folder; give an fla checkpoint folder (config.json and weights).")
    partial = outputs.partial_path(out)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        convert_fla_checkpoint(src, partial, dtype=DTYPES[dtype] if dtype else None)
        return outputs.replace_folder(partial, out)
    except UserError:
        outputs.remove_partial(partial)
        raise
    except (ValueError, RuntimeError, SafetensorError, OSError) as err:
        outputs.remove_partial(partial)
        if export_os_error(err) is not None and not isinstance(err, (FileNotFoundError, IsADirectoryError)):
            raise write_error(err, out, "the model folder") from None
        first = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
        raise UserError(f"SRC {str(src)!r} cannot be converted ({type(err).__name__}: {first}); give an fla "
                        f"checkpoint folder with a config.json and whole weights.") from None


class _Parser(argparse.ArgumentParser):
    """argparse that reports a bad flag as one line (a UserError), not usage + error."""

    def error(self, message: str):
        raise UserError(f"{message} (see {self.prog} -h).")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="softpick convert", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    a = sub.add_parser("dcp-to-hf", help="a DCP checkpoint to a Hugging Face model folder")
    a.add_argument("--path", required=True, help="the run's job.dump_folder")
    a.add_argument("--step", type=int, default=-1, help="checkpoint step; -1 = latest")
    a.add_argument("--config", default=None, help="model config json or folder (default: {path}/hf)")
    a.add_argument("--tokenizer", default=None, help="tokenizer folder to save beside the model")
    a.add_argument("--out", default=None, help="output folder (default: {path}/hf-checkpoints/step-N)")
    a.add_argument("--dtype", default="float32", choices=sorted(DTYPES), help="dtype of the saved weights")
    a.add_argument("--folder", default="checkpoint", help="checkpoint.folder of the run")
    a.add_argument("--overwrite", action="store_true",
                   help="replace an existing --out folder (never a run or a checkpoint)")
    b = sub.add_parser("hf-to-dcp", help="a Hugging Face model folder to a DCP checkpoint (continual training)")
    b.add_argument("--model", required=True, help="HF model folder (from save_pretrained)")
    b.add_argument("--checkpoint", required=True,
                   help="output, e.g. DUMP_FOLDER/checkpoint/step-0 (never an existing checkpoint)")
    b.add_argument("--overwrite", action="store_true", help="replace an existing folder that is not a checkpoint")
    c = sub.add_parser("fla-to-hf", help="an fla 'transformer' checkpoint (the paper's models) to our HF format")
    c.add_argument("src", help="fla checkpoint folder (config.json and weights)")
    c.add_argument("out", help="output folder")
    c.add_argument("--dtype", default=None, choices=sorted(DTYPES), help="dtype of the saved weights (default: kept)")
    c.add_argument("--overwrite", action="store_true", help="replace an existing OUT folder (never a run or checkpoint)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """``softpick convert dcp-to-hf|hf-to-dcp ...``; a UserError is reported by the caller (one line)."""
    args = build_parser().parse_args(argv)
    if args.command == "dcp-to-hf":
        out = dcp_to_hf(args.path, step=args.step, config=args.config, tokenizer=args.tokenizer,
                        out=args.out, dtype=args.dtype, folder=args.folder, overwrite=args.overwrite)
    elif args.command == "fla-to-hf":
        out = fla_to_hf(args.src, args.out, dtype=args.dtype, overwrite=args.overwrite)
    else:
        out = hf_to_dcp(args.model, args.checkpoint, overwrite=args.overwrite)
    print(f"wrote {out}")
    return 0

if __name__ == "__main__":
    sys.exit(run_command("convert", main, sys.argv[1:]))
