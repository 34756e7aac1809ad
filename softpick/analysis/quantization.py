"""Weight-only post-training quantization of every linear layer of the decoder, then perplexity.

Which layers: every ``nn.Linear`` (and GPT-2's ``Conv1D``, converted to ``nn.Linear`` first) except
the output head (``model.get_output_embeddings()``); embeddings and norms stay in full precision.
This is the usual practice of weight-only PTQ papers and of HQQ's transformers integration, which
keep ``lm_head`` unquantized.

Methods (``METHODS``), all group-wise with ``group_size`` weights per scale (a layer whose input
width is not a multiple of the group size gets one group per output row):

- ``rtn``: round-to-nearest asymmetric min-max quantization written here in plain torch
  (fake-quant: the dequantized weight replaces the original). A baseline that always runs.
- ``hqq``: Half-Quadratic Quantization (``hqq`` package, ``HQQLinear``), 8/4/3/2 bits.
- ``torchao``: ``IntxWeightOnlyConfig`` with a per-group granularity (``torchao`` package), 8/4/3/2 bits.
- ``quanto``: ``optimum-quanto`` qint8/qint4/qint2 weights (no 3-bit type).

The library methods come with the optional extra ``softpick[quant]``; a method that is not
installed, or does not offer a bit width, is skipped and the reason is recorded.
"""

from __future__ import annotations

import copy
import importlib.util

import torch
from torch import nn

from softpick.errors import BadValue, Unavailable
from softpick.analysis.data import Batch
from softpick.analysis.perplexity import compute_perplexity

METHODS = ("rtn", "hqq", "torchao", "quanto")
LIBRARY = {"hqq": "hqq", "torchao": "torchao", "quanto": "optimum.quanto"}
PIP_NAME = {"hqq": "hqq", "torchao": "torchao", "quanto": "optimum-quanto"}
BITS = {"rtn": (2, 3, 4, 5, 6, 7, 8), "hqq": (1, 2, 3, 4, 8), "torchao": (1, 2, 3, 4, 5, 6, 7, 8), "quanto": (2, 4, 8)}
DEFAULT_GROUP_SIZE = 64


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # the parent package (e.g. optimum) is missing
        return False


NOT_SUPPORTED, NOT_INSTALLED, FAILED = "not supported", "not installed", "failed"
"""``status`` of a skipped (method, bits): the library has no such width, is missing, or raised."""


def unavailable_status(method: str, bits: int) -> str | None:
    """NOT_INSTALLED or NOT_SUPPORTED when ``method`` cannot quantize to ``bits`` here, else None."""
    if method in LIBRARY and not _installed(LIBRARY[method]):
        return NOT_INSTALLED
    return NOT_SUPPORTED if bits not in BITS[method] else None


def method_unavailable(method: str, bits: int) -> str | None:
    """None when ``method`` can quantize to ``bits`` here, else the reason in one sentence."""
    if method not in METHODS:
        raise BadValue(f"quantization method must be one of {METHODS}, got {method!r}.")
    if method in LIBRARY and not _installed(LIBRARY[method]):
        return f"{method}: package {PIP_NAME[method]!r} is not installed (pip install 'softpick[quant]')."
    if bits not in BITS[method]:
        return f"{method}: {bits}-bit weights are not offered (supported: {BITS[method]})."
    return None


def _conv1d_to_linear(model: nn.Module) -> None:
    """Replace transformers' Conv1D (GPT-2: y = x @ W + b, W [in, out]) by the equivalent nn.Linear."""
    from transformers.pytorch_utils import Conv1D

    for name, module in list(model.named_modules()):
        if isinstance(module, Conv1D):
            in_f, out_f = module.weight.shape
            linear = nn.Linear(in_f, out_f, device=module.weight.device, dtype=module.weight.dtype)
            linear.weight.data.copy_(module.weight.data.t())
            linear.bias.data.copy_(module.bias.data)
            model.set_submodule(name, linear)


def quantizable_linears(model: nn.Module) -> dict[str, nn.Linear]:
    """Name -> nn.Linear of every linear layer except the output head."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    return {name: m for name, m in model.named_modules() if isinstance(m, nn.Linear) and m is not head}


def group_size_for(in_features: int, group_size: int) -> int:
    """``group_size`` when it divides ``in_features``, else ``in_features`` (one group per row)."""
    return group_size if in_features % group_size == 0 else in_features


@torch.no_grad()
def rtn_quantize_weight(weight: torch.Tensor, bits: int, group_size: int) -> torch.Tensor:
    """Round-to-nearest asymmetric quantization, dequantized back: W [out, in] -> same shape and dtype.

    Per group of ``group_size`` consecutive input weights: scale = (max - min) / (2^bits - 1),
    zero = round(-min / scale), q = clamp(round(w / scale) + zero, 0, 2^bits - 1), w' = (q - zero) * scale.
    """
    out_f, in_f = weight.shape
    g = group_size_for(in_f, group_size)
    w = weight.float().reshape(out_f, in_f // g, g)  # [out, groups, g]
    lo, hi = w.amin(-1, keepdim=True), w.amax(-1, keepdim=True)
    levels = 2**bits - 1
    scale = ((hi - lo) / levels).clamp(min=1e-12)
    zero = torch.round(-lo / scale)
    q = (torch.round(w / scale) + zero).clamp(0, levels)
    return ((q - zero) * scale).reshape(out_f, in_f).to(weight.dtype)


def _quantize_rtn(model: nn.Module, targets: dict[str, nn.Linear], bits: int, group_size: int) -> None:
    for linear in targets.values():
        linear.weight.data = rtn_quantize_weight(linear.weight.data, bits, group_size)


def _quantize_hqq(model: nn.Module, targets: dict[str, nn.Linear], bits: int, group_size: int) -> None:
    from hqq.core.quantize import BaseQuantizeConfig, HQQLinear

    for name, linear in targets.items():
        config = BaseQuantizeConfig(nbits=bits, group_size=group_size_for(linear.in_features, group_size))
        device = linear.weight.device
        quantized = HQQLinear(linear, config, compute_dtype=linear.weight.dtype, device=str(device), del_orig=True)
        model.set_submodule(name, quantized)


def _quantize_torchao(model: nn.Module, targets: dict[str, nn.Linear], bits: int, group_size: int) -> None:
    from torchao.quantization import IntxWeightOnlyConfig, PerGroup, quantize_

    dtype = getattr(torch, f"int{bits}")
    by_group: dict[int, set[str]] = {}
    for name, linear in targets.items():
        by_group.setdefault(group_size_for(linear.in_features, group_size), set()).add(name)
    for g, names in by_group.items():
        config = IntxWeightOnlyConfig(weight_dtype=dtype, granularity=PerGroup(g))
        quantize_(model, config, filter_fn=lambda module, fqn, names=names: fqn in names)


def _quantize_quanto(model: nn.Module, targets: dict[str, nn.Linear], bits: int, group_size: int) -> None:
    from optimum.quanto import freeze, qint2, qint4, qint8, quantize

    qtype = {8: qint8, 4: qint4, 2: qint2}[bits]
    quantize(model, weights=qtype, include=list(targets))
    freeze(model)


_QUANTIZERS = {"rtn": _quantize_rtn, "hqq": _quantize_hqq, "torchao": _quantize_torchao, "quanto": _quantize_quanto}


def quantize_model(model: nn.Module, method: str, bits: int, group_size: int = DEFAULT_GROUP_SIZE) -> nn.Module:
    """A quantized deep copy of ``model`` (the original is untouched).

    Raises ValueError for an unknown method and RuntimeError naming the reason when the method is
    unavailable (see :func:`method_unavailable`).
    """
    reason = method_unavailable(method, bits)
    if reason is not None:
        raise Unavailable(reason)
    if group_size < 1:
        raise BadValue(f"group_size must be >= 1, got {group_size}.")
    quantized = copy.deepcopy(model)
    _conv1d_to_linear(quantized)
    _QUANTIZERS[method](quantized, quantizable_linears(quantized), bits, group_size)
    return quantized.eval()


def compute_quantization_study(
    model: nn.Module,
    batches: list[Batch],
    *,
    methods: tuple[str, ...] = METHODS,
    bits: tuple[int, ...] = (8, 4, 3, 2),
    group_size: int = DEFAULT_GROUP_SIZE,
    baseline: dict | None = None,
    progress: bool = False,
) -> dict:
    """Perplexity of the model quantized by each (method, bits), next to the unquantized one.

    Returns a dict: ``baseline`` (perplexity dict of the original), ``group_size``, ``results``: a
    list of ``{"method", "bits", "perplexity", "loss"}``, and ``skipped``: a list of
    ``{"method", "bits", "reason", "status"}`` (status: "not supported", "not installed" or "failed").
    """
    for method in methods:
        if method not in METHODS:
            raise BadValue(f"quantization method must be one of {METHODS}, got {method!r}.")
    for b in bits:
        if not 1 <= int(b) <= 8:
            raise BadValue(f"quantization bits must be between 1 and 8, got {b}.")
    if baseline is None:
        baseline = compute_perplexity(model, batches)
    results, skipped = [], []
    for method in methods:
        for b in bits:
            reason = method_unavailable(method, b)
            if reason is not None:
                skipped.append({"method": method, "bits": b, "reason": reason, "status": unavailable_status(method, b)})
                continue
            try:
                quantized = quantize_model(model, method, b, group_size)
                ppl = compute_perplexity(quantized, batches, progress=progress, desc=f"{method} {b}-bit")
            except Exception as error:  # a library failing on this device/dtype is reported, not fatal
                skipped.append({"method": method, "bits": b, "status": FAILED,
                                "reason": f"{method} failed: {type(error).__name__}: {error}"})
                continue
            results.append({"method": method, "bits": b, "perplexity": ppl["perplexity"], "loss": ppl["loss"]})
    return {"baseline": baseline, "group_size": group_size, "results": results, "skipped": skipped}
